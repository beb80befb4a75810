"""Discounts: `customer.discount.*`, and the discounts embedded in customers and subscriptions.

A subscription's discount lowers its MRR (handlers/billing.py). Before basil a subscription
carries its discount, coupon included; from basil on it names discount ids only, so the terms
come from `customer.discount.*` events. Newer versions move the coupon to `source.coupon`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import asyncpg

from stripeline.model.context import ProcessingContext
from stripeline.model.events import EventRecord
from stripeline.model.fields import integer, ref, text, ts, verb_rank
from stripeline.model.writes import (
    Bool,
    Json,
    Projection,
    Snapshot,
    Table,
    Text,
    Timestamp,
    embedded_snapshot,
    own_snapshot,
)

# Coupons applied to customers and subscriptions: a subscription's discount lowers its MRR.
EVENTS = {
    "customer.discount.created": "a coupon applied to a customer or subscription: lowers MRR from now on",
    "customer.discount.updated": "a discount replaced or changed: new terms for MRR",
    "customer.discount.deleted": "a discount removed or ended: marked deleted (terminal), MRR back to full price",
}

class DiscountRow(NamedTuple):
    id: Text
    account: Text
    customer_id: Text
    subscription_id: Text
    coupon: Json  # the terms that matter for MRR (coupon_of)
    start_at: Timestamp
    end_at: Timestamp
    deleted: Bool


UPSERT_DISCOUNTS = """
WITH incoming AS (
    SELECT i.* FROM {incoming}
),
stored AS (
    SELECT d.id, d.event_created, d.event_rank, d.event_id FROM discounts AS d JOIN incoming USING (id)
),
written AS (
    INSERT INTO discounts AS d ({columns})
    SELECT {values} FROM incoming ORDER BY id
    ON CONFLICT (id) DO UPDATE SET {updates}, last_synced_at = now()
    WHERE NOT d.deleted
      AND ((excluded.event_created, excluded.event_rank) > (d.event_created, d.event_rank)
           OR ((excluded.event_created, excluded.event_rank) = (d.event_created, d.event_rank)
               AND CASE WHEN excluded.event_rank = 0 THEN excluded.event_id > d.event_id
                        ELSE {settled} AND excluded.event_id <> d.event_id END))
)
SELECT i.id, s.event_id FROM incoming AS i JOIN stored AS s USING (id)
WHERE NOT {settled} AND i.event_rank > 0 AND s.event_created = i.event_created
"""


def coupon_of(discount: dict[str, Any]) -> dict[str, Any]:
    """The coupon terms that matter for MRR, wherever this API version keeps them."""
    coupon = discount.get("coupon")
    if coupon is None and isinstance(discount.get("source"), dict):
        coupon = discount["source"].get("coupon")
    if isinstance(coupon, str):
        return {"id": coupon}
    if not isinstance(coupon, dict):
        return {}
    percent = coupon.get("percent_off")
    return {
        "id": text(coupon.get("id")),
        "percent_off": percent if isinstance(percent, (int, float)) and not isinstance(percent, bool) else None,
        "amount_off": integer(coupon.get("amount_off")),
        "currency": text(coupon.get("currency")),
        "duration": text(coupon.get("duration")),
        "duration_in_months": integer(coupon.get("duration_in_months")),
    }


def discount_id(discount: dict[str, Any], customer_id: str | None, subscription_id: str | None) -> str | None:
    # Discounts had no id before 2019; one discount per subscription (or customer) then.
    own = ref(discount.get("id"))
    if own:
        return own
    owner = subscription_id or customer_id
    return f"{owner}:discount" if owner else None


def _row(event: EventRecord, discount: dict[str, Any], key: str, customer_id: str | None, subscription_id: str | None,
         deleted: bool) -> DiscountRow:
    return DiscountRow(
        id=key,
        account=event.account,
        customer_id=customer_id,
        subscription_id=subscription_id,
        coupon=coupon_of(discount),
        start_at=ts(discount.get("start")),
        end_at=ts(discount.get("end")),
        deleted=deleted,
    )


def discount_snapshot(event: EventRecord) -> Snapshot | None:
    """The discounts row as a `customer.discount.*` event shows it."""
    obj = event.object
    customer_id = ref(obj.get("customer"))
    subscription_id = ref(obj.get("subscription"))
    key = discount_id(obj, customer_id, subscription_id)
    if key is None:
        return None
    deleted = event.type == "customer.discount.deleted" or obj.get("deleted") is True
    row = _row(event, obj, key, customer_id, subscription_id, deleted)
    return own_snapshot(DISCOUNTS, event, key, verb_rank(event.type), row)


def embedded_discount_snapshot(
    event: EventRecord, discount: dict[str, Any], *, customer_id: str | None = None, subscription_id: str | None = None
) -> Snapshot | None:
    """A discount found inside a customer or subscription payload."""
    customer_id = ref(discount.get("customer")) or customer_id
    subscription_id = ref(discount.get("subscription")) or subscription_id
    key = discount_id(discount, customer_id, subscription_id)
    if key is None:
        return None
    row = _row(event, discount, key, customer_id, subscription_id, discount.get("deleted") is True)
    return embedded_snapshot(DISCOUNTS, event, key, row)


DISCOUNTS = Table(
    name="discounts",
    row=DiscountRow,
    order=40,
    template=UPSERT_DISCOUNTS,
    evidence_types=frozenset(EVENTS),
    project=discount_snapshot,
)


async def on_discount_event(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """The discount, and a placeholder for its customer."""
    ctx.touch(event)
    ctx.writes.stage(discount_snapshot(event))


PROJECTIONS = (Projection(EVENTS, on_discount_event),)
