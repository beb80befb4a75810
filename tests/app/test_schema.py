"""sql/schema.sql is the whole schema after every migration, as pg_dump writes it (normalised).

A reviewer reads the schema in one file; this test keeps that file true. After adding a
migration, rewrite it with:

    STRIPELINE_WRITE_SCHEMA=1 .venv/bin/python -m pytest tests/app/test_schema.py
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import asyncpg
import pytest

from stripeline.settings import DEFAULT_SCHEMA
from stripeline.store.db import connect
from stripeline.store.migrate import migrate

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "sql" / "schema.sql"
HEADER = """-- The schema after every migration in sql/, as `pg_dump --schema-only` writes it for the
-- default STRIPELINE_SCHEMA (comments, SET lines and ownership left out). Generated, never edited:
-- tests/app/test_schema.py checks it and says how to rewrite it after adding a migration.
"""


def normalised(dump: str) -> str:
    """The statements of a dump, without its comments, settings and blank runs."""
    kept = []
    for line in dump.splitlines():
        if line.startswith(("--", "SET ", "SELECT pg_catalog.set_config")) or line.startswith("\\"):
            continue
        kept.append(line.rstrip())
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()
    return HEADER + "\n" + text + "\n"


# The one line of the schema that depends on how the server was built (sql/0013).
LZ4_LINE = "ALTER TABLE ONLY stripeline.stripe_events ALTER COLUMN payload SET COMPRESSION lz4;\n"


async def server_has_lz4(conn) -> bool:
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL default_toast_compression = 'lz4'")
    except asyncpg.PostgresError:
        return False
    return True


@pytest.mark.skipif(shutil.which("pg_dump") is None, reason="needs pg_dump (PostgreSQL's client tools)")
async def test_the_migrations_build_exactly_the_committed_schema(fresh_databases):
    url = await fresh_databases()
    conn = await connect(url)
    try:
        await migrate(conn)
        has_lz4 = await server_has_lz4(conn)
    finally:
        await conn.close()
    dumped = subprocess.run(
        ["pg_dump", "--schema-only", "--no-owner", "--no-privileges", "--schema", DEFAULT_SCHEMA, url],
        capture_output=True, text=True, check=True,
    ).stdout
    schema = normalised(dumped)
    if os.environ.get("STRIPELINE_WRITE_SCHEMA") == "1":
        SCHEMA_FILE.write_text(schema)
    expected = SCHEMA_FILE.read_text()
    if not has_lz4:  # sql/0013 keeps the default compression there (e.g. the embedded PostgreSQL)
        expected = expected.replace(LZ4_LINE, "")
    assert schema == expected, (
        "the migrations no longer build sql/schema.sql: rewrite it with "
        "STRIPELINE_WRITE_SCHEMA=1 .venv/bin/python -m pytest tests/app/test_schema.py"
    )
