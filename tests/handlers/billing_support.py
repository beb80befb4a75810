"""Shared by the billing handler tests: store and apply events, read the model back."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import asyncpg

from stripeline.model.context import ProcessingContext, Registry
from stripeline.model.events import EventRecord, event_from_payload
from stripeline.processing.engine import apply_events, lock_customers
from stripeline.settings import Settings
from stripeline.store.event_log import insert_events
from tests import registries

# The model tables and their keys; rows compared without last_synced_at.
MODEL_TABLES = {
    "customers": "id",
    "products": "id",
    "prices": "id",
    "subscriptions": "id",
    "subscription_items": "id",
    "invoices": "id",
    "payments": "id",
    "discounts": "id",
}


async def apply(
    conn: asyncpg.Connection, settings: Settings, payloads: list[dict[str, Any]], registry: Registry | None = None
) -> ProcessingContext:
    """Store the events (new ones) and apply them as one batch, in one transaction."""
    records = [event_from_payload(p) for p in payloads]
    ctx = ProcessingContext(settings=settings, now=datetime.now(timezone.utc), registry=registry or registries.product())
    async with conn.transaction():
        await insert_events(conn, _unique(records))
        await lock_customers(conn, (r.customer_id for r in records))
        await apply_events(conn, records, ctx)
    return ctx


def _unique(records: list[EventRecord]) -> list[EventRecord]:
    return list({r.id: r for r in records}.values())


async def apply_each(conn: asyncpg.Connection, settings: Settings, payloads: list[dict[str, Any]]) -> None:
    """One batch per event, in the given order."""
    for payload in payloads:
        await apply(conn, settings, [payload])


async def row(conn: asyncpg.Connection, table: str, key: str) -> dict[str, Any] | None:
    found = await conn.fetchrow(ROW_QUERIES[table], key)
    return dict(found) if found else None


ROW_QUERIES = {
    "customers": "SELECT * FROM customers WHERE id = $1",
    "products": "SELECT * FROM products WHERE id = $1",
    "prices": "SELECT * FROM prices WHERE id = $1",
    "subscriptions": "SELECT * FROM subscriptions WHERE id = $1",
    "invoices": "SELECT * FROM invoices WHERE id = $1",
    "payments": "SELECT * FROM payments WHERE id = $1",
    "discounts": "SELECT * FROM discounts WHERE id = $1",
}

ITEMS_OF = "SELECT * FROM subscription_items WHERE subscription_id = $1 ORDER BY id"

# The model rows that belong to a set of customers, prices or products.
STATE_QUERIES = {
    "customers": ("customers", "SELECT * FROM customers WHERE id = ANY($1::text[]) ORDER BY id"),
    "subscriptions": ("customers", "SELECT * FROM subscriptions WHERE customer_id = ANY($1::text[]) ORDER BY id"),
    "subscription_items": ("customers", """
        SELECT si.* FROM subscription_items si JOIN subscriptions s ON s.id = si.subscription_id
        WHERE s.customer_id = ANY($1::text[]) ORDER BY si.id"""),
    "invoices": ("customers", "SELECT * FROM invoices WHERE customer_id = ANY($1::text[]) ORDER BY id"),
    "payments": ("customers", """
        SELECT p.* FROM payments p LEFT JOIN invoices i ON i.id = p.invoice_id
        WHERE p.customer_id = ANY($1::text[]) OR i.customer_id = ANY($1::text[]) ORDER BY p.id"""),
    "discounts": ("customers", "SELECT * FROM discounts WHERE customer_id = ANY($1::text[]) ORDER BY id"),
    "prices": ("prices", "SELECT * FROM prices WHERE id = ANY($1::text[]) ORDER BY id"),
    "products": ("products", "SELECT * FROM products WHERE id = ANY($1::text[]) ORDER BY id"),
}


async def model_state(
    conn: asyncpg.Connection, customers: list[str], prices: list[str] = (), products: list[str] = ()
) -> dict[str, list[dict[str, Any]]]:
    """Every model row of these customers (and these prices and products), minus last_synced_at."""
    keys = {"customers": list(customers), "prices": list(prices), "products": list(products)}
    state = {}
    for table, (by, query) in STATE_QUERIES.items():
        rows = await conn.fetch(query, keys[by])
        state[table] = [{k: v for k, v in r.items() if k != "last_synced_at"} for r in rows]
    return state
