"""Subscriptions and their items: every `customer.subscription.*` event carries the whole object.

API versions: before 2025-03-31 the billing period is on the subscription
(`current_period_start/end`) and items carry a `plan` beside their `price`; from basil on the
period is on each item. The subscription's own period is then its earliest-ending item's.
Items are part of the subscription's snapshot: rewritten only when the snapshot wins. The
prices and products inside the items are stored too (handlers/catalog.py).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import asyncpg

from stripeline.handlers import catalog, discounts
from stripeline.model.context import ProcessingContext
from stripeline.model.events import EventRecord
from stripeline.model.fields import CHANGED_RANK, CREATED_RANK, DELETED_RANK, integer, listed, ref, text, ts
from stripeline.model.writes import Bool, Int, Json, Projection, Snapshot, Table, Text, Timestamp, own_snapshot

# Every one carries the whole subscription: status drives every segment, items and prices MRR.
EVENTS = {
    "customer.subscription.created": "a new subscription (trialing, incomplete or active), with its items and prices",
    "customer.subscription.updated": "any change: status, quantity, price, trial, cancel_at_period_end, discount",
    "customer.subscription.deleted": "ended for good: status canceled, the row kept (churn segments need it)",
    "customer.subscription.paused": "status paused: out of MRR and the Customers segment until resumed",
    "customer.subscription.resumed": "back from paused: counts in MRR again",
    "customer.subscription.trial_will_end": "three days before a trial ends: a snapshot as good as any other",
    "customer.subscription.pending_update_applied": "a pending change (price, quantity) took effect after payment",
    "customer.subscription.pending_update_expired": "a pending change lapsed unpaid: the subscription as it stays",
}

# Statuses a subscription never leaves: after every live status of the same second.
FINAL_STATUSES = frozenset({"canceled", "incomplete_expired"})
FINAL_RANK = CHANGED_RANK + 10

class SubscriptionRow(NamedTuple):
    id: Text
    account: Text
    customer_id: Text
    status: Text
    currency: Text
    created_at: Timestamp
    trial_start: Timestamp
    trial_end: Timestamp
    canceled_at: Timestamp
    ended_at: Timestamp
    cancel_at: Timestamp
    cancel_at_period_end: Bool
    current_period_start: Timestamp
    current_period_end: Timestamp
    discount_ids: Json  # the ids of the discounts it names; null when its payload does not say
    metadata: Json


class ItemRow(NamedTuple):
    id: Text
    subscription_id: Text
    price_id: Text
    product_id: Text
    quantity: Int
    current_period_start: Timestamp  # basil and later keep the period on each item
    current_period_end: Timestamp


# Items are part of the subscription's snapshot: replaced when it is, and only then.
UPSERT_SUBSCRIPTIONS = """
WITH incoming AS (
    SELECT i.* FROM {incoming}
),
stored AS (
    SELECT s.id, s.event_created, s.event_rank, s.event_id FROM subscriptions AS s JOIN incoming USING (id)
),
written AS (
    INSERT INTO subscriptions AS s ({columns})
    SELECT {values} FROM incoming ORDER BY id
    ON CONFLICT (id) DO UPDATE SET {updates}, last_synced_at = now()
    WHERE (excluded.event_created, excluded.event_rank) > (s.event_created, s.event_rank)
       -- an equal version with another event: replaced only once settled by evidence
       OR ((excluded.event_created, excluded.event_rank) = (s.event_created, s.event_rank)
           AND {settled} AND excluded.event_id <> s.event_id)
    RETURNING id
),
items AS (
    SELECT it.* FROM {children}
    WHERE it.subscription_id IN (SELECT id FROM written)
),
removed AS (
    DELETE FROM subscription_items AS si USING written AS w
    WHERE si.subscription_id = w.id AND NOT (si.id = ANY({child_ids}))
),
replaced AS (
    INSERT INTO subscription_items ({child_columns})
    SELECT * FROM items ORDER BY id
    ON CONFLICT (id) DO UPDATE SET {child_updates}
    WHERE {child_changed}
)
SELECT i.id, s.event_id FROM incoming AS i JOIN stored AS s USING (id)
WHERE NOT {settled} AND i.event_rank > 0 AND s.event_created = i.event_created
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


def _item_row(subscription_id: str, item: dict[str, Any]) -> ItemRow:
    price = _price_of(item)
    quantity = integer(item.get("quantity"))
    return ItemRow(
        id=item["id"],
        subscription_id=subscription_id,
        price_id=ref(price),
        product_id=ref(price.get("product")) if isinstance(price, dict) else None,
        quantity=quantity if quantity is not None and quantity >= 0 else 1,
        current_period_start=ts(item.get("current_period_start")),
        current_period_end=ts(item.get("current_period_end")),
    )


def _period(obj: dict[str, Any], items: tuple[ItemRow, ...]) -> tuple:
    if "current_period_end" in obj:
        return ts(obj.get("current_period_start")), ts(obj.get("current_period_end"))
    # basil: the period lives on each item; the next renewal is the earliest end.
    periods = [(item.current_period_end, item.current_period_start) for item in items
               if item.current_period_end is not None]
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
    row = SubscriptionRow(
        id=subscription_id,
        account=event.account,
        customer_id=ref(obj.get("customer")),
        status=text(obj.get("status")),
        currency=text(obj.get("currency")),
        created_at=ts(obj.get("created")),
        trial_start=ts(obj.get("trial_start")),
        trial_end=ts(obj.get("trial_end")),
        canceled_at=ts(obj.get("canceled_at")),
        ended_at=ts(obj.get("ended_at")),
        cancel_at=ts(obj.get("cancel_at")),
        cancel_at_period_end=obj.get("cancel_at_period_end") is True,
        current_period_start=period_start,
        current_period_end=period_end,
        discount_ids=_discount_ids(obj),
        metadata=obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {},
    )
    return own_snapshot(SUBSCRIPTIONS, event, subscription_id, subscription_rank(event), row, items)


def embedded_snapshots(event: EventRecord) -> list[Snapshot | None]:
    """What else the payload tells: its prices and products, its discounts."""
    obj = event.object
    customer_id = ref(obj.get("customer"))
    found: list[Snapshot | None] = []
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
    row=SubscriptionRow,
    order=50,
    template=UPSERT_SUBSCRIPTIONS,
    child=ItemRow,
    child_table="subscription_items",
    evidence_types=frozenset(EVENTS),
    project=subscription_snapshot,
)


async def on_subscription_event(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """The subscription with its items, and its customer, prices, products and discounts."""
    ctx.touch(event)
    ctx.writes.stage(subscription_snapshot(event))
    ctx.writes.stage_all(embedded_snapshots(event))


PROJECTIONS = (Projection(EVENTS, on_subscription_event),)
