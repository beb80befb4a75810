"""`stripeline erase --yes`: delete every row the Stripe data source produced (ChartMogul's
"delete this data source"): stored events, the billing model, segments and their history,
the outbox, attributes, tags, activity and tombstones, in one transaction. The schema stays,
so the same database can start syncing again. Without --yes it only counts what it would
delete and exits non-zero. Jobs still queued in Redis find no event and do nothing.
"""

from __future__ import annotations

import argparse
import sys

import asyncpg

from stripeline import event_loop
from stripeline.logging import log
from stripeline.model import tables
from stripeline.settings import Settings
from stripeline.store.db import connect

# Every table but schema_migrations (app/model/tables.py).
ERASED_TABLES = tables.ERASED

# Built once from the constant list above (identifiers, never user input), so that a new table
# is added in one place.
COUNT_ROWS = "\nUNION ALL ".join(f"SELECT '{name}' AS name, count(*) AS n FROM {name}" for name in ERASED_TABLES)

# Taken before counting, so the counts are exactly what TRUNCATE removes.
LOCK_TABLES = f"LOCK TABLE {', '.join(ERASED_TABLES)} IN ACCESS EXCLUSIVE MODE"

TRUNCATE_TABLES = f"TRUNCATE {', '.join(ERASED_TABLES)} RESTART IDENTITY"

# A running worker or web process holds these tables briefly; wait for it, not forever.
LOCK_TIMEOUT = "SET LOCAL lock_timeout = '15s'"


async def count_rows(conn: asyncpg.Connection) -> dict[str, int]:
    return {row["name"]: row["n"] for row in await conn.fetch(COUNT_ROWS)}


async def erase(conn: asyncpg.Connection) -> dict[str, int]:
    """Delete every row of the data source in one transaction; return the counts per table."""
    async with conn.transaction():
        await conn.execute(LOCK_TIMEOUT)
        await conn.execute(LOCK_TABLES)
        counts = await count_rows(conn)
        await conn.execute(TRUNCATE_TABLES)
    return counts


def _table(counts: dict[str, int]) -> str:
    width = max(len(name) for name in counts)
    return "\n".join(f"  {name:<{width}}  {n:>10}" for name, n in counts.items())


async def _run(settings: Settings, really: bool) -> int:
    conn = await connect(settings.database_url, schema=settings.schema, process="erase")
    try:
        if not really:
            counts = await count_rows(conn)
            print(f"would delete:\n{_table(counts)}")
            print(
                f"stripeline erase: nothing deleted; run `stripeline erase --yes` to delete "
                f"{sum(counts.values())} rows from {len(counts)} tables",
                file=sys.stderr,
            )
            return 1
        try:
            counts = await erase(conn)
        except asyncpg.LockNotAvailableError:
            print("stripeline erase: the tables are busy (stop web and worker first); nothing deleted", file=sys.stderr)
            return 1
    finally:
        await conn.close()
    total = sum(counts.values())
    log.info("data_source_erased", rows=total, tables=len(counts))
    print(f"deleted:\n{_table(counts)}")
    print(f"erased {total} rows from {len(counts)} tables; the schema is kept")
    return 0


def erase_command(args: argparse.Namespace, settings: Settings) -> int:
    settings.require("DATABASE_URL")
    return event_loop.run(_run(settings, really=args.yes))
