"""The ingest path under faults: one bad event, a dead connection, a frozen Redis, an outage."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import structlog

from stripeline.http import ingest
from stripeline.http.ingest import Ingestor
from stripeline.http.web import create_app
from stripeline.model.events import InvalidEvent, parse_event
from stripeline.store import queue
from stripeline.store.db import create_pool
from stripeline.store.queue import redis_pool
from tests.conftest import WEBHOOK_SECRET
from tests.factories import ping_event, signed
from tests.servers import RedisServer
from tests.services import serving, unreachable_postgres

URL = "/webhooks/stripe"


def lines(logs, event: str, **fields) -> list[dict]:
    return [line for line in logs if line["event"] == event and all(line.get(k) == v for k, v in fields.items())]


async def deliver(client, payload) -> int:
    body, headers = signed(payload, WEBHOOK_SECRET)
    return (await client.post(URL, content=body, headers=headers)).status_code


@pytest.fixture
def frozen_redis(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    server.freeze()
    yield server
    server.stop()


async def test_event_postgresql_refuses_is_refused_alone_and_the_rest_of_its_batch_is_stored(pool, redis, settings, conn):
    good = [parse_event(signed(ping_event(), WEBHOOK_SECRET)[0]) for _ in range(20)]
    bad_record = parse_event(signed(ping_event(), WEBHOOK_SECRET)[0])
    # Text the log refuses, as jsonb does: \u0000 (parse_event never lets it through; this guards the INSERT).
    bad = dataclasses.replace(bad_record, raw=bad_record.raw.replace(b'"available":[]', b'"available":["\\u0000"]'))
    ingestor = Ingestor(pool, redis, settings.queue_name)
    await ingestor.start()
    try:
        results = await asyncio.gather(*(ingestor.submit(r) for r in [*good[:10], bad, *good[10:]]), return_exceptions=True)
    finally:
        await ingestor.stop()
    refused = results[10]
    assert isinstance(refused, InvalidEvent) and "22P05" in str(refused)
    assert [r for i, r in enumerate(results) if i != 10] == [False] * 20
    stored = {row["id"] for row in await conn.fetch("SELECT id FROM stripe_events")}
    assert stored == {r.id for r in good}


async def test_overlong_id_is_refused_with_400_naming_it_and_its_neighbours_are_stored(client, conn):
    neighbours = [ping_event() for _ in range(15)]
    overlong = ping_event()
    overlong["data"]["object"] = {"id": "in_1", "object": "invoice", "customer": "cus_" + "x" * 3000}
    statuses = await asyncio.gather(*(deliver(client, p) for p in [*neighbours, overlong]))
    assert statuses == [200] * 15 + [400]
    body, headers = signed(overlong, WEBHOOK_SECRET)
    answer = await client.post(URL, content=body, headers=headers)
    assert "'customer' is longer than 255 characters" in answer.json()["error"]
    assert await conn.fetchval("SELECT count(*) FROM stripe_events") == 15


async def test_deeply_nested_event_is_refused_with_400_naming_the_depth(client, conn):
    import json

    payload = ping_event()
    value: dict = {}
    for _ in range(300):
        value = {"a": value}
    payload["data"]["object"]["metadata"] = value
    body, headers = signed(json.dumps(payload).encode(), WEBHOOK_SECRET)
    answer = await client.post(URL, content=body, headers=headers)
    assert answer.status_code == 400
    assert "nested more than 64 levels" in answer.json()["error"]
    assert await conn.fetchval("SELECT count(*) FROM stripe_events") == 0


async def test_terminated_connections_cost_a_retry_not_a_503(client, conn):
    assert await deliver(client, ping_event()) == 200
    # As pg_terminate_backend or a failover does to every connection the web process holds.
    await conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    # One at a time, so that each of the Ingestor's flushers (and its held connection) takes one.
    statuses = [await deliver(client, ping_event()) for _ in range(2 * ingest.FLUSHERS)]
    assert statuses == [200] * 2 * ingest.FLUSHERS
    assert await conn.fetchval("SELECT count(*) FROM stripe_events") == 1 + 2 * ingest.FLUSHERS


async def test_frozen_redis_holds_no_acknowledgement_and_is_logged_once(settings, pool, conn, frozen_redis):
    frozen = redis_pool(frozen_redis.url)
    app = create_app(settings, pool=pool, redis=frozen)
    payloads = [ping_event() for _ in range(12)]
    with structlog.testing.capture_logs() as logs:
        async with serving(app) as client:
            statuses = [await deliver(client, p) for p in payloads]
            redis_state = app.state.dependencies["redis"]
            # Each enqueue attempt waits ENQUEUE_WAIT_SECONDS; after the first, Redis is known
            # down and only a probe per backoff step tries it: not one wait per webhook.
            attempts = redis_state.failures
            frozen_redis.thaw()
            await asyncio.sleep(1.5)  # past the next probe time
            assert await deliver(client, ping_event()) == 200
    await frozen.aclose()
    assert statuses == [200] * 12
    assert 1 <= attempts <= 4
    pending = await conn.fetchval("SELECT count(*) FROM stripe_events WHERE status = 'pending'")
    assert pending == 13
    assert len(lines(logs, "dependency_unavailable", dependency="redis")) == 1
    (back,) = lines(logs, "dependency_available", dependency="redis")
    assert back["deferred"] == 12


async def test_outage_answers_503_and_is_logged_once_not_per_webhook(settings, redis):
    broken = await create_pool(unreachable_postgres(), min_size=0)
    app = create_app(settings, pool=broken, redis=redis)
    with structlog.testing.capture_logs() as logs:
        async with serving(app) as client:
            statuses = [await deliver(client, ping_event()) for _ in range(5)]
    await broken.close()
    assert statuses == [503] * 5
    assert len(lines(logs, "dependency_unavailable", dependency="postgres")) == 1


async def test_summary_line_is_written_on_a_timer_not_at_the_next_webhook(settings, pool, redis, monkeypatch):
    monkeypatch.setattr(ingest, "SUMMARY_EVERY_SECONDS", 0.3)
    with structlog.testing.capture_logs() as logs:
        async with serving(create_app(settings, pool=pool, redis=redis)) as client:
            for _ in range(3):
                assert await deliver(client, ping_event()) == 200
            await asyncio.sleep(1.0)
            summaries = lines(logs, "webhooks_ingested")  # while the app still runs
    assert sum(line["events"] for line in summaries) == 3


async def test_while_redis_is_frozen_new_events_are_still_stored_and_repeats_answered_at_once(pool, conn, frozen_redis):
    # The enqueue of the first event waits ENQUEUE_WAIT_SECONDS for a Redis that does not answer;
    # the flusher does not wait with it: the next event is committed, and a repeat of an event
    # stored earlier is answered, before the first is acknowledged.
    earlier = parse_event(signed(ping_event(), WEBHOOK_SECRET)[0])
    first, second = (parse_event(signed(ping_event(), WEBHOOK_SECRET)[0]) for _ in range(2))
    frozen = redis_pool(frozen_redis.url)
    ingestor = Ingestor(pool, frozen, "stripeline:test-frozen")
    await ingestor.start()
    try:
        await conn.execute(
            "INSERT INTO stripe_events (id, type, created, payload) VALUES ($1, 'ping', now(), '{}')", earlier.id
        )
        waiting = asyncio.create_task(ingestor.submit(first))
        await asyncio.sleep(0.05)
        second_answer = asyncio.create_task(ingestor.submit(second))
        assert await asyncio.wait_for(ingestor.submit(earlier), ingest.ENQUEUE_WAIT_SECONDS / 2) is True
        for _ in range(20):
            if await conn.fetchval("SELECT count(*) FROM stripe_events WHERE id = $1", second.id):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the second event was not stored while the first waited for Redis")
        assert not waiting.done()
        assert await waiting is False and await second_answer is False
    finally:
        await ingestor.stop()
        await frozen.aclose()
    statuses = dict(await conn.fetch("SELECT id, status FROM stripe_events"))
    assert statuses == {earlier.id: "pending", first.id: "pending", second.id: "pending"}


async def test_an_event_whose_sender_went_away_before_it_was_stored_is_still_enqueued(pool, redis, settings, conn):
    record = parse_event(signed(ping_event(), WEBHOOK_SECRET)[0])
    ingestor = Ingestor(pool, redis, settings.queue_name)
    await ingestor.start()
    try:
        gone = asyncio.create_task(ingestor.submit(record))
        await asyncio.sleep(0)  # handed to the Ingestor, not yet stored
        gone.cancel()  # as uvicorn does to a request whose client disconnected
        for _ in range(100):
            if await redis.zcard(settings.queue_name):
                break
            await asyncio.sleep(0.01)
    finally:
        await ingestor.stop()
    assert await conn.fetchval("SELECT status FROM stripe_events WHERE id = $1", record.id) == "pending"
    (job_id,) = await redis.zrange(settings.queue_name, 0, -1)
    assert job_id.decode() == queue.job_id_for([record.id])
