"""PostgreSQL connections: one pool per process, opened at start and passed down."""

from __future__ import annotations

import asyncpg
import orjson


def _encode_json(value) -> str:
    return orjson.dumps(value).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb in and out as Python objects, with orjson (the payloads are large and many).
    await conn.set_type_codec("jsonb", schema="pg_catalog", encoder=_encode_json, decoder=orjson.loads)
    await conn.set_type_codec("json", schema="pg_catalog", encoder=_encode_json, decoder=orjson.loads)


async def create_pool(database_url: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        # A short timeout so that a database that is down answers 503 quickly.
        timeout=5,
        command_timeout=60,
    )


async def connect(database_url: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(database_url, timeout=5)
    await _init_connection(conn)
    return conn
