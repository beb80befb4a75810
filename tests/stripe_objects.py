"""Stripe's billing objects with every field Stripe sends, in both API versions we support.

`api_version` picks the shape: before 2025-03-31 (e.g. 2024-06-20) or basil and later. The
fields come from Stripe's API reference for each version (stripe-python 10.0.0 is generated
for 2024-06-20, 12.0.0 for 2025-03-31.basil, and stripe-mock's fixtures of those dates), less
the ones only an `expand[]` or a preview brings (a customer's `sources`, a charge's `refunds`,
an invoice's `payments` in basil), plus the few that Stripe added later to every version
(`automatically_finalizes_at`, `automatic_tax.provider`). Values are made up but shaped like
real ones, so that an event weighs what Stripe's do (tests/data/real_event_sizes.json).

Ids a caller does not give (payment intents, balance transactions, fingerprints, receipt and
hosted-invoice URLs) are derived from the object's own id, so that a seeded stream is the same
stream on every run.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from typing import Any

import orjson

OLD_API_VERSION = "2024-06-20"
NEW_API_VERSION = "2025-03-31.basil"
BASIL = "2025-03-31"

ACCOUNT = "acct_1Nv0FGQ9RKHgCVdK"
ACCOUNT_NAME = "Acme Analytics"
DESCRIPTOR = "ACME ANALYTICS"
_ALPHANUMERIC = str.maketrans("+/", "Az")  # base64 without its two symbols


def is_basil(api_version: str) -> bool:
    return api_version >= BASIL


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:14]}"


def derived(prefix: str, source: str, length: int = 24) -> str:
    """An id (or token) of Stripe's form, the same for the same `source` every time."""
    digest = hashlib.shake_256(f"{prefix}:{source}".encode()).digest(length)
    token = base64.b64encode(digest).decode()[:length].translate(_ALPHANUMERIC)
    return f"{prefix}_{token}" if prefix else token


def _now() -> int:
    return int(time.time())


def _list(data: list[Any], url: str) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": False, "total_count": len(data), "url": url}


def address(**overrides: Any) -> dict[str, Any]:
    base = {"line1": "1 Main St", "line2": None, "city": "Springfield", "state": "OR", "postal_code": "97477",
            "country": "US"}
    base.update(overrides)
    return base


def _empty_address() -> dict[str, Any]:
    return {"city": None, "country": None, "line1": None, "line2": None, "postal_code": None, "state": None}


# --- the catalog ---------------------------------------------------------------------------


def product_object(id: str | None = None, *, name: str = "Pro", active: bool = True, created: int | None = None,
                   default_price: str | None = None) -> dict[str, Any]:
    created = _now() if created is None else created
    return {
        "id": id or new_id("prod"),
        "object": "product",
        "active": active,
        "created": created,
        "default_price": default_price,
        "description": f"{name}: dashboards, alerts and exports for your whole team",
        "images": [],
        "livemode": False,
        "marketing_features": [],
        "metadata": {},
        "name": name,
        "package_dimensions": None,
        "shippable": None,
        "statement_descriptor": None,
        "tax_code": "txcd_10103001",
        "type": "service",
        "unit_label": "seat",
        "updated": created,
        "url": None,
    }


def _recurring(interval: str, interval_count: int, usage_type: str, api_version: str) -> dict[str, Any]:
    recurring: dict[str, Any] = {"interval": interval, "interval_count": interval_count, "meter": None,
                                 "trial_period_days": None, "usage_type": usage_type}
    if not is_basil(api_version):
        recurring["aggregate_usage"] = None  # removed in basil
    return recurring


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
    api_version: str = NEW_API_VERSION,
) -> dict[str, Any]:
    recurring = _recurring(interval, interval_count, usage_type, api_version) if interval else None
    return {
        "id": id or new_id("price"),
        "object": "price",
        "active": active,
        "billing_scheme": "per_unit",
        "created": _now() if created is None else created,
        "currency": currency,
        "custom_unit_amount": None,
        "livemode": False,
        "lookup_key": None,
        "metadata": {},
        "nickname": nickname,
        "product": product or new_id("prod"),
        "recurring": recurring,
        "tax_behavior": "exclusive",
        "tiers_mode": None,
        "transform_quantity": None,
        "type": "recurring" if interval else "one_time",
        "unit_amount": unit_amount,
        "unit_amount_decimal": None if unit_amount is None else str(unit_amount),
    }


def price_in_version(price: dict[str, Any], api_version: str) -> dict[str, Any]:
    """A copy of `price` as an event of `api_version` shows it."""
    price = orjson.loads(orjson.dumps(price))
    if isinstance(price.get("recurring"), dict):
        price["recurring"] = _recurring(price["recurring"]["interval"], price["recurring"]["interval_count"],
                                        price["recurring"]["usage_type"], api_version)
    return price


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
    usage_type: str = "licensed",
    api_version: str = NEW_API_VERSION,
) -> dict[str, Any]:
    """A legacy plan (the Plans API); its id is also a price id."""
    plan = {
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
        "meter": None,
        "nickname": nickname,
        "product": product or new_id("prod"),
        "tiers_mode": None,
        "transform_usage": None,
        "trial_period_days": None,
        "usage_type": usage_type,
    }
    if not is_basil(api_version):
        plan["aggregate_usage"] = None
    return plan


def plan_from_price(price: dict[str, Any], api_version: str = NEW_API_VERSION) -> dict[str, Any]:
    """The `plan` Stripe shows beside a recurring price (same id, same terms)."""
    recurring = price.get("recurring") or {}
    return plan_object(
        price["id"],
        product=price["product"] if isinstance(price["product"], str) else price["product"]["id"],
        amount=price["unit_amount"],
        currency=price["currency"],
        interval=recurring.get("interval", "month"),
        interval_count=recurring.get("interval_count", 1),
        nickname=price.get("nickname"),
        created=price["created"],
        usage_type=recurring.get("usage_type", "licensed"),
        api_version=api_version,
    )


# --- customers and discounts -----------------------------------------------------------------


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
    """A customer as `customer.*` events carry it (the same fields in both versions; `sources`,
    `subscriptions` and `tax_ids` only when expanded, since 2020-08-27)."""
    customer_id = id or new_id("cus")
    return {
        "id": customer_id,
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
        "invoice_prefix": derived("", customer_id, 8).upper(),
        "invoice_settings": {"custom_fields": None, "default_payment_method": None, "footer": None,
                             "rendering_options": None},
        "livemode": False,
        "metadata": metadata or {},
        "name": name,
        "next_invoice_sequence": 1,
        "phone": phone,
        "preferred_locales": ["en-US"],
        "shipping": None,
        "tax_exempt": "none",
        "test_clock": None,
    }


def deleted_customer_object(id: str) -> dict[str, Any]:
    """What some API versions send with customer.deleted: only the id. (Current versions send
    the whole customer as it was: `customer_object`.)"""
    return {"id": id, "object": "customer", "deleted": True}


def coupon_object(
    id: str | None = None,
    *,
    percent_off: float | None = None,
    amount_off: int | None = None,
    currency: str | None = None,
    duration: str = "forever",
    created: int | None = None,
) -> dict[str, Any]:
    name = f"{percent_off:g}% off" if percent_off is not None else f"{(amount_off or 0) / 100:.2f} off"
    return {
        "id": id or new_id("co"),
        "object": "coupon",
        "amount_off": amount_off,
        "created": _now() if created is None else created,
        "currency": currency if amount_off is not None else None,
        "duration": duration,
        "duration_in_months": 3 if duration == "repeating" else None,
        "livemode": False,
        "max_redemptions": None,
        "metadata": {},
        "name": name,
        "percent_off": percent_off,
        "redeem_by": None,
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


# --- subscriptions ---------------------------------------------------------------------------


def _card_options(card: dict[str, Any]) -> dict[str, Any]:
    return {"acss_debit": None, "bancontact": None, "card": card, "customer_balance": None, "konbini": None,
            "sepa_debit": None, "us_bank_account": None}


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
    """An item: its price and, for a recurring price, the `plan` of the same id; from basil on
    its own billing period (before basil `billing_thresholds` instead)."""
    item: dict[str, Any] = {
        "id": id or new_id("si"),
        "object": "subscription_item",
        "created": _now() if created is None else created,
        "discounts": [],
        "metadata": {},
        "subscription": subscription,
        "tax_rates": [],
    }
    if not is_basil(api_version):
        item["billing_thresholds"] = None
    if quantity is not None:
        item["quantity"] = quantity
    if legacy_plan_only:
        item["plan"] = price if price.get("object") == "plan" else plan_from_price(price, api_version)
    else:
        item["price"] = price
        if price.get("recurring"):
            item["plan"] = plan_from_price(price, api_version)
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

    Before basil: `current_period_*`, `discount` and `billing_thresholds` on the subscription.
    basil and later: the period on each item, `discounts` as ids only. Both still show a
    single-item subscription's `plan` and `quantity` at the top.
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
        "application": None,
        "application_fee_percent": None,
        "automatic_tax": {"enabled": False, "liability": None},
        "billing_cycle_anchor": period[0],
        "billing_cycle_anchor_config": None,
        "cancel_at": period[1] if cancel_at_period_end else None,
        "cancel_at_period_end": cancel_at_period_end,
        "canceled_at": canceled_at,
        "cancellation_details": {"comment": None, "feedback": None, "reason": None},
        "collection_method": "charge_automatically",
        "created": created,
        "currency": currency,
        "customer": customer,
        "days_until_due": None,
        "default_payment_method": derived("pm", customer),
        "default_source": None,
        "default_tax_rates": [],
        "description": None,
        "discounts": [discount["id"]] if discount else [],
        "ended_at": ended_at,
        "invoice_settings": {"account_tax_ids": None, "issuer": {"type": "self"}},
        "items": _list(data, f"/v1/subscription_items?subscription={sub_id}"),
        "latest_invoice": None,
        "livemode": False,
        "metadata": metadata or {},
        "next_pending_invoice_item_invoice": None,
        "on_behalf_of": None,
        "pause_collection": None,
        "payment_settings": {"payment_method_options": _card_options({"network": None,
                                                                      "request_three_d_secure": "automatic"}),
                             "payment_method_types": ["card"],
                             "save_default_payment_method": "off"},
        "pending_invoice_item_interval": None,
        "pending_setup_intent": None,
        "pending_update": None,
        "schedule": None,
        "start_date": created,
        "status": status,
        "test_clock": None,
        "transfer_data": None,
        "trial_end": trial_end,
        "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
        "trial_start": trial_start,
    }
    if is_basil(api_version):
        obj["automatic_tax"]["disabled_reason"] = None
    else:
        obj["billing_thresholds"] = None
        obj["current_period_start"], obj["current_period_end"] = period
        obj["discount"] = discount
    if len(data) == 1 and "plan" in data[0]:
        obj["plan"] = data[0]["plan"]
        obj["quantity"] = data[0].get("quantity")
    return obj


# --- invoices --------------------------------------------------------------------------------


def hosted_invoice_url(invoice_id: str) -> str:
    return f"https://invoice.stripe.com/i/{ACCOUNT}/test_{derived('', invoice_id, 96)}?s=ap"


def invoice_pdf(invoice_id: str) -> str:
    return f"https://pay.stripe.com/invoice/{ACCOUNT}/test_{derived('', invoice_id, 96)}/pdf?s=ap"


def _line_item(
    invoice_id: str,
    *,
    amount: int,
    currency: str,
    description: str | None,
    period: tuple[int, int],
    price: dict[str, Any],
    quantity: int,
    subscription: str | None,
    subscription_item: str | None,
    api_version: str,
) -> dict[str, Any]:
    """One line of an invoice. Before basil it carries its price and plan whole; from basil on
    `pricing` names them and `parent` says where the line came from."""
    line: dict[str, Any] = {
        "id": derived("il", f"{invoice_id}:{subscription_item or price['id']}"),
        "object": "line_item",
        "amount": amount,
        "currency": currency,
        "description": description,
        "discount_amounts": [],
        "discountable": True,
        "discounts": [],
        "invoice": invoice_id,
        "livemode": False,
        "metadata": {},
        "period": {"end": period[1], "start": period[0]},
        "quantity": quantity,
    }
    product = price["product"] if isinstance(price["product"], str) else price["product"]["id"]
    if is_basil(api_version):
        details = None
        if subscription:
            details = {"invoice_item": None, "proration": False, "proration_details": {"credited_items": None},
                       "subscription": subscription, "subscription_item": subscription_item}
        line["parent"] = {
            "invoice_item_details": None if subscription else {
                "invoice_item": derived("ii", invoice_id), "proration": False,
                "proration_details": {"credited_items": None}, "subscription": None},
            "subscription_item_details": details,
            "type": "subscription_item_details" if subscription else "invoice_item_details",
        }
        line["pretax_credit_amounts"] = []
        line["pricing"] = {"price_details": {"price": price["id"], "product": product}, "type": "price_details",
                           "unit_amount_decimal": price.get("unit_amount_decimal")}
        line["taxes"] = []
    else:
        line.update(
            amount_excluding_tax=amount,
            invoice_item=None if subscription else derived("ii", invoice_id),
            plan=plan_from_price(price, api_version) if price.get("recurring") else None,
            price=price,
            proration=False,
            proration_details={"credited_items": None},
            subscription=subscription,
            subscription_item=subscription_item,
            tax_amounts=[],
            tax_rates=[],
            type="subscription" if subscription else "invoiceitem",
            unit_amount_excluding_tax=price.get("unit_amount_decimal"),
        )
    return line


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
    price: dict[str, Any] | None = None,
    quantity: int = 1,
    subscription_item: str | None = None,
    customer_email: str | None = "jane@example.com",
    customer_name: str | None = "Jane Doe",
    customer_address: dict[str, Any] | None = None,
    api_version: str = NEW_API_VERSION,
) -> dict[str, Any]:
    """An invoice as `invoice.*` events carry it, with one line (of `price` x `quantity`, or of
    a price for `amount_due` when none is given).

    Before basil: `subscription`, `paid`, `charge`, `payment_intent`, `discount` and
    `total_tax_amounts` on the invoice. basil and later: `parent.subscription_details`,
    `total_taxes` and `amount_overpaid`, no paid flag nor charge; `payments` only when asked
    for (it is an includable field).
    """
    created = _now() if created is None else created
    invoice_id = id or new_id("in")
    finalized = status != "draft"
    price = price or price_object(derived("price", invoice_id), product=derived("prod", invoice_id),
                                  unit_amount=amount_due, currency=currency, created=created,
                                  api_version=api_version)
    line = _line_item(invoice_id, amount=amount_due, currency=currency, description=line_description,
                      period=(created, created + 30 * 86400), price=price, quantity=quantity,
                      subscription=subscription,
                      subscription_item=subscription_item or (derived("si", subscription) if subscription else None),
                      api_version=api_version)
    obj: dict[str, Any] = {
        "id": invoice_id,
        "object": "invoice",
        "account_country": "US",
        "account_name": ACCOUNT_NAME,
        "account_tax_ids": None,
        "amount_due": amount_due,
        "amount_paid": amount_paid,
        "amount_remaining": amount_due - amount_paid,
        "amount_shipping": 0,
        "application": None,
        "attempt_count": attempt_count,
        "attempted": attempt_count > 0,
        "auto_advance": status in ("draft", "open"),
        "automatic_tax": {"enabled": False, "liability": None, "provider": None, "status": None},
        "automatically_finalizes_at": None if finalized else created + 3600,
        "billing_reason": billing_reason,
        "collection_method": "charge_automatically",
        "created": created,
        "currency": currency,
        "custom_fields": None,
        "customer": customer,
        "customer_address": customer_address,
        "customer_email": customer_email,
        "customer_name": customer_name,
        "customer_phone": None,
        "customer_shipping": None,
        "customer_tax_exempt": "none",
        "customer_tax_ids": [],
        "default_payment_method": None,
        "default_source": None,
        "default_tax_rates": [],
        "description": description,
        "discounts": [],
        "due_date": None,
        "effective_at": finalized_at,
        "ending_balance": 0 if finalized else None,
        "footer": None,
        "from_invoice": None,
        "hosted_invoice_url": hosted_invoice_url(invoice_id) if finalized else None,
        "invoice_pdf": invoice_pdf(invoice_id) if finalized else None,
        "issuer": {"type": "self"},
        "last_finalization_error": None,
        "latest_revision": None,
        "lines": _list([line], f"/v1/invoices/{invoice_id}/lines"),
        "livemode": False,
        "metadata": {},
        "next_payment_attempt": next_payment_attempt,
        "number": number,
        "on_behalf_of": None,
        "payment_settings": {"default_mandate": None,
                             "payment_method_options": _card_options({"request_three_d_secure": "automatic"}),
                             "payment_method_types": None},
        "period_end": created,
        "period_start": created,
        "post_payment_credit_notes_amount": 0,
        "pre_payment_credit_notes_amount": 0,
        "receipt_number": None,
        "rendering": None,
        "shipping_cost": None,
        "shipping_details": None,
        "starting_balance": 0,
        "statement_descriptor": None,
        "status": status,
        "status_transitions": {"finalized_at": finalized_at, "marked_uncollectible_at": None, "paid_at": paid_at,
                               "voided_at": None},
        "subtotal": amount_due,
        "subtotal_excluding_tax": amount_due,
        "test_clock": None,
        "total": amount_due,
        "total_discount_amounts": [],
        "total_excluding_tax": amount_due,
        "webhooks_delivered_at": None if status == "draft" else created,
    }
    if is_basil(api_version):
        obj["amount_overpaid"] = 0
        obj["automatic_tax"]["disabled_reason"] = None
        obj["parent"] = None
        if subscription:
            obj["parent"] = {"type": "subscription_details", "quote_details": None,
                             "subscription_details": {"metadata": {}, "subscription": subscription}}
        obj["total_pretax_credit_amounts"] = []
        obj["total_taxes"] = []
        if payments is not None:
            obj["payments"] = _list(payments, f"/v1/invoice_payments?invoice={invoice_id}")
    else:
        obj["application_fee_amount"] = None
        obj["charge"] = charge
        obj["discount"] = None
        obj["paid"] = status == "paid"
        obj["paid_out_of_band"] = False
        obj["payment_intent"] = derived("pi", invoice_id) if finalized else None
        obj["quote"] = None
        obj["subscription"] = subscription
        obj["subscription_details"] = {"metadata": {}}
        obj["tax"] = None
        obj["total_tax_amounts"] = []
        obj["transfer_data"] = None
    return obj


def rendered_invoice(invoice: dict[str, Any], customer: dict[str, Any] | None = None) -> dict[str, Any]:
    """The invoice as Stripe shows it: with its `customer`'s email, name, address and phone
    when given (Stripe copies them in), and once finalized with its hosted page and PDF."""
    if customer is not None:
        invoice.update(customer_address=customer.get("address"), customer_email=customer.get("email"),
                       customer_name=customer.get("name"), customer_phone=customer.get("phone"))
    if invoice.get("status") not in (None, "draft"):
        as_finalized(invoice)
    return invoice


def as_finalized(invoice: dict[str, Any]) -> dict[str, Any]:
    """What Stripe fills in when it finalizes an invoice (hosted page, PDF, payment intent)."""
    invoice_id = invoice["id"]
    invoice.update(
        hosted_invoice_url=invoice.get("hosted_invoice_url") or hosted_invoice_url(invoice_id),
        invoice_pdf=invoice.get("invoice_pdf") or invoice_pdf(invoice_id),
        automatically_finalizes_at=None,
        ending_balance=0,
        effective_at=invoice.get("effective_at") or (invoice.get("status_transitions") or {}).get("finalized_at"),
    )
    if "payment_intent" in invoice and invoice["payment_intent"] is None:
        invoice["payment_intent"] = derived("pi", invoice_id)
    return invoice


# --- payments --------------------------------------------------------------------------------


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
        "payment": {"type": "payment_intent", "payment_intent": payment_intent or derived("pi", invoice)},
        "status": status,
        "status_transitions": {"canceled_at": None, "paid_at": paid_at if paid_at is not None else created},
    }


def _card_details(charge_id: str, amount: int, succeeded: bool) -> dict[str, Any]:
    return {
        "card": {
            "amount_authorized": amount if succeeded else None,
            "authorization_code": derived("", charge_id, 6) if succeeded else None,
            "brand": "visa",
            "checks": {"address_line1_check": None, "address_postal_code_check": "pass",
                       "cvc_check": "pass" if succeeded else None},
            "country": "US",
            "exp_month": 8,
            "exp_year": 2030,
            "extended_authorization": {"status": "disabled"},
            "fingerprint": derived("", charge_id, 16),
            "funding": "credit",
            "incremental_authorization": {"status": "unavailable"},
            "installments": None,
            "last4": "4242",
            "mandate": None,
            "multicapture": {"status": "unavailable"},
            "network": "visa",
            "network_token": {"used": False},
            "network_transaction_id": derived("", charge_id, 15) if succeeded else None,
            "overcapture": {"maximum_amount_capturable": amount, "status": "unavailable"},
            "regulated_status": "unregulated",
            "three_d_secure": None,
            "wallet": None,
        },
        "type": "card",
    }


def _outcome(succeeded: bool, failure_code: str | None) -> dict[str, Any]:
    if succeeded:
        return {"advice_code": None, "network_advice_code": None, "network_decline_code": None,
                "network_status": "approved_by_network", "reason": None, "risk_level": "normal", "risk_score": 32,
                "seller_message": "Payment complete.", "type": "authorized"}
    return {"advice_code": "try_again_later", "network_advice_code": None, "network_decline_code": None,
            "network_status": "declined_by_network", "reason": "generic_decline", "risk_level": "normal",
            "risk_score": 41, "seller_message": "The bank did not return any further details with this decline.",
            "type": "issuer_declined"} if failure_code else None


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
    email: str | None = "jane@example.com",
    name: str | None = "Jane Doe",
    api_version: str = NEW_API_VERSION,
) -> dict[str, Any]:
    """A card charge with its billing details, outcome and receipt; before basil it names its
    invoice, from basil on it does not."""
    charge_id = id or new_id("ch")
    succeeded = status == "succeeded"
    billing_address = _empty_address()
    billing_address.update(country="US", postal_code="97477")
    obj: dict[str, Any] = {
        "id": charge_id,
        "object": "charge",
        "amount": amount,
        "amount_captured": amount if succeeded else 0,
        "amount_refunded": amount_refunded,
        "application": None,
        "application_fee": None,
        "application_fee_amount": None,
        "balance_transaction": derived("txn", charge_id) if succeeded else None,
        "billing_details": {"address": billing_address, "email": email, "name": name, "phone": None,
                            "tax_id": None},
        "calculated_statement_descriptor": DESCRIPTOR,
        "captured": succeeded,
        "created": _now() if created is None else created,
        "currency": currency,
        "customer": customer,
        "description": description,
        "disputed": False,
        "failure_balance_transaction": None,
        "failure_code": failure_code,
        "failure_message": "Your card was declined." if failure_code else None,
        "fraud_details": {},
        "livemode": False,
        "metadata": {},
        "on_behalf_of": None,
        "outcome": _outcome(succeeded, failure_code),
        "paid": succeeded,
        "payment_intent": derived("pi", invoice or charge_id),
        "payment_method": derived("pm", customer or charge_id),
        "payment_method_details": _card_details(charge_id, amount, succeeded),
        "radar_options": {},
        "receipt_email": email if succeeded else None,
        "receipt_number": None,
        "receipt_url": (f"https://pay.stripe.com/receipts/invoices/{derived('', charge_id, 92)}?s=ap"
                        if succeeded else None),
        "refunded": amount_refunded >= amount and amount_refunded > 0,
        "review": None,
        "shipping": None,
        "source": None,
        "source_transfer": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": status,
        "transfer_data": None,
        "transfer_group": None,
    }
    if not is_basil(api_version):
        obj["invoice"] = invoice
        del obj["billing_details"]["tax_id"]  # added with basil
    return obj
