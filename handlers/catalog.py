"""The catalog: prices, legacy plans and products, from their own events and from payloads.

A fresh install may never see a price's own events, so every price (and expanded product)
inside a subscription is stored too, as an embedded snapshot (rank 0: the object's own event
of the same second wins). A legacy plan is stored as the price of the same id. Catalog rows
are shared by many customers, so they follow the context-free order (created, rank, event
id) and are upserted in key order; a deleted price or product stays deleted.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from app.events import EventRecord
from app.processing import ProcessingContext
from handlers.fields import integer, ref, text, verb_rank
from handlers.writes import Snapshot, Table, embedded_snapshot, own_snapshot

INTERVALS = frozenset({"day", "week", "month", "year"})

UPSERT_PRODUCTS = """
INSERT INTO products AS p (id, account, name, active, deleted, event_created, event_rank, event_id)
SELECT i.id, i.account, i.name, i.active, i.deleted, i.event_created, i.event_rank, i.event_id
FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::bool[], $6::timestamptz[], $7::int2[], $8::text[])
     AS i(id, account, name, active, deleted, event_created, event_rank, event_id)
ORDER BY i.id
ON CONFLICT (id) DO UPDATE SET
    account = excluded.account, name = excluded.name, active = excluded.active, deleted = excluded.deleted,
    event_created = excluded.event_created, event_rank = excluded.event_rank, event_id = excluded.event_id,
    last_synced_at = now()
WHERE NOT p.deleted
  AND (excluded.event_created, excluded.event_rank, excluded.event_id)
      > (p.event_created, p.event_rank, coalesce(p.event_id, ''))
"""

UPSERT_PRICES = """
INSERT INTO prices AS p (id, account, product_id, active, currency, unit_amount, type, interval, interval_count,
                         usage_type, nickname, deleted, event_created, event_rank, event_id)
SELECT i.*
FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::text[], $6::int8[], $7::text[], $8::text[],
            $9::int4[], $10::text[], $11::text[], $12::bool[], $13::timestamptz[], $14::int2[], $15::text[])
     AS i(id, account, product_id, active, currency, unit_amount, type, interval, interval_count, usage_type,
          nickname, deleted, event_created, event_rank, event_id)
ORDER BY i.id
ON CONFLICT (id) DO UPDATE SET
    account = excluded.account, product_id = excluded.product_id, active = excluded.active,
    currency = excluded.currency, unit_amount = excluded.unit_amount, type = excluded.type,
    interval = excluded.interval, interval_count = excluded.interval_count, usage_type = excluded.usage_type,
    nickname = excluded.nickname, deleted = excluded.deleted, event_created = excluded.event_created,
    event_rank = excluded.event_rank, event_id = excluded.event_id, last_synced_at = now()
WHERE NOT p.deleted
  AND (excluded.event_created, excluded.event_rank, excluded.event_id)
      > (p.event_created, p.event_rank, coalesce(p.event_id, ''))
"""

PRODUCTS = Table(name="products", order=10, upsert=UPSERT_PRODUCTS)
PRICES = Table(name="prices", order=20, upsert=UPSERT_PRICES)


def _product_row(event: EventRecord, product: dict[str, Any], deleted: bool) -> tuple:
    return (product["id"], event.account, text(product.get("name")), product.get("active") is not False, deleted)


def _price_row(event: EventRecord, price: dict[str, Any], deleted: bool) -> tuple:
    """A price, or a legacy plan read as the price of the same id."""
    if price.get("object") == "plan":
        unit_amount, kind = integer(price.get("amount")), "recurring"
        recurring = price
    else:
        unit_amount, kind = integer(price.get("unit_amount")), text(price.get("type"))
        recurring = price.get("recurring") if isinstance(price.get("recurring"), dict) else {}
    interval = recurring.get("interval")
    count = integer(recurring.get("interval_count"))
    return (
        price["id"],
        event.account,
        ref(price.get("product")),
        price.get("active") is not False,
        text(price.get("currency")),
        unit_amount,
        kind,
        interval if interval in INTERVALS else None,
        count if count and count > 0 else (1 if interval in INTERVALS else None),
        text(recurring.get("usage_type")),
        text(price.get("nickname")),
        deleted,
    )


def _deleted(event: EventRecord) -> bool:
    return event.type.endswith(".deleted") or event.object.get("deleted") is True


def price_snapshot(event: EventRecord) -> Snapshot:
    """The prices row as a `price.*` or `plan.*` event shows it."""
    return own_snapshot(PRICES, event, event.object["id"], verb_rank(event.type), _price_row(event, event.object, _deleted(event)))


def product_snapshot(event: EventRecord) -> Snapshot:
    """The products row as a `product.*` event shows it."""
    return own_snapshot(
        PRODUCTS, event, event.object["id"], verb_rank(event.type), _product_row(event, event.object, _deleted(event))
    )


def embedded_catalog_snapshots(event: EventRecord, price: Any) -> list[Snapshot]:
    """A price (or plan) found in another payload, and its product when expanded."""
    if not isinstance(price, dict) or not ref(price.get("id")):
        return []
    found = [embedded_snapshot(PRICES, event, price["id"], _price_row(event, price, price.get("deleted") is True))]
    product = price.get("product")
    if isinstance(product, dict) and ref(product.get("id")):
        found.append(embedded_snapshot(PRODUCTS, event, product["id"], _product_row(event, product, product.get("deleted") is True)))
    return found


def _stage_price(event: EventRecord, ctx: ProcessingContext) -> None:
    ctx.writes.stage(price_snapshot(event))
    product = event.object.get("product")
    if isinstance(product, dict) and ref(product.get("id")):
        ctx.writes.stage(embedded_snapshot(PRODUCTS, event, product["id"], _product_row(event, product, False)))


async def on_price_created(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """A new price: amount, currency and interval feed MRR."""
    _stage_price(event, ctx)


async def on_price_updated(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """A changed price (nickname, active): shown with subscription items."""
    _stage_price(event, ctx)


async def on_price_deleted(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """A deleted price: kept, marked deleted, for the subscriptions still on it."""
    _stage_price(event, ctx)


async def on_plan_created(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """A legacy plan: stored as the price of the same id."""
    _stage_price(event, ctx)


async def on_plan_updated(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """A changed legacy plan."""
    _stage_price(event, ctx)


async def on_plan_deleted(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """A deleted legacy plan: its price row is marked deleted."""
    _stage_price(event, ctx)


async def on_product_created(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """A new product: its name is what a subscription item shows."""
    ctx.writes.stage(product_snapshot(event))


async def on_product_updated(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """A renamed or (de)activated product."""
    ctx.writes.stage(product_snapshot(event))


async def on_product_deleted(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """A deleted product: kept, marked deleted."""
    ctx.writes.stage(product_snapshot(event))
