"""sql/0014: the strings of customer-less stored events (`mentions`), indexed for a deletion's
search of the events that name the customer indirectly."""

from __future__ import annotations

from datetime import datetime, timezone

import orjson
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from stripeline.handlers.deletion import MENTIONING_EVENTS
from stripeline.model.events import event_from_payload
from stripeline.store.event_log import insert_events
from tests.factories import event, new_id

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# The candidates the index hands over for a customer ($1), its charges ($2) and payment intents ($3).
CANDIDATES = """
SELECT id FROM stripe_events
WHERE customer_id IS NULL AND mentions ?| (ARRAY[$1::text] || $2::text[] || $3::text[])
"""


def dispute(charge: str, email: str) -> dict:
    return {"id": new_id("dp"), "object": "dispute", "amount": 7500, "charge": charge,
            "evidence": {"customer_email_address": email, "notes": [["deep", {"again": email}]]},
            "metadata": {}, "status": "needs_response"}


async def stored(conn, *payloads) -> None:
    await insert_events(conn, [event_from_payload(p) for p in payloads])


async def mentions_of(conn, event_id: str):
    value = await conn.fetchval("SELECT mentions::text FROM stripe_events WHERE id = $1", event_id)
    return None if value is None else orjson.loads(value)


async def test_a_customerless_event_keeps_every_string_of_its_payload_and_a_customers_event_none(conn):
    customer = new_id("cus")
    opened = event("charge.dispute.created", dispute("ch_1", "ann@example.com"))
    updated = event("customer.updated", {"id": customer, "object": "customer", "email": "ann@example.com"})
    await stored(conn, opened, updated)

    strings = await mentions_of(conn, opened["id"])
    assert {"ch_1", "ann@example.com", "deep", "dispute", opened["id"], "charge.dispute.created"} <= set(strings)
    assert 7500 not in strings and "amount" not in strings  # values only, and only strings
    assert await mentions_of(conn, updated["id"]) is None  # found by its customer_id


async def test_the_mentions_follow_a_scrubbed_payload(conn):
    opened = event("charge.dispute.created", dispute("ch_2", "bob@example.com"))
    await stored(conn, opened)
    scrubbed = {**opened, "data": {"object": {**opened["data"]["object"], "evidence": None}}}

    # As the deletion's scrub writes a payload back (UPDATE_PAYLOADS).
    await conn.execute("UPDATE stripe_events SET payload = $2::text::jsonb WHERE id = $1", opened["id"],
                       orjson.dumps(scrubbed).decode())

    assert "bob@example.com" not in await mentions_of(conn, opened["id"])
    assert await conn.fetchval("SELECT status FROM stripe_events WHERE id = $1", opened["id"]) == "pending"


async def test_the_search_of_mentions_can_use_the_index(conn):
    await conn.execute("SET plan_cache_mode = force_generic_plan")  # asyncpg's prepared statements end up there
    try:
        await conn.execute("PREPARE candidates(text, text[], text[]) AS " + CANDIDATES)
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN EXECUTE candidates('cus_1', '{}', '{}')"))
    finally:
        await conn.execute("DEALLOCATE ALL")
        await conn.execute("RESET plan_cache_mode")
    assert "stripe_events_mentions_idx" in plan


# Strings that may be an id, and payload shapes at any depth, holding them anywhere.
TEXT = st.text(st.characters(blacklist_characters="\x00"), max_size=4)  # PostgreSQL cannot store U+0000
IDS = st.sampled_from(["cus_A", "cus_B", "ch_A", "ch_B", "pi_A", "cus_A ", "CUS_A", "é_ü", "a\"b", "x\\y"])
LEAVES = st.one_of(IDS, st.integers(-5, 5), st.booleans(), st.none(), TEXT)
TREES = st.recursive(LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                     st.dictionaries(st.one_of(IDS, TEXT), inner,
                                                                     max_size=3)),
                     max_leaves=12)


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(objects=st.lists(st.tuples(TREES, st.one_of(st.none(), IDS), st.one_of(st.none(), IDS)), min_size=1,
                        max_size=6))
async def test_what_the_search_of_mentions_finds_is_among_the_candidates_the_index_gives(conn, objects):
    # Fresh events per example (the database is shared by the examples); each names no
    # customer of its own, and holds ids anywhere, as charge / payment_intent or not.
    payloads = []
    for tree, charge, intent in objects:
        obj = {"id": new_id("dp"), "object": "dispute", "extra": tree}
        if charge is not None:
            obj["charge"] = charge
        if intent is not None:
            obj["payment_intent"] = intent
        payloads.append(event("charge.dispute.updated", obj))
    await stored(conn, *payloads)
    ours = [p["id"] for p in payloads]
    for customer, charges, intents in [("cus_A", [], []), ("cus_B", ["ch_A"], ["pi_A"]), ("a\"b", ["x\\y"], []),
                                       ("é_ü", ["ch_B", "cus_A "], ["pi_A", "CUS_A"])]:
        async with conn.transaction():
            found = {r["id"] for r in await conn.fetch(MENTIONING_EVENTS, customer, EPOCH, charges, intents)}
        candidates = {r["id"] for r in await conn.fetch(CANDIDATES, customer, charges, intents)}
        assert found & set(ours) <= candidates, (customer, charges, intents)
