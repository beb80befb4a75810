"""PostgreSQL connections: one pool per process, opened at start and passed down.

Every connection works in stripeline's own schema (STRIPELINE_SCHEMA, default `stripeline`):
its search_path is that schema alone, so our unqualified table names can never reach another
application's tables in `public`. Each connection names its process in `application_name`,
so `pg_stat_activity` shows who holds the database's connections.
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlparse

import asyncpg
import orjson

from stripeline.settings import DEFAULT_POOL_SIZES, DEFAULT_SCHEMA, Settings

CONNECT_TIMEOUT_SECONDS = 5


class DatabaseUnreachable(OSError):
    """PostgreSQL did not answer at the address DATABASE_URL gives (down, wrong host or port)."""


def database_address(database_url: str) -> str:
    """host:port (or the socket directory) of a PostgreSQL URL, without its credentials."""
    parts = urlparse(database_url)
    query = parse_qs(parts.query)
    host = parts.hostname or (query.get("host") or [""])[-1] or "the local socket"
    try:
        port = parts.port or int((query.get("port") or ["5432"])[-1])
    except ValueError:
        port = 5432
    return host if host.startswith("/") or host == "the local socket" else f"{host}:{port}"


def _reason(error: BaseException) -> str:
    if isinstance(error, (asyncio.TimeoutError, TimeoutError)):
        return f"no answer within {CONNECT_TIMEOUT_SECONDS} s"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    return (getattr(error, "strerror", None) or str(error) or type(error).__name__).lower()


def _encode_json(value) -> str:
    return orjson.dumps(value).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb in and out as Python objects, with orjson (the payloads are large and many).
    await conn.set_type_codec("jsonb", schema="pg_catalog", encoder=_encode_json, decoder=orjson.loads)
    await conn.set_type_codec("json", schema="pg_catalog", encoder=_encode_json, decoder=orjson.loads)


def application_name(process: str) -> str:
    """What a process's connections are named in pg_stat_activity (`stripeline import`, ...)."""
    return f"stripeline {process}"


def _server_settings(schema: str, process: str) -> dict[str, str]:
    return {"search_path": schema, "application_name": application_name(process)}


async def _connect_naming_failures(database_url: str, **options) -> asyncpg.Connection:
    """asyncpg.connect, with a failure to reach the server named as PostgreSQL's, at its address."""
    try:
        return await asyncpg.connect(database_url, **options)
    except (OSError, asyncio.TimeoutError) as error:
        where = database_address(database_url)
        raise DatabaseUnreachable(f"cannot connect to PostgreSQL at {where}: {_reason(error)}") from error


async def create_pool(
    database_url: str,
    *,
    min_size: int = 1,
    max_size: int = DEFAULT_POOL_SIZES["command"],
    schema: str = DEFAULT_SCHEMA,
    process: str = "process",
) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        connect=_connect_naming_failures,
        server_settings=_server_settings(schema, process),
        # A short timeout so that a database that is down answers 503 quickly.
        timeout=CONNECT_TIMEOUT_SECONDS,
        command_timeout=60,
    )


async def open_pool(settings: Settings, process: str, *, min_size: int = 1, name: str | None = None,
                    max_size: int | None = None) -> asyncpg.Pool:
    """The pool of one `web`, `worker` or `command` process: STRIPELINE_DB_POOL_SIZE connections
    (or that kind's default) in STRIPELINE_SCHEMA. `name` (e.g. `replay`) labels its connections;
    `max_size`, fewer (a rebuild's lane process, its share of its command's connections)."""
    size = min(max_size or settings.pool_size(process), settings.pool_size(process))
    return await create_pool(
        settings.database_url,
        min_size=min(min_size, size),
        max_size=size,
        schema=settings.schema,
        process=name or process,
    )


async def connect(database_url: str, *, schema: str = DEFAULT_SCHEMA, process: str = "process") -> asyncpg.Connection:
    conn = await _connect_naming_failures(
        database_url, timeout=CONNECT_TIMEOUT_SECONDS, server_settings=_server_settings(schema, process)
    )
    await _init_connection(conn)
    return conn
