"""What the event store accepts: a signed event that could not be stored, shown or processed is refused."""

from __future__ import annotations

import json

import orjson
import pytest

from stripeline.http.responses import JSONResponse
from stripeline.model.events import MAX_DEPTH, InvalidEvent, parse_event
from stripeline.store.event_log import insert_events
from tests.factories import body_of, event, ping_event


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
