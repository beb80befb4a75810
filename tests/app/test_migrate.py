"""Migrations: applied once each, in order, safe twice and from two processes at once."""

from __future__ import annotations

import asyncio
import os
import uuid

import asyncpg
import pytest

from app.db import connect
from app.migrate import load_migrations, migrate
from tests.services import with_database

# The shape of stripeline's schema: what a migration run must reproduce exactly.
SCHEMA_COLUMNS = """
SELECT table_name, column_name, data_type, is_nullable, column_default
FROM information_schema.columns WHERE table_schema = current_schema()
ORDER BY table_name, column_name
"""
SCHEMA_INDEXES = "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() ORDER BY indexname"
SCHEMA_CONSTRAINTS = """
SELECT conrelid::regclass::text AS table_name, conname, pg_get_constraintdef(oid) AS definition
FROM pg_constraint WHERE connamespace = current_schema()::regnamespace
ORDER BY 1, 2
"""


async def schema_of(conn) -> dict[str, list[tuple]]:
    return {
        "columns": [tuple(row) for row in await conn.fetch(SCHEMA_COLUMNS)],
        "indexes": [tuple(row) for row in await conn.fetch(SCHEMA_INDEXES)],
        "constraints": [tuple(row) for row in await conn.fetch(SCHEMA_CONSTRAINTS)],
    }


@pytest.fixture
async def fresh_databases(service_urls):
    """A factory of empty databases (no migrations applied), dropped afterwards."""
    admin_url, _ = service_urls
    admin = await asyncpg.connect(admin_url)
    names = []

    async def create() -> str:
        name = f"stripeline_m_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        await admin.execute(f'CREATE DATABASE "{name}"')
        names.append(name)
        return with_database(admin_url, name)

    yield create
    for name in names:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


async def test_migrations_are_numbered_without_gaps():
    versions = [m.version for m in load_migrations()]
    assert versions == list(range(1, len(versions) + 1))


async def test_migrating_twice_changes_nothing_the_second_time(fresh_databases):
    conn = await connect(await fresh_databases())
    try:
        first = await migrate(conn)
        schema = await schema_of(conn)
        second = await migrate(conn)
        assert [m.version for m in first] == [m.version for m in load_migrations()]
        assert second == []
        assert await schema_of(conn) == schema
        recorded = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [row["version"] for row in recorded] == [m.version for m in first]
    finally:
        await conn.close()


async def test_two_processes_migrating_at_once_apply_each_migration_once(fresh_databases):
    url = await fresh_databases()
    first, second = await connect(url), await connect(url)
    try:
        results = await asyncio.gather(migrate(first), migrate(second))
        applied = sorted(m.version for result in results for m in result)
        assert applied == [m.version for m in load_migrations()]
        assert await first.fetchval("SELECT count(*) FROM schema_migrations") == len(applied)
        reference = await connect(await fresh_databases())
        try:
            await migrate(reference)
            assert await schema_of(first) == await schema_of(reference)
        finally:
            await reference.close()
    finally:
        await first.close()
        await second.close()


async def test_upgrading_step_by_step_ends_in_the_same_schema_as_a_fresh_install(fresh_databases, monkeypatch):
    import app.migrate

    everything = load_migrations()
    stepwise = await connect(await fresh_databases())
    fresh = await connect(await fresh_databases())
    try:
        for count in range(1, len(everything) + 1):
            # An older release knew only the first `count` migrations.
            monkeypatch.setattr(app.migrate, "load_migrations", lambda count=count: everything[:count])
            assert [m.version for m in await migrate(stepwise)] == [everything[count - 1].version]
        monkeypatch.undo()
        await migrate(fresh)
        assert await schema_of(stepwise) == await schema_of(fresh)
    finally:
        await stepwise.close()
        await fresh.close()
