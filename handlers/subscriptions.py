"""Subscriptions and their items: every `customer.subscription.*` event carries the whole object.

API versions: before 2025-03-31 the billing period is on the subscription
(`current_period_start/end`) and items carry a `plan` beside their `price`; from basil on the
period is on each item. The subscription's own period is then its earliest-ending item's.
Items are part of the subscription's snapshot: rewritten only when the snapshot wins. The
prices and products inside the items are stored too (handlers/catalog.py).
"""

from __future__ import annotations

from typing import Any

import asyncpg

from app.events import EventRecord
from app.processing import ProcessingContext
from handlers import catalog, discounts
from handlers.customers import customer_placeholder
from handlers.fields import CHANGED_RANK, CREATED_RANK, DELETED_RANK, integer, listed, ref, text, ts
from handlers.writes import Snapshot, Table, own_snapshot

SUBSCRIPTION_EVENTS = frozenset(
    {
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "customer.subscription.paused",
        "customer.subscription.resumed",
        "customer.subscription.trial_will_end",
        "customer.subscription.pending_update_applied",
        "customer.subscription.pending_update_expired",
    }
)

# Statuses a subscription never leaves: after every live status of the same second.
FINAL_STATUSES = frozenset({"canceled", "incomplete_expired"})
FINAL_RANK = CHANGED_RANK + 10

UPSERT_SUBSCRIPTIONS = """
WITH incoming AS (
    SELECT i.*
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::timestamptz[],
                $8::timestamptz[], $9::timestamptz[], $10::timestamptz[], $11::timestamptz[], $12::bool[],
                $13::timestamptz[], $14::timestamptz[], $15::text[], $16::text[], $17::timestamptz[], $18::int2[],
                $19::text[])
         AS i(id, account, customer_id, status, currency, created_at, trial_start, trial_end, canceled_at, ended_at,
              cancel_at, cancel_at_period_end, current_period_start, current_period_end, discount_ids, metadata,
              event_created, event_rank, event_id)
),
stored AS (
    SELECT s.id, s.event_created, s.event_rank, s.event_id FROM subscriptions AS s JOIN incoming USING (id)
),
written AS (
    INSERT INTO subscriptions AS s (id, account, customer_id, status, currency, created_at, trial_start, trial_end,
                                    canceled_at, ended_at, cancel_at, cancel_at_period_end, current_period_start,
                                    current_period_end, discount_ids, metadata, event_created, event_rank, event_id)
    SELECT id, account, customer_id, status, currency, created_at, trial_start, trial_end, canceled_at, ended_at,
           cancel_at, cancel_at_period_end, current_period_start, current_period_end, discount_ids::jsonb,
           metadata::jsonb, event_created, event_rank, event_id
    FROM incoming ORDER BY id
    ON CONFLICT (id) DO UPDATE SET
        account = excluded.account, customer_id = excluded.customer_id, status = excluded.status,
        currency = excluded.currency, created_at = excluded.created_at, trial_start = excluded.trial_start,
        trial_end = excluded.trial_end, canceled_at = excluded.canceled_at, ended_at = excluded.ended_at,
        cancel_at = excluded.cancel_at, cancel_at_period_end = excluded.cancel_at_period_end,
        current_period_start = excluded.current_period_start, current_period_end = excluded.current_period_end,
        discount_ids = excluded.discount_ids, metadata = excluded.metadata, event_created = excluded.event_created,
        event_rank = excluded.event_rank, event_id = excluded.event_id, last_synced_at = now()
    WHERE (excluded.event_created, excluded.event_rank) > (s.event_created, s.event_rank)
       -- an equal version with another event: replaced only once settled by evidence
       OR ((excluded.event_created, excluded.event_rank) = (s.event_created, s.event_rank)
           AND $27::bool AND excluded.event_id <> s.event_id)
    RETURNING id
),
items AS (
    SELECT it.*
    FROM unnest($20::text[], $21::text[], $22::text[], $23::text[], $24::int4[], $25::timestamptz[],
                $26::timestamptz[])
         AS it(id, subscription_id, price_id, product_id, quantity, current_period_start, current_period_end)
    WHERE it.subscription_id IN (SELECT id FROM written)
),
removed AS (
    DELETE FROM subscription_items AS si USING written AS w
    WHERE si.subscription_id = w.id AND NOT (si.id = ANY($20::text[]))
),
replaced AS (
    INSERT INTO subscription_items (id, subscription_id, price_id, product_id, quantity, current_period_start,
                                    current_period_end)
    SELECT * FROM items ORDER BY id
    ON CONFLICT (id) DO UPDATE SET
        subscription_id = excluded.subscription_id, price_id = excluded.price_id, product_id = excluded.product_id,
        quantity = excluded.quantity, current_period_start = excluded.current_period_start,
        current_period_end = excluded.current_period_end
    WHERE (subscription_items.subscription_id, subscription_items.price_id, subscription_items.product_id,
           subscription_items.quantity, subscription_items.current_period_start,
           subscription_items.current_period_end)
          IS DISTINCT FROM (excluded.subscription_id, excluded.price_id, excluded.product_id, excluded.quantity,
                            excluded.current_period_start, excluded.current_period_end)
)
SELECT i.id, s.event_id FROM incoming AS i JOIN stored AS s USING (id)
WHERE NOT $27::bool AND i.event_rank > 0 AND s.event_created = i.event_created
"""


def subscription_rank(event: EventRecord) -> int:
    if event.type == "customer.subscription.created":
        return CREATED_RANK
    if event.type == "customer.subscription.deleted":
        return DELETED_RANK
    return FINAL_RANK if event.object.get("status") in FINAL_STATUSES else CHANGED_RANK


def _items(obj: dict[str, Any]) -> list[dict[str, Any]]:
    items = [item for item in listed(obj.get("items")) if isinstance(item, dict) and ref(item.get("id"))]
    if not items and isinstance(obj.get("plan"), dict):
        # Subscriptions from before items existed: one implicit item.
        items = [{"id": f"{obj['id']}:plan", "plan": obj["plan"], "quantity": obj.get("quantity")}]
    return items


def _price_of(item: dict[str, Any]) -> Any:
    return item.get("price") if item.get("price") is not None else item.get("plan")


def _item_row(subscription_id: str, item: dict[str, Any]) -> tuple:
    price = _price_of(item)
    quantity = integer(item.get("quantity"))
    return (
        item["id"],
        subscription_id,
        ref(price),
        ref(price.get("product")) if isinstance(price, dict) else None,
        quantity if quantity is not None and quantity >= 0 else 1,
        ts(item.get("current_period_start")),
        ts(item.get("current_period_end")),
    )


def _period(obj: dict[str, Any], items: tuple) -> tuple:
    if "current_period_end" in obj:
        return ts(obj.get("current_period_start")), ts(obj.get("current_period_end"))
    # basil: the period lives on each item; the next renewal is the earliest end.
    periods = [(row[6], row[5]) for row in items if row[6] is not None]
    if not periods:
        return None, None
    end, start = min(periods)
    return start, end


def _discount_ids(obj: dict[str, Any]) -> list[str] | None:
    if "discounts" not in obj and "discount" not in obj:
        return None
    ids = {ref(d) for d in listed(obj.get("discounts"))}
    single = obj.get("discount")
    if isinstance(single, dict):
        ids.add(discounts.discount_id(single, ref(obj.get("customer")), obj["id"]))
    return sorted(i for i in ids if i)


def subscription_snapshot(event: EventRecord) -> Snapshot:
    """The subscriptions row, with its items, as a `customer.subscription.*` event shows it."""
    obj = event.object
    subscription_id = obj["id"]
    items = tuple(_item_row(subscription_id, item) for item in _items(obj))
    period_start, period_end = _period(obj, items)
    row = (
        subscription_id,
        event.account,
        ref(obj.get("customer")),
        text(obj.get("status")),
        text(obj.get("currency")),
        ts(obj.get("created")),
        ts(obj.get("trial_start")),
        ts(obj.get("trial_end")),
        ts(obj.get("canceled_at")),
        ts(obj.get("ended_at")),
        ts(obj.get("cancel_at")),
        obj.get("cancel_at_period_end") is True,
        period_start,
        period_end,
        _discount_ids(obj),
        obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {},
    )
    return own_snapshot(SUBSCRIPTIONS, event, subscription_id, subscription_rank(event), row, items)


def embedded_snapshots(event: EventRecord) -> list[Snapshot | None]:
    """What else the payload tells: its customer, its prices and products, its discounts."""
    obj = event.object
    customer_id = ref(obj.get("customer"))
    found: list[Snapshot | None] = [customer_placeholder(event, customer_id)]
    for item in _items(obj):
        found.extend(catalog.embedded_catalog_snapshots(event, _price_of(item)))
    embedded = [d for d in listed(obj.get("discounts")) if isinstance(d, dict)]
    if isinstance(obj.get("discount"), dict):
        embedded.append(obj["discount"])
    for discount in embedded:
        found.append(
            discounts.embedded_discount_snapshot(event, discount, customer_id=customer_id, subscription_id=obj["id"])
        )
    return found


SUBSCRIPTIONS = Table(
    name="subscriptions",
    order=50,
    upsert=UPSERT_SUBSCRIPTIONS,
    jsonb_columns=(14, 15),
    child_width=7,
    evidence_types=SUBSCRIPTION_EVENTS,
    project=subscription_snapshot,
)


def _stage(event: EventRecord, ctx: ProcessingContext) -> None:
    ctx.writes.note(event, ctx)
    ctx.writes.stage(subscription_snapshot(event))
    ctx.writes.stage_all(embedded_snapshots(event))


async def on_subscription_created(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """A new subscription (trialing, incomplete or active), with its items and prices."""
    _stage(event, ctx)


async def on_subscription_updated(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """Any change: status, quantity, price, trial, cancel_at_period_end, discount."""
    _stage(event, ctx)


async def on_subscription_deleted(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """Ended for good: status canceled, the row kept (churn segments need it)."""
    _stage(event, ctx)


async def on_subscription_paused(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """Status paused: out of MRR until resumed."""
    _stage(event, ctx)


async def on_subscription_resumed(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """Back from paused: counts in MRR again."""
    _stage(event, ctx)


async def on_subscription_trial_will_end(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """Three days before a trial ends; its snapshot is as good as any other's."""
    _stage(event, ctx)


async def on_subscription_pending_update_applied(
    conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext
) -> None:
    """A pending change (new price or quantity) took effect after payment."""
    _stage(event, ctx)


async def on_subscription_pending_update_expired(
    conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext
) -> None:
    """A pending change lapsed unpaid: the subscription as it stays."""
    _stage(event, ctx)
