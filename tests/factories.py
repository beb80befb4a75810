"""Build Stripe events as Stripe sends them, and sign them.

Billing-object factories (customers, subscriptions, invoices, ...) in both API-version shapes
live beside these; this module holds what every test needs.
"""

from __future__ import annotations

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
