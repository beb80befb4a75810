"""POST /webhooks/stripe: verify, store once, enqueue, answer."""

from __future__ import annotations

import time

import orjson

from tests.conftest import SECOND_SECRET, WEBHOOK_SECRET
from tests.factories import body_of, ping_event, signed

URL = "/webhooks/stripe"


async def stored_count(conn) -> int:
    return await conn.fetchval("SELECT count(*) FROM stripe_events")


async def test_signed_event_is_stored_and_acknowledged(client, conn):
    payload = ping_event()
    body, headers = signed(payload, WEBHOOK_SECRET)
    answer = await client.post(URL, content=body, headers=headers)
    assert answer.status_code == 200
    assert answer.json() == {"received": True, "duplicate": False}
    row = await conn.fetchrow("SELECT type, status, payload FROM stripe_events WHERE id = $1", payload["id"])
    assert row["type"] == "balance.available"
    assert row["status"] == "pending"
    assert row["payload"] == payload


async def test_every_rotated_secret_is_accepted(client, conn):
    for secret in (WEBHOOK_SECRET, SECOND_SECRET):
        body, headers = signed(ping_event(), secret)
        assert (await client.post(URL, content=body, headers=headers)).status_code == 200
    assert await stored_count(conn) == 2


async def test_header_with_several_signatures_matches_any(client, conn):
    body = body_of(ping_event())
    _, good = signed(body, WEBHOOK_SECRET)
    t, v1 = good["stripe-signature"].split(",")
    header = f"{t},v1={'0' * 64},{v1},v0=ignored"
    assert (await client.post(URL, content=body, headers={"stripe-signature": header})).status_code == 200


async def test_duplicate_delivery_is_stored_once(client, conn):
    payload = ping_event()
    body, headers = signed(payload, WEBHOOK_SECRET)
    first = await client.post(URL, content=body, headers=headers)
    second = await client.post(URL, content=body, headers=headers)
    assert first.json()["duplicate"] is False
    assert second.status_code == 200 and second.json()["duplicate"] is True
    assert await stored_count(conn) == 1


async def test_stale_and_future_timestamps_are_refused(client, conn):
    for offset in (-301, 301):
        body, headers = signed(ping_event(), WEBHOOK_SECRET, timestamp=int(time.time()) + offset)
        answer = await client.post(URL, content=body, headers=headers)
        assert answer.status_code == 400
        assert "tolerance" in answer.json()["error"]
    assert await stored_count(conn) == 0


async def test_missing_malformed_and_wrong_signatures_are_refused(client, conn):
    body, good = signed(ping_event(), WEBHOOK_SECRET)
    t = good["stripe-signature"].split(",")[0]
    cases = [
        {},
        {"stripe-signature": "garbage"},
        {"stripe-signature": "t=notanumber,v1=abc"},
        {"stripe-signature": t},
        {"stripe-signature": f"{t},v1={'0' * 64}"},
        signed(body, "whsec_someone_else")[1],
    ]
    for headers in cases:
        answer = await client.post(URL, content=body, headers=headers)
        assert answer.status_code == 400, headers
        assert answer.json()["error"]
    assert await stored_count(conn) == 0


async def test_tampered_or_reserialised_body_is_refused(client, conn):
    payload = ping_event()
    body, headers = signed(payload, WEBHOOK_SECRET)
    tampered = body.replace(b"balance.available", b"balance.availablX")
    reserialised = orjson.dumps(payload, option=orjson.OPT_INDENT_2)
    for candidate in (tampered, reserialised):
        assert (await client.post(URL, content=candidate, headers=headers)).status_code == 400
    assert await stored_count(conn) == 0


async def test_signed_body_that_is_not_a_stripe_event_is_refused(client, conn):
    for body in (b"not json", b"[]", b'{"id": "evt_1"}', b'{"object": "charge", "id": "ch_1"}'):
        body, headers = signed(body, WEBHOOK_SECRET)
        answer = await client.post(URL, content=body, headers=headers)
        assert answer.status_code == 400
        assert answer.json()["error"]
    assert await stored_count(conn) == 0


async def test_oversized_body_is_refused_with_413_and_nothing_stored(client, conn):
    payload = ping_event()
    payload["data"]["object"]["padding"] = "x" * (1024 * 1024)
    body, headers = signed(payload, WEBHOOK_SECRET)
    answer = await client.post(URL, content=body, headers=headers)
    assert answer.status_code == 413
    assert await stored_count(conn) == 0


async def test_oversized_body_without_length_is_cut_off_while_reading(client, conn):
    async def chunks():
        for _ in range(20):
            yield b"x" * 100_000

    answer = await client.post(URL, content=chunks(), headers={"stripe-signature": "t=1,v1=00"})
    assert answer.status_code == 413
