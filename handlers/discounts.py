"""Discounts: `customer.discount.*`, and the discounts embedded in customers and subscriptions.

A subscription's discount lowers its MRR (handlers/billing.py). Before basil a subscription
carries its discount, coupon included; from basil on it names discount ids only, so the terms
come from `customer.discount.*` events. Newer versions move the coupon to `source.coupon`.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from app.events import EventRecord
from app.processing import ProcessingContext
from handlers.fields import integer, ref, text, ts, verb_rank
from handlers.writes import Snapshot, Table, embedded_snapshot, own_snapshot

DISCOUNT_EVENTS = frozenset({"customer.discount.created", "customer.discount.updated", "customer.discount.deleted"})

UPSERT_DISCOUNTS = """
WITH incoming AS (
    SELECT i.*
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::timestamptz[],
                $8::bool[], $9::timestamptz[], $10::int2[], $11::text[])
         AS i(id, account, customer_id, subscription_id, coupon, start_at, end_at, deleted,
              event_created, event_rank, event_id)
),
stored AS (
    SELECT d.id, d.event_created, d.event_rank, d.event_id FROM discounts AS d JOIN incoming USING (id)
),
written AS (
    INSERT INTO discounts AS d (id, account, customer_id, subscription_id, coupon, start_at, end_at, deleted,
                                event_created, event_rank, event_id)
    SELECT id, account, customer_id, subscription_id, coupon::jsonb, start_at, end_at, deleted,
           event_created, event_rank, event_id
    FROM incoming ORDER BY id
    ON CONFLICT (id) DO UPDATE SET
        account = excluded.account, customer_id = excluded.customer_id, subscription_id = excluded.subscription_id,
        coupon = excluded.coupon, start_at = excluded.start_at, end_at = excluded.end_at, deleted = excluded.deleted,
        event_created = excluded.event_created, event_rank = excluded.event_rank, event_id = excluded.event_id,
        last_synced_at = now()
    WHERE NOT d.deleted
      AND ((excluded.event_created, excluded.event_rank) > (d.event_created, d.event_rank)
           OR ((excluded.event_created, excluded.event_rank) = (d.event_created, d.event_rank)
               AND CASE WHEN excluded.event_rank = 0 THEN excluded.event_id > d.event_id
                        ELSE $12::bool AND excluded.event_id <> d.event_id END))
)
SELECT i.id, s.event_id FROM incoming AS i JOIN stored AS s USING (id)
WHERE NOT $12::bool AND i.event_rank > 0 AND s.event_created = i.event_created
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
         deleted: bool) -> tuple:
    return (
        key,
        event.account,
        customer_id,
        subscription_id,
        coupon_of(discount),
        ts(discount.get("start")),
        ts(discount.get("end")),
        deleted,
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
    order=40,
    upsert=UPSERT_DISCOUNTS,
    jsonb_columns=(4,),
    evidence_types=DISCOUNT_EVENTS,
    project=discount_snapshot,
)


def _stage(event: EventRecord, ctx: ProcessingContext) -> None:
    from handlers.customers import customer_placeholder

    ctx.writes.note(event, ctx)
    ctx.writes.stage(discount_snapshot(event))
    ctx.writes.stage(customer_placeholder(event, ref(event.object.get("customer"))))


async def on_discount_created(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """A coupon applied to a customer or subscription: lowers MRR from now on."""
    _stage(event, ctx)


async def on_discount_updated(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """A discount replaced or changed: new terms for MRR."""
    _stage(event, ctx)


async def on_discount_deleted(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """A discount removed or ended: marked deleted (terminal), MRR back to full price."""
    _stage(event, ctx)
