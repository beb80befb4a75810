"""Real PostgreSQL and Redis for every test.

A session-scoped template database has the migrations applied; each test that asks for
`db_url` gets a database of its own copied from it, so even code that commits is isolated.
Copies are reused: after a test its database is emptied (tables truncated, sequences reset,
leftover connections closed) and handed to a later test, unless the test changed its schema,
in which case it is dropped. Creating and dropping a database cost about 0.5 s per test here
(PostgreSQL syncs the new files to disk); emptying one costs a few tens of milliseconds.
Redis: the session claims a free db number (1-15) for itself and flushes it before and after.
"""

from __future__ import annotations

import os
import uuid

import asyncpg
import pytest
from redis.asyncio import Redis

from stripeline.settings import DEFAULT_SCHEMA, Settings
from stripeline.store.db import connect, create_pool
from stripeline.store.migrate import migrate
from stripeline.store.queue import redis_pool
from tests import registries, services

API_TOKEN = "test-api-token"
WEBHOOK_SECRET = "whsec_test_secret"
SECOND_SECRET = "whsec_rotated_secret"


@pytest.fixture(scope="session")
def service_urls():
    """(postgres admin URL, redis base URL): this machine's servers, or embedded ones."""
    with services.running() as urls:
        yield urls


@pytest.fixture(scope="session")
async def template_db(service_urls):
    admin_url, _ = service_urls
    name = f"stripeline_tpl_{os.getpid()}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    await admin.execute(f'CREATE DATABASE "{name}"')
    conn = await connect(services.with_database(admin_url, name))
    await migrate(conn)
    await conn.close()
    yield name
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


# What a test may change beyond rows: relations and their columns, functions, triggers,
# types, database settings and the applied migrations. A copy whose fingerprint differs from
# the template's is dropped rather than reused.
SCHEMA_FINGERPRINT = """
SELECT md5(coalesce(string_agg(item, ',' ORDER BY item), '')) FROM (
    SELECT n.nspname || '.' || c.relname || ':' || c.relkind::text || ':' || coalesce(a.attname, '')
           || ':' || coalesce(a.atttypid::text, '') AS item
    FROM pg_class AS c
    JOIN pg_namespace AS n ON n.oid = c.relnamespace
    LEFT JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
    UNION ALL
    SELECT 'function ' || p.oid::regprocedure::text FROM pg_proc AS p
    JOIN pg_namespace AS n ON n.oid = p.pronamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
    UNION ALL
    SELECT 'trigger ' || tgname FROM pg_trigger WHERE NOT tgisinternal
    UNION ALL
    SELECT 'type ' || t.typname FROM pg_type AS t
    JOIN pg_namespace AS n ON n.oid = t.typnamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
    UNION ALL
    SELECT 'setting ' || array_to_string(setconfig, ' ') FROM pg_db_role_setting
    WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
    UNION ALL
    SELECT 'migration ' || version::text FROM {schema}.schema_migrations
) AS schema
""".format(schema=DEFAULT_SCHEMA)
CLOSE_OTHER_CONNECTIONS = """
SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
"""
# The admin connection has no search_path of ours: names come qualified with stripeline's schema.
USER_TABLES = """
SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables
WHERE schemaname = $1 AND tablename <> 'schema_migrations'
"""
SEQUENCES = "SELECT quote_ident(schemaname) || '.' || quote_ident(sequencename) FROM pg_sequences WHERE schemaname = $1"


class TestDatabases:
    """Copies of the template, handed to one test at a time and emptied in between."""

    def __init__(self, admin: asyncpg.Connection, admin_url: str, template: str, fingerprint: str) -> None:
        self.admin = admin
        self.admin_url = admin_url
        self.template = template
        self.fingerprint = fingerprint
        self.free: list[str] = []
        self.made: set[str] = set()

    async def take(self) -> str:
        if self.free:
            return self.free.pop()
        name = f"stripeline_t_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        await self.admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        self.made.add(name)
        return name

    async def give_back(self, name: str) -> None:
        try:
            conn = await asyncpg.connect(services.with_database(self.admin_url, name))
            try:
                if await self._empty(conn):
                    self.free.append(name)
                    return
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            pass  # dropped below
        await self.drop(name)

    async def drop(self, name: str) -> None:
        await self.admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.made.discard(name)

    async def _empty(self, conn: asyncpg.Connection) -> bool:
        """Empty the database as the template left it; False when the test changed its schema."""
        await conn.execute(CLOSE_OTHER_CONNECTIONS)
        if await conn.fetchval(SCHEMA_FINGERPRINT) != self.fingerprint:
            return False
        tables = [row[0] for row in await conn.fetch(USER_TABLES, DEFAULT_SCHEMA)]
        filled = await conn.fetchval(
            "SELECT array_remove(ARRAY[" + ", ".join(
                f"CASE WHEN EXISTS (SELECT FROM {t}) THEN '{t}' END" for t in tables
            ) + "], NULL)"
        )
        if filled:
            await conn.execute(f"TRUNCATE {', '.join(filled)} RESTART IDENTITY CASCADE")
        for sequence in [row[0] for row in await conn.fetch(SEQUENCES, DEFAULT_SCHEMA)]:
            await conn.execute(f"ALTER SEQUENCE {sequence} RESTART")
        return True


@pytest.fixture(scope="session")
async def test_databases(service_urls, template_db):
    admin_url, _ = service_urls
    admin = await asyncpg.connect(admin_url)
    probe = await asyncpg.connect(services.with_database(admin_url, template_db))
    fingerprint = await probe.fetchval(SCHEMA_FINGERPRINT)
    await probe.close()
    databases = TestDatabases(admin, admin_url, template_db, fingerprint)
    yield databases
    for name in sorted(databases.made):
        await databases.drop(name)
    await admin.close()


@pytest.fixture
async def db_url(test_databases):
    name = await test_databases.take()
    yield services.with_database(test_databases.admin_url, name)
    await test_databases.give_back(name)


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
        return services.with_database(admin_url, name)

    yield create
    for name in names:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture(scope="session")
async def redis_url(service_urls):
    _, base = service_urls
    claimer = Redis.from_url(f"{base}/0")
    token = f"{os.getpid()}-{uuid.uuid4().hex}"
    number = None
    for candidate in range(1, 16):
        if await claimer.set(f"stripeline:test-db:{candidate}", token, nx=True, ex=3600):
            number = candidate
            break
    if number is None:
        pytest.fail("no free Redis db number (1-15) for this test session")
    url = f"{base}/{number}"
    own = Redis.from_url(url)
    await own.flushdb()
    yield url
    await own.flushdb()
    await own.aclose()
    await claimer.delete(f"stripeline:test-db:{number}")
    await claimer.aclose()


@pytest.fixture
async def redis(redis_url):
    client = redis_pool(redis_url)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture
def settings(db_url, redis_url) -> Settings:
    return Settings(
        database_url=db_url,
        redis_url=redis_url,
        webhook_secrets=(WEBHOOK_SECRET, SECOND_SECRET),
        api_token=API_TOKEN,
        queue_name=f"stripeline:test:{uuid.uuid4().hex[:8]}",
        retry_base_seconds=0,
        max_attempts=3,
    )


@pytest.fixture
def registry():
    """The product's handlers, refreshers and deletion policy (tests/registries.py builds others)."""
    return registries.product()


@pytest.fixture
async def pool(settings):
    pool = await create_pool(settings.database_url, max_size=8)
    yield pool
    await pool.close()


@pytest.fixture
async def conn(pool):
    async with pool.acquire() as conn:
        yield conn


@pytest.fixture
async def app(settings, pool, redis):
    from stripeline.http.web import create_app

    app = create_app(settings, pool=pool, redis=redis)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(app):
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://stripeline.test") as client:
        client.headers["authorization"] = f"Bearer {API_TOKEN}"
        yield client
