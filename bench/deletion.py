"""How long a customer deletion takes as the event store grows, and what the guard costs a batch.

    .venv/bin/python -m bench.deletion [--events 20000 50000] [--admin-url postgresql://root@127.0.0.1:5432/test]

Creates a scratch database (dropped at the end), stores N events (a simulated account's
real-sized stream, tests/simulation.py, plus the streams of 40 customers full of personal data
from tests/personal_data.py, each with two events that name no customer) and times: a first
deletion in each mode (with the one scan for indirect mentions), the same deletion applied
again (a replay), and the tombstone lookup that apply_events adds to every batch.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import time
from datetime import datetime, timezone

import asyncpg
import orjson

from bench.common import simulated_events, size_line
from stripeline.handlers import registry
from stripeline.handlers.deletion import load_tombstones
from stripeline.model.context import ProcessingContext
from stripeline.model.events import EVENT_COLUMNS, event_from_payload, record_from_row
from stripeline.processing.engine import apply_events
from stripeline.settings import Settings
from stripeline.store.db import connect
from stripeline.store.event_log import insert_events
from stripeline.store.migrate import migrate
from tests.factories import event
from tests.personal_data import T0, Person, deletion, seed_rows, stream
from tests.services import with_database

PEOPLE = 40  # customers whose deletion is timed (and whose streams the guard lookup reads)


def customerless(person: Person) -> list[dict]:
    """Events that name no customer (a fifth of a store, say): the ones the mention scan reads."""
    payout = {"id": f"po_{person.key}", "object": "payout", "amount": 7000, "currency": "gbp", "status": "paid"}
    dispute = {"id": f"dp_{person.key}", "object": "dispute", "amount": 7500, "charge": f"ch_{person.key}",
               "evidence": {"customer_email_address": person.email}, "status": "won"}
    return [
        event("payout.paid", payout, created=T0 + 86400),
        event("charge.dispute.closed", dispute, created=T0 + 86400),
    ]


async def fill(conn: asyncpg.Connection, total: int) -> list[Person]:
    """`total` stored, processed events: the streams of PEOPLE customers full of personal data
    (tests/personal_data.py, with their model rows) among a simulated account's real-sized ones."""
    people = [Person() for _ in range(PEOPLE)]
    own = [p for person in people for p in stream(person) + customerless(person) if p["type"] != "customer.deleted"]
    others = simulated_events(max(0, total - len(own)), max(1, total // 10), seed=1)
    print(size_line(orjson.dumps(p) for p in own + others), flush=True)
    await insert_events(conn, [event_from_payload(p) for p in own])
    for person in people:
        await seed_rows(conn, person)
    for start in range(0, len(others), 2000):
        await insert_events(conn, [event_from_payload(p) for p in others[start : start + 2000]])
    await conn.execute("UPDATE stripe_events SET status = 'processed'")
    await conn.execute("ANALYZE")
    return people


async def time_deletion(conn: asyncpg.Connection, person: Person, settings: Settings) -> float:
    payload = deletion(person)
    await insert_events(conn, [event_from_payload(payload)])
    started = time.perf_counter()
    async with conn.transaction():
        row = await conn.fetchrow(f"SELECT {EVENT_COLUMNS} FROM stripe_events WHERE id = $1", payload["id"])
        ctx = ProcessingContext(settings=settings, now=datetime.now(timezone.utc), registry=registry())
        await apply_events(conn, [record_from_row(row)], ctx)
    return (time.perf_counter() - started) * 1000


async def time_replayed_deletion(conn: asyncpg.Connection, person: Person, settings: Settings) -> float:
    payload = {**deletion(person), "id": f"evt_{person.key}_again"}
    started = time.perf_counter()
    async with conn.transaction():
        ctx = ProcessingContext(settings=settings, now=datetime.now(timezone.utc), registry=registry())
        await apply_events(conn, [event_from_payload(payload)], ctx)
    return (time.perf_counter() - started) * 1000


async def time_guard_lookup(conn: asyncpg.Connection, people: list[Person], settings: Settings) -> float:
    records = [event_from_payload(p) for person in people[:32] for p in stream(person)][:256]
    samples = []
    for _ in range(50):
        ctx = ProcessingContext(settings=settings, now=datetime.now(timezone.utc), registry=registry())
        started = time.perf_counter()
        await load_tombstones(conn, records, ctx)
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def run(admin_url: str, sizes: list[int]) -> None:
    settings = Settings()
    admin = await asyncpg.connect(admin_url)
    for size in sizes:
        name = f"stripeline_bench_{os.getpid()}_{size}"
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            conn = await connect(with_database(admin_url, name))
            await migrate(conn)
            people = await fill(conn, size)
            anonymize = await time_deletion(conn, people[0], settings)
            again = await time_replayed_deletion(conn, people[0], settings)
            delete = await time_deletion(conn, people[1], dataclasses.replace(settings, deleted_customers="delete"))
            lookup = await time_guard_lookup(conn, people[2:], settings)
            stored = await conn.fetchval("SELECT pg_size_pretty(pg_total_relation_size('stripe_events'))")
            print(f"events={size:>7} store={stored:>8}  first deletion: anonymize {anonymize:7.1f} ms, "
                  f"delete {delete:7.1f} ms; replayed deletion {again:6.1f} ms; "
                  f"tombstone lookup per 256-event batch {lookup:5.2f} ms")
            await conn.close()
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, nargs="+", default=[20000, 50000])
    default_url = os.environ.get("TEST_DATABASE_URL", "postgresql://root@127.0.0.1:5432/test")
    parser.add_argument("--admin-url", default=default_url, help="a PostgreSQL URL allowed to create databases")
    args = parser.parse_args()
    asyncio.run(run(args.admin_url, args.events))


if __name__ == "__main__":
    main()
