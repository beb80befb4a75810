"""Segment refresh at scale: a full refresh of all eight segments, and the per-event recompute.

Creates a fresh database, fills it set-based (generate_series) with N customers (default one
million), their subscriptions and activity, then times:
  - the first full refresh (every membership is new),
  - a full refresh with nothing to change, and one an hour later (time-based changes only),
  - the scheduled refresh of the customers due a minute later,
  - the segment counts of GET /api/segments,
  - a full refresh after the segment list was reordered (bits rebuilt from memberships),
  - the recompute for one customer, as every event pays it (inside a rolled-back transaction).
Drops the database at the end. Targets: full refresh under 10 s, recompute under 1 ms.

    .venv/bin/python bench/segments.py [--customers 1000000] [--samples 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from datetime import datetime, timedelta, timezone

import asyncpg

from stripeline.handlers import segments
from stripeline.http.api_segments import COUNT_MEMBERS
from stripeline.settings import Settings
from stripeline.store.db import connect
from stripeline.store.migrate import migrate

ADMIN_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://root@127.0.0.1:5432/postgres")

# Customers created over the last year; 2% deleted in Stripe.
FILL_CUSTOMERS = """
INSERT INTO customers (id, created_at, deleted_in_stripe, email, event_created)
SELECT 'cus_' || lpad(i::text, 9, '0'),
       $2::timestamptz - make_interval(secs => (hashint4(i) & 2147483647) % (365 * 86400)),
       i % 50 = 0,
       'user' || i || '@example.com',
       $2::timestamptz
FROM generate_series(1, $1::int) AS i
"""

# One subscription per customer, a second for every seventh; statuses in rough SaaS proportions.
# Trials end between 5 days ago and 14 days ahead; paid plans that had a trial ended it long ago.
FILL_SUBSCRIPTIONS = """
INSERT INTO subscriptions (id, customer_id, status, trial_end, created_at, event_created)
SELECT 'sub_' || lpad(i::text, 9, '0') || '_' || k,
       'cus_' || lpad(i::text, 9, '0'),
       status,
       CASE WHEN status = 'trialing' THEN $2::timestamptz + make_interval(secs => r % (19 * 86400) - 5 * 86400)
            WHEN r % 3 = 0 THEN $2::timestamptz - make_interval(secs => 30 * 86400 + r % (300 * 86400))
       END,
       $2::timestamptz - interval '400 days',
       $2::timestamptz
FROM generate_series(1, $1::int) AS i
CROSS JOIN LATERAL generate_series(1, CASE WHEN i % 7 = 0 THEN 2 ELSE 1 END) AS k
CROSS JOIN LATERAL (SELECT hashint4(i * 3 + k) & 2147483647 AS r) AS h
CROSS JOIN LATERAL (SELECT CASE
    WHEN r % 100 < 12 THEN 'trialing'
    WHEN r % 100 < 62 THEN 'active'
    WHEN r % 100 < 67 THEN 'past_due'
    WHEN r % 100 < 87 THEN 'canceled'
    WHEN r % 100 < 90 THEN 'unpaid'
    WHEN r % 100 < 93 THEN 'incomplete_expired'
    WHEN r % 100 < 97 THEN 'incomplete'
    ELSE 'paused' END AS status) AS s
WHERE i % 10 <> 9  -- a tenth of the customers never subscribed
"""

# Zero to five activity rows per customer (2.5 on average) over the last 30 days.
FILL_ACTIVITY = """
INSERT INTO customer_activity (customer_id, at)
SELECT 'cus_' || lpad(i::text, 9, '0'),
       $2::timestamptz - make_interval(secs => (hashint4(i * 7 + k) & 2147483647) % (30 * 86400))
FROM generate_series(1, $1::int) AS i
CROSS JOIN LATERAL generate_series(1, i % 6) AS k
ON CONFLICT DO NOTHING
"""


def millis(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


async def timed(label: str, work) -> object:
    started = time.perf_counter()
    result = await work
    print(f"{label}: {time.perf_counter() - started:.2f} s  {result}", flush=True)
    return result


async def full_refresh(conn: asyncpg.Connection, now: datetime, settings: Settings) -> segments.Changes:
    async with conn.transaction():
        return await segments.refresh_all(conn, now, settings)


async def scheduled_refresh(conn: asyncpg.Connection, now: datetime, settings: Settings) -> str:
    due = await segments.due_for_review(conn, now, 100_000)
    async with conn.transaction():
        idle = await segments.lock_idle_customers(conn, due)
        changes = await segments.evaluate(conn, idle, now, settings)
    return f"{len(due)} due, {changes}"


async def per_event(
    conn: asyncpg.Connection, customers: int, samples: int, now: datetime, settings: Settings
) -> list[float]:
    """The recompute one event adds: one customer, inside the event's transaction (rolled back)."""
    timings = []
    rng = random.Random(7)
    for sample in range(samples):
        customer = f"cus_{rng.randint(1, customers):09d}"
        transaction = conn.transaction()
        await transaction.start()
        # Each event touches its customer's data first; the activity row stands in for that write.
        await conn.execute("INSERT INTO customer_activity VALUES ($1, $2) ON CONFLICT DO NOTHING", customer, now)
        started = time.perf_counter()
        await segments.evaluate(conn, [customer], now, settings, cause=f"evt_bench_{sample}")
        timings.append(time.perf_counter() - started)
        await transaction.rollback()
    return timings


async def run(customers: int, samples: int) -> None:
    name = f"stripeline_bench_segments_{os.getpid()}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        conn = await connect(ADMIN_URL.rsplit("/", 1)[0] + f"/{name}")
        try:
            await migrate(conn)
            await bench(conn, customers, samples)
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def bench(conn: asyncpg.Connection, customers: int, samples: int) -> None:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    settings = Settings()
    print("payloads: none; the model is filled set-based (generate_series), no events are stored", flush=True)
    print(f"filling {customers:,} customers ...", flush=True)
    started = time.perf_counter()
    for query in (FILL_CUSTOMERS, FILL_SUBSCRIPTIONS, FILL_ACTIVITY):
        await conn.execute(query, customers, now)
    await conn.execute("VACUUM ANALYZE")
    counts = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM customers) AS customers, (SELECT count(*) FROM subscriptions) AS subscriptions,"
        " (SELECT count(*) FROM customer_activity) AS activity"
    )
    print(f"filled in {time.perf_counter() - started:.1f} s: {dict(counts)}", flush=True)

    await timed("full refresh, first (all memberships new)", full_refresh(conn, now, settings))
    await conn.execute("VACUUM ANALYZE segment_memberships, segment_evaluations, segment_history")
    await timed("full refresh, nothing changed", full_refresh(conn, now, settings))
    an_hour_later = now + timedelta(hours=1)
    await timed("full refresh, an hour later", full_refresh(conn, an_hour_later, settings))
    started = time.perf_counter()
    members = await conn.fetch(COUNT_MEMBERS)
    print(f"segment counts (GET /api/segments): {time.perf_counter() - started:.2f} s")
    print("members:", ", ".join(f"{row['segment']}={row['members']:,}" for row in members))
    a_minute_later = an_hour_later + timedelta(minutes=1)
    await timed("scheduled refresh, a minute after that", scheduled_refresh(conn, a_minute_later, settings))

    async def renumbered_refresh() -> segments.Changes:
        async with conn.transaction():
            return await segments.refresh_all(conn, a_minute_later, settings, renumber=True)

    await timed("full refresh after segments were removed or reordered (bits rebuilt)", renumbered_refresh())

    timings = await per_event(conn, customers, samples, a_minute_later, settings)
    timings.sort()
    print(
        f"per-event recompute over {samples} events: median {millis(statistics.median(timings))}, "
        f"p95 {millis(timings[int(len(timings) * 0.95)])}, p99 {millis(timings[int(len(timings) * 0.99)])}, "
        f"mean {millis(statistics.fmean(timings))}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=2000)
    args = parser.parse_args()
    asyncio.run(run(args.customers, args.samples))


if __name__ == "__main__":
    main()
