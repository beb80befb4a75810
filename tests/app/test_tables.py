"""The catalogue of tables by role (app/model/tables.py) against the schema the migrations build."""

from __future__ import annotations

from stripeline.model import tables

COLUMNS = """
SELECT table_name, column_name FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name IN (
    SELECT tablename FROM pg_tables WHERE schemaname = current_schema())
"""


async def _columns(conn) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for row in await conn.fetch(COLUMNS):
        found.setdefault(row["table_name"], set()).add(row["column_name"])
    return found


async def test_every_table_of_the_schema_has_a_role(conn):
    assert set(await _columns(conn)) == {t.name for t in tables.TABLES} | {tables.MIGRATIONS_TABLE}


async def test_a_rebuild_wipes_every_table_that_keeps_the_version_of_the_event_that_wrote_it(conn):
    versioned = {name for name, columns in (await _columns(conn)).items() if "event_created" in columns}
    assert versioned == set(tables.STRIPE_DERIVED) - {"subscription_items"}  # items go with their subscription


async def test_every_table_naming_a_customer_is_purged_with_it_but_the_log_and_the_tombstones(conn):
    naming = {name for name, columns in (await _columns(conn)).items() if "customer_id" in columns}
    assert naming - set(tables.OWNED_BY_CUSTOMER) == {"stripe_events", "customer_tombstones"}


async def test_the_catalogue_names_only_columns_that_exist(conn):
    columns = await _columns(conn)
    for table in tables.TABLES:
        for column in filter(None, [table.customer_column, *(link[0] for link in (table.parent, table.also_parent) if link)]):
            assert column in columns[table.name], (table.name, column)
