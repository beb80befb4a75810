"""The catalog: prices, legacy plans and products, from their own events and from payloads.

A fresh install may never see a price's own events, so every price (and expanded product)
inside a subscription is stored too, as an embedded snapshot (rank 0: the object's own event
of the same second wins). A legacy plan is stored as the price of the same id. Catalog rows
are shared by many customers, so they follow the context-free order (created, rank, event
id) and are upserted in key order; a deleted price or product stays deleted.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import asyncpg

from stripeline.model.context import ProcessingContext
from stripeline.model.events import EventRecord
from stripeline.model.fields import integer, ref, text, verb_rank
from stripeline.model.writes import (
    BigInt,
    Bool,
    Int,
    Projection,
    Snapshot,
    Table,
    Text,
    embedded_snapshot,
    own_snapshot,
)

INTERVALS = frozenset({"day", "week", "month", "year"})

class ProductRow(NamedTuple):
    id: Text
    account: Text
    name: Text
    active: Bool
    deleted: Bool


class PriceRow(NamedTuple):
    """A price, or a legacy plan read as the price of the same id."""

    id: Text
    account: Text
    product_id: Text
    active: Bool
    currency: Text
    unit_amount: BigInt  # null for tiered or custom prices
    type: Text
    interval: Text
    interval_count: Int
    usage_type: Text
    nickname: Text
    deleted: Bool


# Shared rows: the context-free order (created, rank, event id); a deleted one stays deleted.
# A snapshot that is not newer than the stored row is left out before the insert: ON CONFLICT
# DO UPDATE locks the conflicting row until commit even when its WHERE refuses the update, so a
# batch that only repeats what the rows hold (a duplicate, a late event, a replay) made
# concurrent batches (two workers, the lanes of a rebuild or an import) wait on those locks
# for nothing. The guard below still decides for a row that changes meanwhile. (A batch of new
# events still writes its prices: each event carries them at its own, newer, version.)
UPSERT_CATALOG = """
INSERT INTO {table} AS p ({{columns}})
SELECT {{columns}} FROM {{incoming}}
WHERE NOT EXISTS (
    SELECT FROM {table} AS stored
    WHERE stored.id = i.id
      AND (stored.deleted OR (i.event_created, i.event_rank, i.event_id)
                             <= (stored.event_created, stored.event_rank, coalesce(stored.event_id, '')))
)
ORDER BY i.id
ON CONFLICT (id) DO UPDATE SET {{updates}}, last_synced_at = now()
WHERE NOT p.deleted
  AND (excluded.event_created, excluded.event_rank, excluded.event_id)
      > (p.event_created, p.event_rank, coalesce(p.event_id, ''))
"""

# Written last in a flush (after payments, 70): nearly every batch upserts the same few prices
# and products, and holds their row locks until it commits, so a concurrent batch (another
# worker's, the other lane of a rebuild) that writes them waits until then. Written last, they
# are held for the commit alone: in a rebuild, prices were the first statement by time waited
# on locks (23% of the backends' samples).
PRODUCTS = Table(name="products", row=ProductRow, order=80, template=UPSERT_CATALOG.format(table="products"),
                 shared=True)
PRICES = Table(name="prices", row=PriceRow, order=90, template=UPSERT_CATALOG.format(table="prices"), shared=True)


def _product_row(event: EventRecord, product: dict[str, Any], deleted: bool) -> ProductRow:
    return ProductRow(product["id"], event.account, text(product.get("name")), product.get("active") is not False, deleted)


def _price_row(event: EventRecord, price: dict[str, Any], deleted: bool) -> PriceRow:
    if price.get("object") == "plan":
        unit_amount, kind = integer(price.get("amount")), "recurring"
        recurring = price
    else:
        unit_amount, kind = integer(price.get("unit_amount")), text(price.get("type"))
        recurring = price.get("recurring") if isinstance(price.get("recurring"), dict) else {}
    interval = recurring.get("interval")
    count = integer(recurring.get("interval_count"))
    return PriceRow(
        id=price["id"],
        account=event.account,
        product_id=ref(price.get("product")),
        active=price.get("active") is not False,
        currency=text(price.get("currency")),
        unit_amount=unit_amount,
        type=kind,
        interval=interval if interval in INTERVALS else None,
        interval_count=count if count and count > 0 else (1 if interval in INTERVALS else None),
        usage_type=text(recurring.get("usage_type")),
        nickname=text(price.get("nickname")),
        deleted=deleted,
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


# The catalog: amounts and intervals for MRR, names for subscription items. Legacy plans (older
# accounts still send them) are stored as the price of the same id.
PRICE_EVENTS = {
    "price.created": "a new price: amount, currency and interval feed MRR",
    "price.updated": "a changed price (nickname, active): shown with subscription items",
    "price.deleted": "a deleted price: kept, marked deleted, for the subscriptions still on it",
    "plan.created": "a legacy plan: stored as the price of the same id",
    "plan.updated": "a changed legacy plan",
    "plan.deleted": "a deleted legacy plan: its price row is marked deleted",
}
PRODUCT_EVENTS = {
    "product.created": "a new product: its name is what a subscription item shows",
    "product.updated": "a renamed or (de)activated product",
    "product.deleted": "a deleted product: kept, marked deleted",
}


async def on_price_event(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """The price (or plan), and its product when expanded."""
    ctx.writes.stage(price_snapshot(event))
    product = event.object.get("product")
    if isinstance(product, dict) and ref(product.get("id")):
        ctx.writes.stage(embedded_snapshot(PRODUCTS, event, product["id"], _product_row(event, product, False)))


async def on_product_event(conn: asyncpg.Connection, event: EventRecord, ctx: ProcessingContext) -> None:
    """The product."""
    ctx.writes.stage(product_snapshot(event))


PROJECTIONS = (Projection(PRICE_EVENTS, on_price_event), Projection(PRODUCT_EVENTS, on_product_event))
