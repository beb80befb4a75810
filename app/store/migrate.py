"""Forward-only SQL migrations from the `sql` package, applied in order under an advisory lock.

Everything lives in one schema (STRIPELINE_SCHEMA, default `stripeline`), the migrations table
`schema_migrations` included, so that stripeline can share a database with another application
(a Rails app has its own `public.schema_migrations` and often a `public.customers`).

Safe to run twice and from several processes at once: the lock serialises runners and
`schema_migrations` records what is applied, each migration in its own transaction.

Releases before the schema setting kept their tables in `public`. The first migrate of a newer
release moves exactly the objects those recorded migrations created, in one transaction, and
touches nothing else there.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from importlib import resources

import asyncpg

from stripeline.logging import log
from stripeline.settings import DEFAULT_SCHEMA, valid_schema

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
USE_SCHEMA = "SELECT set_config('search_path', $1, false)"
SCHEMA_EXISTS = "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)"
# The columns of a schema's `schema_migrations`, if it has one: ours are
# version integer, name text, applied_at timestamptz; Rails' is a single `version` varchar.
MIGRATIONS_TABLE_SHAPE = """
SELECT array_agg(a.attname::text || ' ' || format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum)
FROM pg_attribute AS a
JOIN pg_class AS c ON c.oid = a.attrelid
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname = 'schema_migrations' AND c.relkind = 'r'
  AND a.attnum > 0 AND NOT a.attisdropped
"""
OUR_SHAPE = ["version integer", "name text", "applied_at timestamp with time zone"]
APPLIED_IN_PUBLIC = "SELECT version FROM public.schema_migrations"
# What of a set of names exists in `public`, and how to address it in ALTER ... SET SCHEMA.
PUBLIC_OBJECTS = """
SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE'
                      ELSE 'TABLE' END AS kind,
       quote_ident(c.relname) AS target
FROM pg_class AS c
WHERE c.relnamespace = 'public'::regnamespace AND c.relname = ANY($1::text[])
  AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
  -- A sequence of a serial column moves with its table.
  AND NOT (c.relkind = 'S' AND EXISTS (SELECT FROM pg_depend AS d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i')))
UNION ALL
SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END,
       quote_ident(p.proname) || '(' || pg_get_function_identity_arguments(p.oid) || ')'
FROM pg_proc AS p
WHERE p.pronamespace = 'public'::regnamespace AND p.proname = ANY($1::text[])
UNION ALL
SELECT CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, quote_ident(t.typname)
FROM pg_type AS t
WHERE t.typnamespace = 'public'::regnamespace AND t.typname = ANY($1::text[]) AND t.typtype IN ('e', 'd', 'r', 'c')
  AND (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
ORDER BY 1, 2
"""

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# The objects a migration creates, by name (tables, functions, types, views, sequences).
_CREATED = re.compile(
    r"^\s*CREATE\s+(?:OR\s+REPLACE\s+)?(?:UNLOGGED\s+)?"
    r"(?:TABLE|FUNCTION|PROCEDURE|VIEW|MATERIALIZED\s+VIEW|SEQUENCE|TYPE|DOMAIN)\s+"
    r"(?:IF\s+NOT\s+EXISTS\s+)?(?:public\.)?\"?([a-z_][a-z0-9_]*)\"?",
    re.IGNORECASE | re.MULTILINE,
)


class MigrationError(Exception):
    """The database cannot be migrated as it is; the message says what to do."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    def created_names(self) -> set[str]:
        return {match.lower() for match in _CREATED.findall(self.sql)}


def load_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("stripeline.sql").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a number: {versions}")
    return found


def _quoted(schema: str) -> str:
    if not valid_schema(schema):
        raise MigrationError(f"not a schema name stripeline uses: {schema!r}")
    return f'"{schema}"'


async def migrate(conn: asyncpg.Connection, schema: str = DEFAULT_SCHEMA) -> list[Migration]:
    """Apply every migration not yet recorded in `schema`; return the ones applied by this call."""
    applied_now = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await _create_schema(conn, schema)
        await move_from_public(conn, schema)
        await conn.execute(USE_SCHEMA, schema)
        shape = await conn.fetchval(MIGRATIONS_TABLE_SHAPE, schema)
        if shape is not None and shape != OUR_SHAPE:
            raise MigrationError(
                f"schema {schema!r} already holds another application's schema_migrations table;"
                " set STRIPELINE_SCHEMA to a schema of stripeline's own (the default is 'stripeline')"
            )
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
                schema=schema,
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
            )
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return applied_now


async def _create_schema(conn: asyncpg.Connection, schema: str) -> None:
    # Look first: CREATE SCHEMA IF NOT EXISTS still needs CREATE on the database, which a
    # user given only a schema of its own (as some managed databases do) lacks.
    if await conn.fetchval(SCHEMA_EXISTS, schema):
        return
    try:
        await conn.execute(f"CREATE SCHEMA {_quoted(schema)}")
    except asyncpg.InsufficientPrivilegeError:
        raise MigrationError(
            f"the database user may not create the schema {schema!r}: create it once as an owner"
            f" (CREATE SCHEMA {schema} AUTHORIZATION <user>), or set STRIPELINE_SCHEMA to a schema it owns"
        ) from None
    log.info("schema_created", schema=schema)


async def move_from_public(conn: asyncpg.Connection, schema: str) -> list[str]:
    """Move an earlier install's objects from `public` into `schema`; return what moved.

    Only an install recorded in a `public.schema_migrations` of our shape counts, and only the
    objects its recorded migrations created move; a Rails `schema_migrations` and every other
    table in `public` stay where they are.
    """
    if schema == "public" or await conn.fetchval(MIGRATIONS_TABLE_SHAPE, "public") != OUR_SHAPE:
        return []
    if await conn.fetchval(MIGRATIONS_TABLE_SHAPE, schema) is not None:
        log.warning("earlier_install_left_in_public", schema=schema, reason="the schema already has its own install")
        return []
    recorded = {row["version"] for row in await conn.fetch(APPLIED_IN_PUBLIC)}
    names = set().union(*(m.created_names() for m in load_migrations() if m.version in recorded))
    started = time.perf_counter()
    moved = []
    async with conn.transaction():
        for row in await conn.fetch(PUBLIC_OBJECTS, sorted(names)):
            await conn.execute(f"ALTER {row['kind']} public.{row['target']} SET SCHEMA {_quoted(schema)}")
            moved.append(row["target"])
        await conn.execute(f"ALTER TABLE public.schema_migrations SET SCHEMA {_quoted(schema)}")
    log.info(
        "install_moved_from_public",
        schema=schema,
        objects=len(moved) + 1,
        duration_ms=round((time.perf_counter() - started) * 1000, 1),
    )
    return moved
