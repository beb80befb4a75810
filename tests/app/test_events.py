"""What the event store accepts: a signed event that could not be stored, shown or processed is refused."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stripeline.http.responses import JSONResponse
from stripeline.model.events import (
    MAX_DEPTH,
    MAX_EMAIL_LENGTH,
    MAX_ID_LENGTH,
    REFERENCE_KEYS,
    InvalidEvent,
    event_from_payload,
    parse_event,
)
from stripeline.store.event_log import insert_events
from tests.factories import body_of, event, ping_event
from tests.simulation import generate


def nested(depth: int) -> dict:
    value: dict = {"leaf": True}
    for _ in range(depth):
        value = {"inner": value}
    return value


def customer_event(**fields) -> dict:
    return event("customer.updated", {"id": "cus_events1", "object": "customer", **fields})


@pytest.mark.parametrize(
    "payload, reason",
    [
        (event("customer.updated", {"id": "cus_" + "x" * 3000, "object": "customer"}), "'id' is longer than 255"),
        (event("invoice.paid", {"id": "in_1", "object": "invoice", "customer": "cus_" + "x" * 3000}), "'customer'"),
        (event("invoice.paid", {"id": "in_1", "object": "invoice", "customer": {"id": "c" * 300}}), "'id'"),
        (customer_event(email="a" * 600 + "@example.com"), "'email' is longer than 512"),
        (event("customer.updated", {"id": "cus_1", "object": "c" * 300}), "data.object.object"),
        ({**ping_event(), "api_version": "v" * 300}, "api_version"),
        (customer_event(metadata=nested(300)), "nested more than 64 levels"),
    ],
)
def test_event_with_a_value_no_stripe_event_holds_is_refused_with_the_reason(payload, reason):
    with pytest.raises(InvalidEvent, match=reason):
        parse_event(json.dumps(payload).encode())  # the standard library writes any depth


def test_event_as_deep_as_the_limit_is_accepted():
    # The event itself is 3 levels (event, data, object) above the nested metadata.
    payload = customer_event(metadata=nested(MAX_DEPTH - 5))
    assert parse_event(body_of(payload)).id == payload["id"]


def test_long_free_text_in_metadata_is_not_mistaken_for_an_id():
    payload = customer_event(metadata={"customer": "y" * 500, "id": "z" * 500})
    assert parse_event(body_of(payload)).customer_id == "cus_events1"


def _refusal(value, depth=1, references=True):
    """What the event checks refuse, walked the plain way: a reason, or whether a float is in it."""
    if depth > MAX_DEPTH:
        return "nested"
    floats = False
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        if isinstance(item, str):
            if references and len(item) > MAX_ID_LENGTH and key in REFERENCE_KEYS:
                return "id"
            if key == "email" and len(item) > MAX_EMAIL_LENGTH:
                return "email"
        elif isinstance(item, (dict, list)):
            inner = _refusal(item, depth + 1, references and key != "metadata")
            if isinstance(inner, str):
                return inner
            floats |= inner
        elif isinstance(item, float):
            floats = True
    return floats


class _Built(dict):
    """A payload built by code (a backfill's object, a library's dict subclass)."""


class _Text(str):
    pass


_KEYS = st.sampled_from(["id", "customer", "email", "metadata", "name", "price", "lines", "data"])
_TEXT = st.one_of(st.text(max_size=3), st.integers(250, 600).map(lambda n: "x" * n))
_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), _TEXT,
                    _TEXT.map(_Text))
_TREES = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_KEYS, inner, max_size=4),
                            st.dictionaries(_KEYS, inner, max_size=3).map(_Built)),
    max_leaves=30,
)


@settings(max_examples=300)
@given(tree=_TREES, depth=st.integers(0, MAX_DEPTH + 2))
def test_the_event_checks_refuse_exactly_what_a_plain_walk_of_every_value_refuses(tree, depth):
    # The checks run on every webhook body and imported event, written for speed; the plain
    # walk says what they must decide, for parsed JSON and for payloads built by code.
    for _ in range(depth):
        tree = {"inner": tree}
    payload = event("customer.updated", {"id": "cus_1", "object": "customer", "metadata": {}, "tree": tree})
    expected = _refusal(payload)
    raw = b"{}"
    if isinstance(expected, str):
        with pytest.raises(InvalidEvent, match={"nested": "nested", "id": "longer than", "email": "email"}[expected]):
            event_from_payload(payload, raw)
    else:
        # A float means the raw text is not stored as is (orjson writes it again).
        assert (event_from_payload(payload, raw).raw is None) == expected


async def test_numbers_postgresql_would_refuse_are_stored_as_orjson_writes_them(conn):
    # 1e-20000 is valid JSON that PostgreSQL's numeric cannot hold; orjson reads it as 0.0.
    body = body_of(ping_event()).replace(b'"available":[]', b'"available":[1e-20000,1.5,18446744073709551616]')
    record = parse_event(body)
    assert record.raw is None  # re-encoded, not the raw text
    assert await insert_events(conn, [record]) == {record.id}
    stored = await conn.fetchval("SELECT payload FROM stripe_events WHERE id = $1", record.id)
    assert stored["data"]["object"]["available"][:2] == [0.0, 1.5]


async def test_stored_event_nested_deeper_than_orjson_writes_can_still_be_answered(conn):
    # Stored before ingest refused such depth: the API must still answer it, not fail.
    payload = customer_event(metadata=nested(300))
    await conn.execute(
        "INSERT INTO stripe_events (id, type, created, payload) VALUES ($1, 'customer.updated', now(), $2::text::jsonb)",
        payload["id"],
        json.dumps(payload),  # orjson will not write it
    )
    stored = await conn.fetchval("SELECT payload FROM stripe_events WHERE id = $1", payload["id"])
    rendered = JSONResponse({"payload": stored}).body
    assert orjson.loads(rendered)["payload"]["id"] == payload["id"]


async def test_a_large_batch_is_stored_whole_or_not_at_all_and_without_temporary_files(conn):
    # An import stores 1,000 real-sized events at a time (here 1,400 simulated ones): more text than one statement
    # keeps in PostgreSQL's memory (work_mem), so they go in several statements, one transaction.
    payloads = generate(seed=7, actions=2000).events[:1400]
    records = [parse_event(orjson.dumps(p)) for p in payloads]
    assert sum(len(r.raw) for r in records) > 4_000_000  # work_mem's default, and more
    before = await conn.fetchval(TEMP_FILES)

    assert await insert_events(conn, records) == {r.id for r in records}

    await asyncio.sleep(1.5)  # statistics reach pg_stat_database within a second of the statement
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    assert await conn.fetchval(TEMP_FILES) == before
    # One the log refuses (a lone surrogate goes through jsonb) in the last statement: none stored.
    await conn.execute("TRUNCATE stripe_events")
    lone = customer_event(name="x")
    refused = event_from_payload(lone, raw=body_of(lone).replace(b'"name":"x"', b'"name":"\\ud800"'))
    with pytest.raises(asyncpg.PostgresError):
        await insert_events(conn, [*records, refused])
    assert await conn.fetchval("SELECT count(*) FROM stripe_events") == 0


TEMP_FILES = "SELECT temp_files FROM pg_stat_database WHERE datname = current_database()"
