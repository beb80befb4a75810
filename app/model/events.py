"""A Stripe event as we keep it: what a verified body must be to be stored, read into an EventRecord."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson

# Stripe's ids are at most 255 characters; PostgreSQL cannot index a value over about 2,700
# bytes, so one longer id would fail the INSERT of every event stored with it.
MAX_ID_LENGTH = 255
# Stripe's limit for an email address, which the model indexes (lower(email)).
MAX_EMAIL_LENGTH = 512
# Stripe objects nest a dozen levels or so (event, data, object, a list, an expanded price).
# orjson writes at most 254 levels and an API answer wraps the payload in more, so a deeper
# event could be stored but never shown, scrubbed or processed (SECURITY.md).
MAX_DEPTH = 64
# Keys whose string values are Stripe ids that the model stores in indexed columns.
REFERENCE_KEYS = frozenset(
    {
        "id", "customer", "subscription", "invoice", "price", "product", "plan", "charge", "payment_intent",
        "subscription_item", "coupon", "promotion_code", "discount", "latest_invoice", "payment_method",
        "default_payment_method", "balance_transaction",
    }
)  # fmt: skip


class InvalidEvent(Exception):
    """The body is not a JSON Stripe event, or holds a value no Stripe event holds."""


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One Stripe event as we store it; `payload` is the whole event object."""

    id: str
    type: str
    account: str | None
    livemode: bool
    api_version: str | None
    created: datetime
    object_type: str | None
    object_id: str | None
    customer_id: str | None
    payload: dict[str, Any]
    # The JSON text `payload` was parsed from, when we have it: stored as is, not re-encoded.
    raw: bytes | None = field(default=None, repr=False, compare=False)
    # When we stored it, for a record the batch engine's claim read (the worker's metrics time
    # events by it); None for one parsed, read from a file or read by another query.
    received_at: datetime | None = field(default=None, compare=False)

    @property
    def object(self) -> dict[str, Any]:
        return self.payload["data"]["object"]

    @property
    def previous_attributes(self) -> dict[str, Any] | None:
        previous = self.payload["data"].get("previous_attributes")
        return previous if isinstance(previous, dict) else None


def _reference(value: Any) -> str | None:
    """A Stripe reference is an id string, or the object itself when expanded."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        return value["id"]
    return None


def customer_of(obj: dict[str, Any]) -> str | None:
    """The customer a Stripe object belongs to, when the object itself says so."""
    if obj.get("object") == "customer":
        return _reference(obj.get("id"))
    return _reference(obj.get("customer"))


def is_stripe_id(value: Any) -> bool:
    """A non-empty string no longer than any Stripe id."""
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH


def is_timestamp(value: Any) -> bool:
    """A Unix timestamp as Stripe's `created` is: an integer (not a boolean) in range."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**34


def _text(value: Any, name: str, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if not is_stripe_id(value):
        raise InvalidEvent(f"event {name} must be a non-empty string of at most {MAX_ID_LENGTH} characters")
    return value


def _optional_text(value: Any, name: str) -> str | None:
    """A string field we keep when present (an empty or non-string one counts as absent)."""
    return _text(value, name) if isinstance(value, str) and value else None


def _check_values(value: Any, depth: int = 1, references: bool = True) -> bool:
    """Refuse nesting beyond MAX_DEPTH and overlong ids or emails; return True if a float is seen.

    Metadata is the account's own free text (Stripe allows 500 characters a value), not ids.
    Every webhook body and imported event goes through this walk, so it tests the exact types
    orjson builds first (a third of the cost of isinstance chains) and strings only by length
    until one is longer than any id.
    """
    if depth > MAX_DEPTH:
        raise InvalidEvent(f"event is nested more than {MAX_DEPTH} levels deep")
    floats = False
    if isinstance(value, dict):
        for key, item in value.items():
            kind = type(item)
            if kind is str:
                if len(item) > MAX_ID_LENGTH:
                    _check_long_text(key, item, references)
            elif kind is dict or kind is list:
                floats |= _check_values(item, depth + 1, references and key != "metadata")
            elif kind is float:
                floats = True
            elif item is not None and kind is not int and kind is not bool:
                floats |= _check_other(key, item, depth, references)
    else:
        for item in value:
            kind = type(item)
            if kind is dict or kind is list:
                floats |= _check_values(item, depth + 1, references)
            elif kind is float:
                floats = True
            elif item is not None and kind is not str and kind is not int and kind is not bool:
                floats |= _check_other(None, item, depth, references)
    return floats


def _check_long_text(key: Any, text: str, references: bool) -> None:
    if references and key in REFERENCE_KEYS:
        raise InvalidEvent(f"event {key!r} is longer than {MAX_ID_LENGTH} characters: not a Stripe id")
    if key == "email" and len(text) > MAX_EMAIL_LENGTH:
        raise InvalidEvent(f"event 'email' is longer than {MAX_EMAIL_LENGTH} characters")


def _check_other(key: Any, item: Any, depth: int, references: bool) -> bool:
    """A value of a subclass of the JSON types (a payload built by code, not parsed)."""
    if isinstance(item, str):
        if len(item) > MAX_ID_LENGTH and key is not None:
            _check_long_text(key, item, references)
    elif isinstance(item, (dict, list)):
        return _check_values(item, depth + 1, references and key != "metadata")
    elif isinstance(item, float):
        return True
    return False


def event_from_payload(payload: Any, raw: bytes | None = None, *, checked: bool = False) -> EventRecord:
    """Validate a decoded Stripe event object and describe it as a row (`checked`: its values
    passed the checks already, in the process that stored it)."""
    if not isinstance(payload, dict):
        raise InvalidEvent("body must be a JSON object")
    if not checked and _check_values(payload) and raw is not None:
        # PostgreSQL refuses some numbers JSON allows (1e-20000 overflows numeric) and orjson
        # reads them as plain floats: store orjson's own spelling, which PostgreSQL accepts.
        raw = None
    if payload.get("object", "event") != "event":
        raise InvalidEvent("body is not a Stripe event (object is not 'event')")
    created = payload.get("created")
    if not is_timestamp(created):
        raise InvalidEvent("event created must be a Unix timestamp")
    data = payload.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise InvalidEvent("event data.object must be an object")
    obj = data["object"]
    object_id = obj.get("id")
    return EventRecord(
        id=_text(payload.get("id"), "id"),
        type=_text(payload.get("type"), "type"),
        account=_text(payload.get("account"), "account", required=False),
        livemode=payload.get("livemode") is True,
        api_version=_optional_text(payload.get("api_version"), "api_version"),
        created=datetime.fromtimestamp(created, timezone.utc),
        object_type=_optional_text(obj.get("object"), "data.object.object"),
        object_id=object_id if isinstance(object_id, str) and object_id else None,
        customer_id=customer_of(obj),
        payload=payload,
        raw=raw,
    )


# A \u0000 escape that is not itself escaped (preceded by an even run of backslashes).
_NUL_ESCAPE = re.compile(rb"(?<!\\)((?:\\\\)*)\\u0000")


def without_nul_escapes(text: bytes) -> bytes:
    """JSON text with U+FFFD in place of each \\u0000 escape: PostgreSQL text and jsonb cannot
    hold U+0000 (legal in JSON, e.g. in metadata), and a genuine event is stored rather than lost."""
    # Most payloads hold no backslash at all: one memchr rules them out (a search for the
    # two-byte escape costs ten times as much).
    return _NUL_ESCAPE.sub(rb"\1\\ufffd", text) if b"\\" in text and b"\\u0000" in text else text


def parse_event(body: bytes) -> EventRecord:
    body = without_nul_escapes(body)
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidEvent("body is not valid JSON") from None
    return event_from_payload(payload, raw=body)


# The columns of stripe_events an EventRecord is read from (processing claims them, replay reads them).
EVENT_COLUMNS = (
    "id, type, account, livemode, api_version, created, object_type, object_id, customer_id, payload"
)


def record_from_row(row: Mapping[str, Any]) -> EventRecord:
    return EventRecord(
        id=row["id"],
        type=row["type"],
        account=row["account"],
        livemode=row["livemode"],
        api_version=row["api_version"],
        created=row["created"],
        object_type=row["object_type"],
        object_id=row["object_id"],
        customer_id=row["customer_id"],
        payload=row["payload"],
        received_at=row.get("received_at"),
    )
