"""Real PostgreSQL and Redis for every test.

A session-scoped template database has the migrations applied; each test that asks for `db`
gets its own database copied from it, so even code that commits is isolated. Redis: the
session claims a free db number (1-15) for itself and flushes it before and after.
"""

from __future__ import annotations

import os
import uuid

import asyncpg
import pytest
from redis.asyncio import Redis

from app.db import connect, create_pool
from app.migrate import migrate
from app.queue import redis_pool
from app.settings import Settings
from tests import services

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


@pytest.fixture
async def db_url(service_urls, template_db):
    admin_url, _ = service_urls
    name = f"stripeline_t_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield services.with_database(admin_url, name)
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
    from app.web import create_app

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
