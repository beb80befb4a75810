"""Forward-only SQL migrations from the `sql` package, applied in order under an advisory lock.

Safe to run twice and from several processes at once: the lock serialises runners and
`schema_migrations` records what is applied, each migration in its own transaction.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from importlib import resources

import asyncpg

from app.logging import log

# Any constant shared by every stripeline process; "stripeli" as an integer.
MIGRATION_LOCK = 0x7374726970656C69 - (1 << 63)

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
APPLIED = "SELECT version FROM schema_migrations"
RECORD = "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)"

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("sql").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a number: {versions}")
    return found


async def migrate(conn: asyncpg.Connection) -> list[Migration]:
    """Apply every migration not yet recorded; return the ones applied by this call."""
    applied_now = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(CREATE_TABLE)
        done = {row["version"] for row in await conn.fetch(APPLIED)}
        for migration in load_migrations():
            if migration.version in done:
                continue
            started = time.perf_counter()
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(RECORD, migration.version, migration.name)
            applied_now.append(migration)
            log.info(
                "migration_applied",
                version=migration.version,
                name=migration.name,
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
            )
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return applied_now
