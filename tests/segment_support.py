"""Billing rows written straight into the tables the segment rules read, for segment tests.

The billing handlers live on another branch; segment tests need only the columns the rules
read (customers.created_at, deleted_in_stripe, email; subscriptions.status, trial_end;
customer_activity), so they insert them with SQL.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import asyncpg

from stripeline.handlers import segments
from stripeline.settings import Settings
from tests.factories import new_id

NOW = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)


async def add_customer(
    conn: asyncpg.Connection,
    customer_id: str | None = None,
    *,
    created_at: datetime | None = NOW - timedelta(days=1),
    deleted: bool = False,
    email: str | None = None,
) -> str:
    customer_id = customer_id or new_id("cus")
    await conn.execute(
        "INSERT INTO customers (id, created_at, deleted_in_stripe, email) VALUES ($1, $2, $3, $4)",
        customer_id,
        created_at,
        deleted,
        email,
    )
    return customer_id


async def add_subscription(
    conn: asyncpg.Connection,
    customer_id: str,
    status: str,
    *,
    trial_end: datetime | None = None,
    subscription_id: str | None = None,
) -> str:
    subscription_id = subscription_id or new_id("sub")
    await conn.execute(
        "INSERT INTO subscriptions (id, customer_id, status, trial_end) VALUES ($1, $2, $3, $4)",
        subscription_id,
        customer_id,
        status,
        trial_end,
    )
    return subscription_id


async def set_subscription(conn: asyncpg.Connection, subscription_id: str, status: str, trial_end: datetime | None) -> None:
    await conn.execute(
        "UPDATE subscriptions SET status = $2, trial_end = $3 WHERE id = $1", subscription_id, status, trial_end
    )


async def add_activity(conn: asyncpg.Connection, customer_id: str, at: datetime) -> None:
    await conn.execute("INSERT INTO customer_activity (customer_id, at) VALUES ($1, $2)", customer_id, at)


async def evaluate(
    conn: asyncpg.Connection, customer_ids: list[str], now: datetime, settings: Settings, cause: str = "evt_test"
) -> segments.Changes:
    async with conn.transaction():
        return await segments.evaluate(conn, customer_ids, now, settings, cause=cause)


async def members_of(conn: asyncpg.Connection, customer_id: str) -> set[str]:
    return set(await segments.segments_of(conn, customer_id))


async def history_of(conn: asyncpg.Connection, customer_id: str) -> list[tuple[str, str, datetime, str]]:
    rows = await conn.fetch(
        "SELECT segment, change, at, cause FROM segment_history WHERE customer_id = $1 ORDER BY id", customer_id
    )
    return [(row["segment"], row["change"], row["at"], row["cause"]) for row in rows]
