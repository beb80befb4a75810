"""Erasing personal data from Stripe objects and events: pure functions, no I/O.

Used when a customer is deleted in Stripe and the policy is `anonymize`, for the rows' source
payloads and for every later event of that customer. Each Stripe object is scrubbed by the
rules of its `object` type, at any depth (an invoice's lines, a charge's expanded source, a
customer's sources). An erased field keeps its key and its shape with every leaf set to null,
so a handler that reads `address["line1"]` finds null rather than failing; `metadata` becomes
`{}` (its keys are the merchant's free text) and lists become `[]`.

- `PERSONAL_FIELDS`: the fields erased per object type (dotted for nested ones).
- `DETAILS_BY_TYPE`: objects whose `type`-named sub-object holds personal details too
  (a payment method's `card`, `link` or `sepa_debit`).
- `NOT_PERSONAL`: the merchant's catalog, discounts and lists: no one's personal data.
- `GENERIC_FIELDS`: for any other object type, the field names that carry personal data
  wherever Stripe uses them.
"""

from __future__ import annotations

from typing import Any

PERSONAL_FIELDS: dict[str, tuple[str, ...]] = {
    "customer": (
        "address", "business_name", "description", "email", "individual_name",
        "invoice_settings.custom_fields", "metadata", "name", "phone", "shipping", "tax_ids",
    ),
    "subscription": ("description", "metadata"),
    "subscription_item": ("metadata",),
    "subscription_schedule": ("metadata",),
    # The hosted page and PDF show the customer's name, email and address to anyone with the URL.
    "invoice": (
        "custom_fields", "customer_address", "customer_email", "customer_name", "customer_phone",
        "customer_shipping", "customer_tax_ids", "description", "hosted_invoice_url", "invoice_pdf",
        "metadata", "parent.subscription_details.metadata", "shipping_details", "subscription_details.metadata",
    ),
    "line_item": ("description", "metadata"),
    "invoiceitem": ("description", "metadata"),
    # The receipt page shows billing details; the payment method details identify the card or account.
    "charge": (
        "billing_details", "description", "metadata", "payment_method_details", "receipt_email",
        "receipt_url", "shipping",
    ),
    "payment_intent": ("description", "metadata", "receipt_email", "shipping"),
    "setup_intent": ("description", "metadata"),
    "payment_method": ("billing_details", "metadata"),
    "source": ("metadata", "owner"),
    "card": (
        "address_city", "address_country", "address_line1", "address_line2", "address_state", "address_zip",
        "metadata", "name",
    ),
    "bank_account": ("account_holder_name", "metadata"),
    "tax_id": ("value", "verification"),
    "checkout.session": (
        "collected_information", "custom_fields", "customer_details", "customer_email", "metadata",
        "shipping", "shipping_details",
    ),
    "credit_note": ("memo", "metadata", "pdf"),
    "credit_note_line_item": ("description",),
    "customer_balance_transaction": ("description", "metadata"),
    "customer_cash_balance_transaction": ("funded",),
    "dispute": ("evidence", "metadata"),
    "refund": ("description", "metadata"),
    "mandate": ("customer_acceptance",),
    "review": ("ip_address", "ip_address_location", "session"),
    "quote": ("description", "footer", "header", "metadata"),
}

DETAILS_BY_TYPE = frozenset({"payment_method", "source"})

NOT_PERSONAL = frozenset({
    "coupon", "discount", "invoice_payment", "list", "plan", "price", "product", "promotion_code",
    "shipping_rate", "tax_code", "tax_rate",
})

GENERIC_FIELDS = (
    "address", "billing_details", "customer_address", "customer_details", "customer_email", "customer_name",
    "customer_phone", "customer_shipping", "description", "email", "metadata", "name", "owner", "phone",
    "receipt_email", "shipping", "shipping_details",
)


def blank(value: Any) -> Any:
    """The value's shape with nothing in it: objects keep their keys, lists empty, leaves null."""
    if isinstance(value, dict):
        return {key: blank(item) for key, item in value.items()}
    if isinstance(value, list):
        return []
    return None


def _erase(name: str, value: Any) -> Any:
    if name == "metadata":
        return {} if isinstance(value, dict) else None
    if name == "payment_method_details" and isinstance(value, dict):
        # Keep which kind of payment it was; everything else identifies the card or account.
        return {**blank(value), "type": value.get("type")}
    return blank(value)


def _erase_path(obj: dict[str, Any], path: str) -> None:
    *parents, name = path.split(".")
    for key in parents:
        obj = obj.get(key)
        if not isinstance(obj, dict):
            return
    if name in obj:
        obj[name] = _erase(name, obj[name])


def _fields(kind: str | None, *, generic: bool) -> tuple[str, ...]:
    if kind is None:
        return GENERIC_FIELDS if generic else ()
    if kind in NOT_PERSONAL or kind == "event":
        return ()
    return PERSONAL_FIELDS.get(kind, GENERIC_FIELDS)


def _scrub_fields(value: dict[str, Any], kind: str | None, *, loose: bool) -> dict[str, Any]:
    # Rebuilt level by level, so the caller's object is never modified.
    out = {key: _scrub(item, loose=loose) for key, item in value.items()}
    for path in _fields(kind, generic=loose):
        _erase_path(out, path)
    detail = value.get("type")
    if kind in DETAILS_BY_TYPE and isinstance(detail, str) and isinstance(out.get(detail), dict):
        out[detail] = blank(out[detail])
    return out


def _scrub(value: Any, *, loose: bool) -> Any:
    if isinstance(value, list):
        return [_scrub(item, loose=loose) for item in value]
    if not isinstance(value, dict):
        return value
    kind = value.get("object")
    if kind == "event":
        return scrub_event(value)
    # An event's `data` holds its object under the key "object": that is no type name.
    return _scrub_fields(value, kind if isinstance(kind, str) else None, loose=loose)


def scrub_object(obj: Any) -> Any:
    """A copy of a Stripe object (or list of them) with every personal field erased."""
    return _scrub(obj, loose=False)


def scrub_document(doc: Any) -> Any:
    """A copy of one of our own JSON documents (an outbox message) with personal fields erased.

    Our documents do not say `object` at every level, so the generic field names apply to
    every object in them that is not a known Stripe object.
    """
    return _scrub(doc, loose=True)


def scrub_event(payload: dict[str, Any]) -> dict[str, Any]:
    """A copy of a Stripe event with personal data erased from its object and its
    `previous_attributes` (which hold the old email, name or address of an update)."""
    out = {key: _scrub(value, loose=False) for key, value in payload.items()}
    data = payload.get("data")
    if not isinstance(data, dict):
        return out
    obj = data.get("object")
    scrubbed = out["data"]
    previous = data.get("previous_attributes")
    if isinstance(previous, dict):
        kind = obj.get("object") if isinstance(obj, dict) else None
        kind = kind if isinstance(kind, str) else None
        # Partial and without an `object` key: it takes the rules of the object it belonged to.
        scrubbed["previous_attributes"] = _scrub_fields(previous, kind, loose=True)
    return out
