"""Migrations: applied once each, in order, safe twice and from two processes at once."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from stripeline.store import migrate as migrations
from stripeline.store.db import connect
from stripeline.store.migrate import load_migrations, migrate

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


async def test_migrations_are_numbered_in_order_without_repeats():
    # Numbers are reserved per branch, so a gap may stay where a branch needed none.
    versions = [m.version for m in load_migrations()]
    assert versions == sorted(set(versions)) and versions[0] == 1


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
    everything = load_migrations()
    stepwise = await connect(await fresh_databases())
    fresh = await connect(await fresh_databases())
    try:
        for count in range(1, len(everything) + 1):
            # An older release knew only the first `count` migrations.
            monkeypatch.setattr(migrations, "load_migrations", lambda count=count: everything[:count])
            assert [m.version for m in await migrate(stepwise)] == [everything[count - 1].version]
        monkeypatch.undo()
        await migrate(fresh)
        assert await schema_of(stepwise) == await schema_of(fresh)
    finally:
        await stepwise.close()
        await fresh.close()


# --- its own schema, beside another application ---------------------------------------------

RAILS_TABLES = """
CREATE TABLE public.schema_migrations (version character varying PRIMARY KEY);
INSERT INTO public.schema_migrations VALUES ('20240101000000'), ('20240202000000');
CREATE TABLE public.ar_internal_metadata (key character varying PRIMARY KEY, value character varying);
CREATE TABLE public.customers (id bigserial PRIMARY KEY, email text NOT NULL, created_at timestamptz DEFAULT now());
CREATE INDEX index_customers_on_email ON public.customers (email);
INSERT INTO public.customers (email) VALUES ('ada@example.com'), ('grace@example.com');
CREATE TABLE public.invoices (id bigserial PRIMARY KEY, customer_id bigint REFERENCES public.customers (id));
CREATE FUNCTION public.count_inserted_events() RETURNS integer LANGUAGE sql AS 'SELECT 42';
"""
# Everything in `public`: its objects' definitions and its rows, as text.
PUBLIC_SNAPSHOT = """
SELECT (SELECT array_agg(c.relname || ':' || c.relkind::text ORDER BY c.relname) FROM pg_class AS c
        WHERE c.relnamespace = 'public'::regnamespace),
       (SELECT array_agg(indexdef ORDER BY indexname) FROM pg_indexes WHERE schemaname = 'public'),
       (SELECT array_agg(p.oid::regprocedure::text) FROM pg_proc AS p WHERE p.pronamespace = 'public'::regnamespace),
       (SELECT array_agg(version ORDER BY version) FROM public.schema_migrations),
       (SELECT array_agg(id || email ORDER BY id) FROM public.customers)
"""
OUR_TABLES_IN = "SELECT array_agg(tablename::text ORDER BY tablename) FROM pg_tables WHERE schemaname = $1"


async def test_another_applications_public_tables_survive_stripeline_migrate_untouched(fresh_databases, tmp_path):
    from tests.app.test_cli import stripeline

    url = await fresh_databases()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(RAILS_TABLES)
        before = await conn.fetchrow(PUBLIC_SNAPSHOT)
        done = stripeline("migrate", env={"DATABASE_URL": url}, cwd=str(tmp_path))
        again = stripeline("migrate", env={"DATABASE_URL": url}, cwd=str(tmp_path))
        assert done.returncode == 0 and again.returncode == 0, done.stderr + again.stderr
        assert await conn.fetchrow(PUBLIC_SNAPSHOT) == before
        ours = await conn.fetchval(OUR_TABLES_IN, "stripeline")
        assert {"schema_migrations", "customers", "invoices", "stripe_events"} <= set(ours)
        assert await conn.fetchval("SELECT count(*) FROM stripeline.schema_migrations") == len(load_migrations())
    finally:
        await conn.close()


async def test_an_install_in_public_moves_into_the_schema_with_its_data_and_ends_as_a_fresh_install(
    fresh_databases, monkeypatch
):
    from stripeline.model.events import event_from_payload
    from stripeline.store.event_log import insert_events
    from tests.factories import customer_object, event

    everything = load_migrations()
    url = await fresh_databases()
    old = await connect(url, schema="public")
    fresh = await connect(await fresh_databases())
    try:
        # A release before the schema setting, knowing the first four migrations, beside another app.
        await old.execute("CREATE TABLE public.orders (id bigserial PRIMARY KEY, total bigint)")
        await old.execute("INSERT INTO public.orders (total) VALUES (1200)")
        monkeypatch.setattr(migrations, "load_migrations", lambda: everything[:4])
        await migrate(old, "public")
        stored = event_from_payload(event("customer.created", customer_object()))
        await insert_events(old, [stored])
        monkeypatch.undo()

        upgraded = await connect(url)
        try:
            applied = await migrate(upgraded)
            assert [m.version for m in applied] == [m.version for m in everything[4:]]
            assert await upgraded.fetchval("SELECT id FROM stripe_events") == stored.id
            # The event count triggers (migration 6) work on the moved table.
            await insert_events(upgraded, [event_from_payload(event("customer.created", customer_object()))])
            assert await upgraded.fetchval("SELECT sum(n) FROM stripe_event_counts") == 2
            await migrate(fresh)
            assert await schema_of(upgraded) == await schema_of(fresh)
            assert await upgraded.fetchval(OUR_TABLES_IN, "public") == ["orders"]
            assert await upgraded.fetchval("SELECT total FROM public.orders") == 1200
        finally:
            await upgraded.close()
    finally:
        await old.close()
        await fresh.close()


async def test_a_schema_holding_another_applications_migrations_table_is_refused(fresh_databases):
    from stripeline.store.migrate import MigrationError

    conn = await connect(await fresh_databases(), schema="public")
    try:
        await conn.execute(RAILS_TABLES)
        with pytest.raises(MigrationError, match="another application's schema_migrations"):
            await migrate(conn, "public")
        assert await conn.fetchval("SELECT count(*) FROM pg_tables WHERE tablename = 'stripe_events'") == 0
    finally:
        await conn.close()


async def test_a_pooled_connection_is_back_in_the_schema_whatever_the_last_user_set(db_url):
    from stripeline.store.db import create_pool

    pool = await create_pool(db_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute("SET search_path TO public")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT current_schema()") == "stripeline"
            assert await conn.fetchval("SELECT count(*) FROM stripe_events") == 0
    finally:
        await pool.close()


async def test_payloads_stored_as_jsonb_read_back_the_same_after_0013_stores_them_as_json(fresh_databases, monkeypatch):
    everything = load_migrations()
    before = [m for m in everything if m.version < 13]
    conn = await connect(await fresh_databases())
    try:
        monkeypatch.setattr(migrations, "load_migrations", lambda: before)
        await migrate(conn)
        payload = {"id": "evt_1", "object": "event", "data": {"object": {"id": "cus_1", "name": "Zoë", "n": 1.5}}}
        await conn.execute(
            "INSERT INTO stripe_events (id, type, created, payload) VALUES ('evt_1', 'customer.updated', now(), $1)",
            payload,
        )
        monkeypatch.undo()
        assert [m.version for m in await migrate(conn)][0] == 13
        assert await conn.fetchval("SELECT pg_typeof(payload)::text FROM stripe_events") == "json"
        assert await conn.fetchval("SELECT payload FROM stripe_events WHERE id = 'evt_1'") == payload
        assert await conn.fetchval("SELECT payload #>> '{data,object,name}' FROM stripe_events") == "Zoë"
    finally:
        await conn.close()
