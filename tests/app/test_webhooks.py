"""POST /webhooks/stripe: verify, store once, enqueue, answer."""

from __future__ import annotations

import asyncio
import json
import time

import orjson
from hypothesis import HealthCheck, given
from hypothesis import settings as settings_
from hypothesis import strategies as st

from tests.conftest import SECOND_SECRET, WEBHOOK_SECRET
from tests.factories import body_of, event, ping_event, signed
from tests.services import serving, unreachable_postgres, unreachable_redis

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


async def test_stored_event_is_queued_for_the_worker(client, conn, redis, settings):
    payload = ping_event()
    body, headers = signed(payload, WEBHOOK_SECRET)
    await client.post(URL, content=body, headers=headers)
    queued = await redis.queued_jobs(queue_name=settings.queue_name)
    assert [job.args[0] for job in queued] == [[payload["id"]]]
    assert queued[0].function == "process_events"


async def test_duplicate_delivery_is_not_queued_again(client, redis, settings):
    body, headers = signed(ping_event(), WEBHOOK_SECRET)
    await client.post(URL, content=body, headers=headers)
    await client.post(URL, content=body, headers=headers)
    assert len(await redis.queued_jobs(queue_name=settings.queue_name)) == 1


async def test_simultaneous_deliveries_of_one_event_store_it_once(client, conn):
    payload = ping_event()
    body, headers = signed(payload, WEBHOOK_SECRET)
    answers = await asyncio.gather(*(client.post(URL, content=body, headers=headers) for _ in range(10)))
    assert all(answer.status_code == 200 for answer in answers)
    assert sorted(answer.json()["duplicate"] for answer in answers) == [False] + [True] * 9
    assert await stored_count(conn) == 1


async def test_many_simultaneous_events_are_all_stored(client, conn):
    payloads = [ping_event() for _ in range(300)]
    requests = [signed(payload, WEBHOOK_SECRET) for payload in payloads]
    answers = await asyncio.gather(*(client.post(URL, content=body, headers=headers) for body, headers in requests))
    assert {answer.status_code for answer in answers} == {200}
    stored = {row["id"] for row in await conn.fetch("SELECT id FROM stripe_events")}
    assert stored == {payload["id"] for payload in payloads}


async def test_connect_event_keeps_its_account_and_customer(client, conn):
    customer = {"id": "cus_connect1", "object": "customer", "email": None}
    payload = event("customer.created", customer, account="acct_1ABC", livemode=True)
    body, headers = signed(payload, WEBHOOK_SECRET)
    assert (await client.post(URL, content=body, headers=headers)).status_code == 200
    row = await conn.fetchrow("SELECT account, livemode, customer_id, object_type FROM stripe_events WHERE id = $1", payload["id"])
    assert dict(row) == {"account": "acct_1ABC", "livemode": True, "customer_id": "cus_connect1", "object_type": "customer"}


async def test_event_with_nul_characters_is_stored_with_a_replacement(client, conn):
    payload = ping_event()
    payload["data"]["object"]["metadata"] = {"note\u0000": "a\u0000b"}
    body, headers = signed(payload, WEBHOOK_SECRET)
    answer = await client.post(URL, content=body, headers=headers)
    assert answer.status_code == 200
    stored = await conn.fetchval("SELECT payload FROM stripe_events WHERE id = $1", payload["id"])
    assert stored["data"]["object"]["metadata"] == {"note\ufffd": "a\ufffdb"}


async def test_event_is_stored_and_acknowledged_while_redis_is_down(settings, pool, conn):
    from stripeline.http.web import create_app
    from stripeline.store.queue import redis_pool

    broken = redis_pool(unreachable_redis())
    payload = ping_event()
    body, headers = signed(payload, WEBHOOK_SECRET)
    async with serving(create_app(settings, pool=pool, redis=broken)) as client:
        answer = await client.post(URL, content=body, headers=headers)
    await broken.aclose()
    assert answer.status_code == 200 and answer.json() == {"received": True, "duplicate": False}
    assert await conn.fetchval("SELECT status FROM stripe_events WHERE id = $1", payload["id"]) == "pending"


async def test_webhook_answers_503_while_postgres_is_unreachable(settings, redis):
    from stripeline.http.web import create_app
    from stripeline.store.db import create_pool

    broken = await create_pool(unreachable_postgres(), min_size=0)
    body, headers = signed(ping_event(), WEBHOOK_SECRET)
    async with serving(create_app(settings, pool=broken, redis=redis)) as client:
        answer = await client.post(URL, content=body, headers=headers)
    await broken.close()
    assert answer.status_code == 503
    assert "retry" in answer.json()["error"]


async def test_signature_with_an_enormous_timestamp_is_refused(client):
    body = body_of(ping_event())
    answer = await client.post(URL, content=body, headers={"stripe-signature": f"t={'9' * 400},v1={'0' * 64}"})
    assert answer.status_code == 400


# Hypothesis: function fixtures are shared by every example, so each example uses fresh event
# ids and the assertions count only what that example could have stored.

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)



def dumps(value) -> bytes:
    """The standard library's encoder: integers of any size, and \\u escapes for non-ASCII."""
    return json.dumps(value).encode()


signature_headers = st.one_of(
    st.text(max_size=200),
    st.builds(
        lambda t, sigs: ",".join([f"t={t}", *(f"v1={s}" for s in sigs)]),
        st.one_of(st.integers(), st.text(max_size=20), st.just(str(int(time.time())))),
        st.lists(st.one_of(st.text(max_size=70), st.from_regex(r"[0-9a-f]{64}", fullmatch=True)), max_size=3),
    ),
)


@settings_(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(st.binary(max_size=2000), json_values.map(dumps), st.builds(lambda: body_of(ping_event()))),
    header=st.one_of(st.none(), signature_headers),
)
async def test_unsigned_requests_never_get_5xx_and_never_store(client, conn, body, header):
    before = await stored_count(conn)
    headers = {} if header is None else {"stripe-signature": header.encode()}
    answer = await client.post(URL, content=body, headers=headers)
    assert answer.status_code in (400, 413)
    assert await stored_count(conn) == before


@settings_(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=json_values, where=st.sampled_from(["body", "object", "event"]))
async def test_signed_payload_of_any_shape_never_gets_5xx(client, conn, shape, where):
    if where == "body":
        payload = shape
    elif where == "object":
        payload = ping_event()
        payload["data"]["object"]["anything"] = shape
    else:
        payload = ping_event()
        payload.update(shape if isinstance(shape, dict) else {"extra": shape})
    body, headers = signed(dumps(payload), WEBHOOK_SECRET)
    answer = await client.post(URL, content=body, headers=headers)
    assert answer.status_code in (200, 400)
    if answer.status_code == 200:
        assert await conn.fetchval("SELECT count(*) FROM stripe_events WHERE id = $1", payload["id"]) == 1


async def test_ingest_recovers_when_postgres_drops_its_connections(client, conn, db_url):
    first = ping_event()
    body, headers = signed(first, WEBHOOK_SECRET)
    assert (await client.post(URL, content=body, headers=headers)).status_code == 200
    # As a PostgreSQL restart or failover does to every connection the web process holds.
    await conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    payload = ping_event()
    body, headers = signed(payload, WEBHOOK_SECRET)
    statuses = [(await client.post(URL, content=body, headers=headers)).status_code for _ in range(3)]
    assert 200 in statuses and set(statuses) <= {200, 503}
    assert await conn.fetchval("SELECT count(*) FROM stripe_events WHERE id = $1", payload["id"]) == 1


async def test_only_post_is_accepted(client):
    assert (await client.get(URL)).status_code == 405


async def test_an_unexpected_failure_while_storing_is_a_json_500_and_the_next_webhook_is_stored(
    app, client, conn, monkeypatch
):
    """Webhooks skip Starlette's middleware (app.http.web.Stripeline) but keep our error answers."""
    ingestor = app.state.ingestor
    real_submit = ingestor.submit

    async def broken(event):
        raise RuntimeError("a bug")

    monkeypatch.setattr(ingestor, "submit", broken)
    body, headers = signed(ping_event(), WEBHOOK_SECRET)
    answer = await client.post(URL, content=body, headers=headers)
    assert answer.status_code == 500
    assert answer.json() == {"error": "internal error; the server log has the details"}
    monkeypatch.setattr(ingestor, "submit", real_submit)
    payload = ping_event()
    body, headers = signed(payload, WEBHOOK_SECRET)
    assert (await client.post(URL, content=body, headers=headers)).status_code == 200
    assert await conn.fetchval("SELECT count(*) FROM stripe_events WHERE id = $1", payload["id"]) == 1
