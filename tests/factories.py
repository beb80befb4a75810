"""Build Stripe events as Stripe sends them, and sign them.

Billing-object factories (customers, subscriptions, invoices, ...) in both API-version shapes
live beside these; this module holds what every test needs.
"""

from __future__ import annotations

import copy
import itertools
import time
import uuid
from typing import Any

import orjson

from app.signature import sign

OLD_API_VERSION = "2024-06-20"
NEW_API_VERSION = "2025-03-31.basil"

_counter = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:14]}"


def event(
    type: str,
    obj: dict[str, Any],
    *,
    created: int | None = None,
    id: str | None = None,
    previous_attributes: dict[str, Any] | None = None,
    api_version: str = NEW_API_VERSION,
    account: str | None = None,
    livemode: bool = False,
) -> dict[str, Any]:
    data: dict[str, Any] = {"object": obj}
    if previous_attributes is not None:
        data["previous_attributes"] = previous_attributes
    payload = {
        "id": id or new_id("evt"),
        "object": "event",
        "api_version": api_version,
        "created": int(time.time()) if created is None else created,
        "data": data,
        "livemode": livemode,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": type,
    }
    if account:
        payload["account"] = account
    return payload


def body_of(payload: dict[str, Any]) -> bytes:
    return orjson.dumps(payload)


def signed(payload: dict[str, Any] | bytes, secret: str, timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:
    """(raw body, headers) as Stripe would POST them."""
    body = payload if isinstance(payload, bytes) else body_of(payload)
    return body, {"stripe-signature": sign(body, secret, timestamp), "content-type": "application/json"}


def ping_event(**kwargs: Any) -> dict[str, Any]:
    """An event of a type nobody handles: stored and ignored."""
    return event("balance.available", {"object": "balance", "available": []}, **kwargs)


# ---------------------------------------------------------------------------------------------
# Billing objects, in both API-version shapes. `api_version` picks the shape: before
# 2025-03-31 (e.g. OLD_API_VERSION) or basil and later (NEW_API_VERSION). Only the fields
# stripeline reads, plus enough of the rest to look like Stripe.

BASIL = "2025-03-31"


def is_basil(api_version: str) -> bool:
    return api_version >= BASIL


def _now() -> int:
    return int(time.time())


def product_object(id: str | None = None, *, name: str = "Pro", active: bool = True, created: int | None = None) -> dict[str, Any]:
    created = _now() if created is None else created
    return {
        "id": id or new_id("prod"),
        "object": "product",
        "active": active,
        "created": created,
        "description": None,
        "livemode": False,
        "metadata": {},
        "name": name,
        "type": "service",
        "updated": created,
    }


def price_object(
    id: str | None = None,
    *,
    product: str | dict[str, Any] | None = None,
    unit_amount: int | None = 1000,
    currency: str = "usd",
    interval: str | None = "month",
    interval_count: int = 1,
    nickname: str | None = None,
    usage_type: str = "licensed",
    active: bool = True,
    created: int | None = None,
) -> dict[str, Any]:
    recurring = None
    if interval:
        recurring = {"interval": interval, "interval_count": interval_count, "usage_type": usage_type, "meter": None,
                     "trial_period_days": None}
    return {
        "id": id or new_id("price"),
        "object": "price",
        "active": active,
        "billing_scheme": "per_unit",
        "created": _now() if created is None else created,
        "currency": currency,
        "livemode": False,
        "lookup_key": None,
        "metadata": {},
        "nickname": nickname,
        "product": product or new_id("prod"),
        "recurring": recurring,
        "tax_behavior": "unspecified",
        "type": "recurring" if interval else "one_time",
        "unit_amount": unit_amount,
        "unit_amount_decimal": None if unit_amount is None else str(unit_amount),
    }


def plan_object(
    id: str | None = None,
    *,
    product: str | None = None,
    amount: int | None = 1000,
    currency: str = "usd",
    interval: str = "month",
    interval_count: int = 1,
    nickname: str | None = None,
    created: int | None = None,
) -> dict[str, Any]:
    """A legacy plan (the Plans API); its id is also a price id."""
    return {
        "id": id or new_id("plan"),
        "object": "plan",
        "active": True,
        "amount": amount,
        "amount_decimal": None if amount is None else str(amount),
        "billing_scheme": "per_unit",
        "created": _now() if created is None else created,
        "currency": currency,
        "interval": interval,
        "interval_count": interval_count,
        "livemode": False,
        "metadata": {},
        "nickname": nickname,
        "product": product or new_id("prod"),
        "usage_type": "licensed",
    }


def plan_from_price(price: dict[str, Any]) -> dict[str, Any]:
    """The `plan` Stripe shows beside a recurring price (same id, same terms)."""
    recurring = price.get("recurring") or {}
    plan = plan_object(
        price["id"],
        product=price["product"] if isinstance(price["product"], str) else price["product"]["id"],
        amount=price["unit_amount"],
        currency=price["currency"],
        interval=recurring.get("interval", "month"),
        interval_count=recurring.get("interval_count", 1),
        nickname=price.get("nickname"),
        created=price["created"],
    )
    plan["usage_type"] = recurring.get("usage_type", "licensed")
    return plan


def address(**overrides: Any) -> dict[str, Any]:
    base = {"line1": "1 Main St", "line2": None, "city": "Springfield", "state": "OR", "postal_code": "97477",
            "country": "US"}
    base.update(overrides)
    return base


def customer_object(
    id: str | None = None,
    *,
    email: str | None = "jane@example.com",
    name: str | None = "Jane Doe",
    phone: str | None = None,
    description: str | None = None,
    address: dict[str, Any] | None = None,
    currency: str | None = None,
    delinquent: bool = False,
    metadata: dict[str, str] | None = None,
    created: int | None = None,
    discount: dict[str, Any] | None = None,
    api_version: str = NEW_API_VERSION,
) -> dict[str, Any]:
    obj = {
        "id": id or new_id("cus"),
        "object": "customer",
        "address": address,
        "balance": 0,
        "created": _now() if created is None else created,
        "currency": currency,
        "default_source": None,
        "delinquent": delinquent,
        "description": description,
        "discount": discount,
        "email": email,
        "invoice_prefix": "ABC123",
        "invoice_settings": {"custom_fields": None, "default_payment_method": None, "footer": None},
        "livemode": False,
        "metadata": metadata or {},
        "name": name,
        "phone": phone,
        "preferred_locales": [],
        "shipping": None,
        "tax_exempt": "none",
        "test_clock": None,
    }
    if not is_basil(api_version):
        obj["sources"] = {"object": "list", "data": [], "has_more": False, "url": f"/v1/customers/{obj['id']}/sources"}
    return obj


def deleted_customer_object(id: str) -> dict[str, Any]:
    """What some API versions send with customer.deleted: only the id."""
    return {"id": id, "object": "customer", "deleted": True}


def coupon_object(
    id: str | None = None,
    *,
    percent_off: float | None = None,
    amount_off: int | None = None,
    currency: str | None = None,
    duration: str = "forever",
) -> dict[str, Any]:
    return {
        "id": id or new_id("co"),
        "object": "coupon",
        "amount_off": amount_off,
        "currency": currency if amount_off is not None else None,
        "duration": duration,
        "duration_in_months": 3 if duration == "repeating" else None,
        "livemode": False,
        "max_redemptions": None,
        "metadata": {},
        "name": None,
        "percent_off": percent_off,
        "times_redeemed": 1,
        "valid": True,
    }


def discount_object(
    customer: str,
    coupon: dict[str, Any],
    *,
    subscription: str | None = None,
    id: str | None = None,
    start: int | None = None,
    end: int | None = None,
    coupon_in_source: bool = False,
) -> dict[str, Any]:
    """A discount; `coupon_in_source` gives the newest shape (`source.coupon`)."""
    obj = {
        "id": id or new_id("di"),
        "object": "discount",
        "checkout_session": None,
        "customer": customer,
        "end": end,
        "invoice": None,
        "invoice_item": None,
        "promotion_code": None,
        "start": _now() if start is None else start,
        "subscription": subscription,
        "subscription_item": None,
    }
    if coupon_in_source:
        obj["source"] = {"type": "coupon", "coupon": coupon}
    else:
        obj["coupon"] = coupon
    return obj


def subscription_item_object(
    subscription: str,
    price: dict[str, Any],
    quantity: int | None = 1,
    *,
    id: str | None = None,
    period: tuple[int, int] | None = None,
    created: int | None = None,
    api_version: str = NEW_API_VERSION,
    legacy_plan_only: bool = False,
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": id or new_id("si"),
        "object": "subscription_item",
        "created": _now() if created is None else created,
        "discounts": [],
        "metadata": {},
        "subscription": subscription,
        "tax_rates": [],
    }
    if quantity is not None:
        item["quantity"] = quantity
    if legacy_plan_only:
        item["plan"] = price if price.get("object") == "plan" else plan_from_price(price)
    else:
        item["price"] = price
        if price.get("recurring"):
            item["plan"] = plan_from_price(price)
    if is_basil(api_version) and period is not None:
        item["current_period_start"], item["current_period_end"] = period
    return item


def subscription_object(
    customer: str,
    items: list[tuple[dict[str, Any], int | None]],
    *,
    id: str | None = None,
    status: str = "active",
    created: int | None = None,
    trial_start: int | None = None,
    trial_end: int | None = None,
    period: tuple[int, int] | None = None,
    cancel_at_period_end: bool = False,
    canceled_at: int | None = None,
    ended_at: int | None = None,
    discount: dict[str, Any] | None = None,
    metadata: dict[str, str] | None = None,
    currency: str = "usd",
    item_ids: list[str] | None = None,
    api_version: str = NEW_API_VERSION,
    legacy_plan_only: bool = False,
) -> dict[str, Any]:
    """A subscription as `customer.subscription.*` events carry it, in the shape of `api_version`.

    Before basil: `current_period_*`, `plan`/`quantity` (single item) and `discount` on the
    subscription. basil and later: the period on each item, `discounts` as ids only.
    """
    created = _now() if created is None else created
    period = period or (created, created + 30 * 86400)
    sub_id = id or new_id("sub")
    item_ids = item_ids or [new_id("si") for _ in items]
    data = [
        subscription_item_object(sub_id, price, quantity, id=item_id, period=period, created=created,
                                 api_version=api_version, legacy_plan_only=legacy_plan_only)
        for (price, quantity), item_id in zip(items, item_ids)
    ]
    obj: dict[str, Any] = {
        "id": sub_id,
        "object": "subscription",
        "billing_cycle_anchor": period[0],
        "cancel_at": period[1] if cancel_at_period_end else None,
        "cancel_at_period_end": cancel_at_period_end,
        "canceled_at": canceled_at,
        "collection_method": "charge_automatically",
        "created": created,
        "currency": currency,
        "customer": customer,
        "days_until_due": None,
        "default_payment_method": None,
        "discounts": [discount["id"]] if discount else [],
        "ended_at": ended_at,
        "items": {"object": "list", "data": data, "has_more": False, "total_count": len(data),
                  "url": f"/v1/subscription_items?subscription={sub_id}"},
        "latest_invoice": None,
        "livemode": False,
        "metadata": metadata or {},
        "pause_collection": None,
        "start_date": created,
        "status": status,
        "trial_end": trial_end,
        "trial_start": trial_start,
    }
    if not is_basil(api_version):
        obj["current_period_start"], obj["current_period_end"] = period
        obj["discount"] = discount
        if len(data) == 1 and "plan" in data[0]:
            obj["plan"] = data[0]["plan"]
            obj["quantity"] = data[0].get("quantity")
    return obj


def invoice_object(
    customer: str,
    *,
    subscription: str | None = None,
    id: str | None = None,
    status: str = "draft",
    amount_due: int = 1000,
    amount_paid: int = 0,
    currency: str = "usd",
    created: int | None = None,
    paid_at: int | None = None,
    finalized_at: int | None = None,
    attempt_count: int = 0,
    next_payment_attempt: int | None = None,
    number: str | None = None,
    description: str | None = None,
    line_description: str | None = "1 × Pro (at $10.00 / month)",
    billing_reason: str = "subscription_create",
    charge: str | None = None,
    payments: list[dict[str, Any]] | None = None,
    api_version: str = NEW_API_VERSION,
) -> dict[str, Any]:
    """An invoice as `invoice.*` events carry it.

    Before basil: `subscription`, `paid`, `charge`, `payment_intent` on the invoice. basil and
    later: `parent.subscription_details.subscription`, and no paid flag nor charge.
    """
    created = _now() if created is None else created
    invoice_id = id or new_id("in")
    obj: dict[str, Any] = {
        "id": invoice_id,
        "object": "invoice",
        "account_country": "US",
        "amount_due": amount_due,
        "amount_paid": amount_paid,
        "amount_remaining": amount_due - amount_paid,
        "attempt_count": attempt_count,
        "attempted": attempt_count > 0,
        "auto_advance": status in ("draft", "open"),
        "billing_reason": billing_reason,
        "collection_method": "charge_automatically",
        "created": created,
        "currency": currency,
        "customer": customer,
        "customer_email": "jane@example.com",
        "customer_name": "Jane Doe",
        "description": description,
        "due_date": None,
        "lines": {"object": "list", "data": [{"id": new_id("il"), "object": "line_item", "amount": amount_due,
                                              "currency": currency, "description": line_description}],
                  "has_more": False, "total_count": 1, "url": f"/v1/invoices/{invoice_id}/lines"},
        "livemode": False,
        "metadata": {},
        "next_payment_attempt": next_payment_attempt,
        "number": number,
        "period_end": created,
        "period_start": created,
        "status": status,
        "status_transitions": {"finalized_at": finalized_at, "marked_uncollectible_at": None, "paid_at": paid_at,
                               "voided_at": None},
        "subtotal": amount_due,
        "total": amount_due,
        "webhooks_delivered_at": None,
    }
    if is_basil(api_version):
        obj["parent"] = None
        if subscription:
            obj["parent"] = {"type": "subscription_details", "quote_details": None,
                             "subscription_details": {"metadata": {}, "subscription": subscription}}
        if payments is not None:
            obj["payments"] = {"object": "list", "data": payments, "has_more": False,
                               "url": f"/v1/invoice_payments?invoice={invoice_id}"}
    else:
        obj["subscription"] = subscription
        obj["paid"] = status == "paid"
        obj["paid_out_of_band"] = False
        obj["charge"] = charge
        obj["payment_intent"] = new_id("pi") if status != "draft" else None
        obj["discount"] = None
    return obj


def invoice_payment_object(
    invoice: str,
    *,
    amount: int = 1000,
    currency: str = "usd",
    paid_at: int | None = None,
    id: str | None = None,
    status: str = "paid",
    payment_intent: str | None = None,
    created: int | None = None,
) -> dict[str, Any]:
    """basil's InvoicePayment: it names its invoice but not its customer."""
    created = _now() if created is None else created
    return {
        "id": id or new_id("inpay"),
        "object": "invoice_payment",
        "amount_paid": amount if status == "paid" else None,
        "amount_requested": amount,
        "created": created,
        "currency": currency,
        "invoice": invoice,
        "is_default": True,
        "livemode": False,
        "payment": {"type": "payment_intent", "payment_intent": payment_intent or new_id("pi")},
        "status": status,
        "status_transitions": {"canceled_at": None, "paid_at": paid_at if paid_at is not None else created},
    }


def charge_object(
    customer: str | None,
    *,
    amount: int = 1000,
    currency: str = "usd",
    status: str = "succeeded",
    id: str | None = None,
    invoice: str | None = None,
    description: str | None = "Subscription creation",
    amount_refunded: int = 0,
    failure_code: str | None = None,
    created: int | None = None,
    api_version: str = NEW_API_VERSION,
) -> dict[str, Any]:
    """A charge; before basil it names its invoice, from basil on it does not."""
    obj: dict[str, Any] = {
        "id": id or new_id("ch"),
        "object": "charge",
        "amount": amount,
        "amount_captured": amount if status == "succeeded" else 0,
        "amount_refunded": amount_refunded,
        "billing_details": {"address": None, "email": None, "name": None, "phone": None},
        "captured": status == "succeeded",
        "created": _now() if created is None else created,
        "currency": currency,
        "customer": customer,
        "description": description,
        "failure_code": failure_code,
        "failure_message": "Your card was declined." if failure_code else None,
        "livemode": False,
        "metadata": {},
        "paid": status == "succeeded",
        "payment_intent": new_id("pi"),
        "refunded": amount_refunded >= amount and amount_refunded > 0,
        "status": status,
    }
    if not is_basil(api_version):
        obj["invoice"] = invoice
    return obj


def changed(obj: dict[str, Any], **changes: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the object after `changes`, previous_attributes as Stripe reports them: a changed hash
    by its changed keys, an added key as null, a changed array whole)."""
    after = copy.deepcopy(obj)
    after.update(copy.deepcopy(changes))
    return after, _previous(obj, after)


def _previous(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    previous = {}
    for key in before.keys() | after.keys():
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        previous[key] = _previous(old, new) if isinstance(old, dict) and isinstance(new, dict) else copy.deepcopy(old)
    return previous
