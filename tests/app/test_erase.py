"""`stripeline erase`: counts without --yes, deletes everything with it, keeps the schema."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys

from stripeline.commands.erase import count_rows, erase_command
from tests.personal_data import Person, deliver, seed_rows, stream


def run_cli(db_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": db_url, "LOG_FORMAT": "json"}
    return subprocess.run([sys.executable, "-m", "stripeline", "erase", *args], env=env, capture_output=True, text=True,
                          timeout=60)


async def fill(pool, conn, settings) -> None:
    person = Person()
    await seed_rows(conn, person)
    await deliver(pool, settings, stream(person))
    await conn.execute("INSERT INTO products (id, name) VALUES ('prod_erase', 'Pro')")
    await conn.execute("INSERT INTO prices (id, product_id, currency, unit_amount) VALUES ('price_erase', "
                       "'prod_erase', 'usd', 100)")



async def test_erase_without_yes_lists_counts_deletes_nothing_and_fails(pool, conn, settings, db_url):
    await fill(pool, conn, settings)
    before = await count_rows(conn)
    done = await asyncio.to_thread(run_cli, db_url)
    assert done.returncode != 0
    assert "would delete" in done.stdout
    assert re.search(rf"stripe_events\s+{before['stripe_events']}\n", done.stdout)
    assert "nothing deleted" in done.stderr and "--yes" in done.stderr
    assert await count_rows(conn) == before


async def test_erase_with_yes_empties_every_table_in_one_go(pool, conn, settings, db_url):
    await fill(pool, conn, settings)
    before = await count_rows(conn)
    assert all(before[name] > 0 for name in ("stripe_events", "customers", "customer_attributes", "customer_tags",
                                             "customer_tombstones", "outbox", "segment_history"))
    done = await asyncio.to_thread(run_cli, db_url, "--yes")
    assert done.returncode == 0, done.stderr
    summary = f"erased {sum(before.values())} rows from {len(before)} tables; the schema is kept"
    assert done.stdout.strip().splitlines()[-1] == summary
    assert set((await count_rows(conn)).values()) == {0}
    assert await conn.fetchval("SELECT count(*) FROM schema_migrations") > 0


async def test_erase_command_can_be_called_directly(pool, conn, settings):
    await fill(pool, conn, settings)
    args = argparse.Namespace(yes=True)
    assert await asyncio.to_thread(erase_command, args, settings) == 0
    assert set((await count_rows(conn)).values()) == {0}


async def test_erase_without_a_database_url_names_the_variable():
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "stripeline", "erase", "--yes"], env=env,
                                   capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "DATABASE_URL" in done.stderr
