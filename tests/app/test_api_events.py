"""The event store API: /api/events (list, one, retry one or many) and /api/sync (health, history)."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from stripeline.http.web import create_app
from stripeline.model.events import parse_event
from stripeline.store.db import create_pool
from stripeline.store.event_log import insert_events
from stripeline.store.queue import redis_pool
from tests import registries
from tests.app.test_worker import run_worker_until_idle
from tests.conftest import WEBHOOK_SECRET
from tests.factories import event, ping_event, signed
from tests.services import serving, unreachable_postgres, unreachable_redis


async def store(conn, payload=None, *, status="pending", attempts=0, last_error=None, age_seconds=0) -> str:
    payload = payload or ping_event()
    await insert_events(conn, [parse_event(signed(payload, WEBHOOK_SECRET)[0])])
    await conn.execute(
        "UPDATE stripe_events SET status = $2, attempts = $3, last_error = $4,"
        " received_at = now() - make_interval(secs => $5),"
        " processed_at = CASE WHEN $2 IN ('processed', 'ignored') THEN now() END"
        " WHERE id = $1",
        payload["id"],
        status,
        attempts,
        last_error,
        float(age_seconds),
    )
    return payload["id"]


async def test_stored_event_is_shown_with_its_processing_state(client, conn):
    payload = ping_event()
    event_id = await store(conn, payload, status="failed", attempts=3, last_error="RuntimeError: boom")
    answer = await client.get(f"/api/events/{event_id}")
    assert answer.status_code == 200
    shown = answer.json()
    assert shown["id"] == event_id and shown["type"] == "balance.available"
    assert (shown["status"], shown["attempts"], shown["last_error"]) == ("failed", 3, "RuntimeError: boom")
    assert shown["received_at"].endswith("Z") and shown["processed_at"] is None
    assert shown["payload"] == payload


async def test_unknown_event_is_404(client):
    assert (await client.get("/api/events/evt_nope")).status_code == 404
    assert (await client.post("/api/events/evt_nope/retry")).status_code == 404


async def test_failed_event_is_put_back_in_the_queue_on_retry(client, conn, redis, settings):
    event_id = await store(conn, status="failed", attempts=3, last_error="RuntimeError: boom")
    answer = await client.post(f"/api/events/{event_id}/retry")
    assert answer.status_code == 202
    assert answer.json() == {"id": event_id, "status": "pending"}
    assert await conn.fetchval("SELECT status FROM stripe_events WHERE id = $1", event_id) == "pending"
    queued = await redis.queued_jobs(queue_name=settings.queue_name)
    assert [job.args[0] for job in queued] == [[event_id]]


@pytest.mark.parametrize("status", ["pending", "processed", "ignored"])
async def test_only_a_failed_event_can_be_retried(client, conn, redis, settings, status):
    event_id = await store(conn, status=status)
    answer = await client.post(f"/api/events/{event_id}/retry")
    assert answer.status_code == 409
    assert status in answer.json()["error"]
    assert await redis.queued_jobs(queue_name=settings.queue_name) == []


async def test_sync_counts_events_by_status(client, conn):
    for status, n in (("processed", 3), ("ignored", 2), ("pending", 1)):
        for _ in range(n):
            await store(conn, status=status)
    answer = await client.get("/api/sync")
    assert answer.status_code == 200
    sync = answer.json()
    assert sync["status"] == "healthy"
    assert sync["events"] == {"received": 6, "processed": 3, "ignored": 2, "failed": 0, "pending": 1}
    assert 0 <= sync["oldest_pending_age_seconds"] < 60
    assert sync["last_event_at"].endswith("Z")
    assert sync["customers_in_sync"] == 0


async def test_sync_of_an_empty_store_is_healthy(client):
    sync = (await client.get("/api/sync")).json()
    assert sync["status"] == "healthy"
    assert sync["events"]["received"] == 0
    assert sync["oldest_pending_age_seconds"] is None and sync["last_event_at"] is None


async def test_sync_is_lagging_when_pending_work_is_old(client, conn):
    await store(conn, status="processed")
    await store(conn, status="pending", age_seconds=600)
    sync = (await client.get("/api/sync")).json()
    assert sync["status"] == "lagging"
    assert sync["oldest_pending_age_seconds"] >= 600


async def test_sync_is_failing_while_an_event_has_failed(client, conn):
    await store(conn, status="pending", age_seconds=600)
    event_id = await store(conn, status="failed", attempts=3)
    sync = (await client.get("/api/sync")).json()
    assert sync["status"] == "failing" and sync["events"]["failed"] == 1
    await client.post(f"/api/events/{event_id}/retry")
    assert (await client.get("/api/sync")).json()["status"] == "lagging"


@pytest.mark.parametrize(
    "method, path", [("GET", "/api/sync"), ("GET", "/api/events/evt_1"), ("POST", "/api/events/evt_1/retry")]
)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", "Basic dGVzdA==", "Bearer "])
async def test_api_without_the_token_is_401(app, method, path, authorization):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://stripeline.test") as anonymous:
        headers = {"authorization": authorization} if authorization else {}
        answer = await anonymous.request(method, path, headers=headers)
    assert answer.status_code == 401
    assert answer.json()["error"]


async def test_api_answers_503_while_postgres_is_unreachable(settings, redis):
    broken = await create_pool(unreachable_postgres(), min_size=0)
    async with serving(create_app(settings, pool=broken, redis=redis), token=settings.api_token) as client:
        answers = [await client.get("/api/sync"), await client.get("/api/events/evt_1")]
    await broken.close()
    assert [answer.status_code for answer in answers] == [503, 503]


# --- GET /api/events and POST /api/events/retry -------------------------------------------------

T = 1_700_000_000


async def store_typed(conn, type_, created, *, customer=None, status="processed", attempts=0, last_error=None):
    obj = {"id": f"obj_{created}", "object": "thing", **({"customer": customer} if customer else {})}
    return await store(conn, event(type_, obj, created=created), status=status, attempts=attempts,
                       last_error=last_error)


async def test_event_log_lists_newest_first_with_each_events_state(client, conn):
    older = await store_typed(conn, "invoice.paid", T, customer="cus_a")
    newer = await store_typed(conn, "charge.failed", T + 60, customer="cus_a", status="failed", attempts=3,
                              last_error="RuntimeError: boom")
    answer = await client.get("/api/events")
    assert answer.status_code == 200
    body = answer.json()
    assert [e["id"] for e in body["events"]] == [newer, older] and body["next"] is None
    shown = body["events"][0]
    assert {k: shown[k] for k in ("type", "status", "attempts", "last_error", "created", "customer")} == {
        "type": "charge.failed", "status": "failed", "attempts": 3, "last_error": "RuntimeError: boom",
        "created": "2023-11-14T22:14:20Z", "customer": "cus_a",
    }
    assert shown["received_at"].endswith("Z")


async def test_event_log_filters_by_status_type_customer_and_time(client, conn):
    paid = await store_typed(conn, "invoice.paid", T, customer="cus_a")
    failed = await store_typed(conn, "invoice.payment_failed", T + 10, customer="cus_a", status="failed")
    other = await store_typed(conn, "invoice.paid", T + 20, customer="cus_b", status="failed")
    sub = await store_typed(conn, "customer.subscription.updated", T + 30, customer="cus_b")

    async def ids(**params):
        answer = await client.get("/api/events", params=params)
        assert answer.status_code == 200, answer.text
        return [e["id"] for e in answer.json()["events"]]

    assert await ids(status="failed") == [other, failed]
    assert await ids(status="failed,processed", customer="cus_a") == [failed, paid]
    assert await ids(type="invoice.paid") == [other, paid]
    assert await ids(type="invoice.*") == [other, failed, paid]
    assert await ids(type="customer.subscription.*", customer="cus_b") == [sub]
    assert await ids(since=str(T + 10), until="2023-11-14T22:13:50Z") == [other, failed]
    assert await ids(customer="cus_nobody") == []


@hypothesis_settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limit=st.integers(min_value=1, max_value=7))
async def test_event_pages_chain_by_cursor_without_repeats_or_gaps(client, conn, limit):
    # Several events share a second, as Stripe's often do: the cursor still orders them fully.
    if not await conn.fetchval("SELECT count(*) FROM stripe_events"):
        for n in range(12):
            await store_typed(conn, "invoice.paid", T + n // 3)
    everything = [e["id"] for e in (await client.get("/api/events")).json()["events"]]
    seen, after = [], None
    while True:
        params = {"limit": limit, **({"after": after} if after else {})}
        body = (await client.get("/api/events", params=params)).json()
        assert len(body["events"]) <= limit
        seen += [e["id"] for e in body["events"]]
        after = body["next"]
        if after is None:
            break
    assert seen == everything and len(everything) == 12


@pytest.mark.parametrize(
    "params",
    [
        {"status": "broken"}, {"status": ","}, {"type": "invoice paid"}, {"type": "x" * 600},
        {"customer": "cus\x00"}, {"since": "yesterday"}, {"since": "2024-01-02", "until": "2024-01-01"},
        {"limit": "0"}, {"limit": "²"}, {"limit": "501"}, {"after": "not-a-cursor"}, {"after": "bm90OmN1cnNvcg"},
    ],
)
async def test_bad_event_log_parameters_are_400_with_a_message(client, params):
    answer = await client.get("/api/events", params=params)
    assert answer.status_code == 400
    assert answer.json()["error"]


async def test_retry_by_filter_requeues_only_matching_failed_events(client, conn, redis, settings):
    chosen = [await store_typed(conn, "invoice.paid", T + n, customer="cus_a", status="failed", attempts=3)
              for n in range(3)]
    other_type = await store_typed(conn, "charge.failed", T + 5, customer="cus_a", status="failed")
    other_customer = await store_typed(conn, "invoice.paid", T + 6, customer="cus_b", status="failed")
    processed = await store_typed(conn, "invoice.paid", T + 7, customer="cus_a")

    answer = await client.post("/api/events/retry", json={"type": "invoice.paid", "customer": "cus_a"})
    assert answer.status_code == 202
    assert answer.json() == {"retried": 3, "enqueued": True}
    statuses = dict(await conn.fetch("SELECT id, status FROM stripe_events"))
    assert [statuses[i] for i in chosen] == ["pending"] * 3
    assert [statuses[i] for i in (other_type, other_customer, processed)] == ["failed", "failed", "processed"]
    queued = await redis.queued_jobs(queue_name=settings.queue_name)
    assert sorted(i for job in queued for i in job.args[0]) == sorted(chosen)
    # Nothing left to retry for that filter; every other failed event with an empty one.
    again = await client.post("/api/events/retry", json={"type": "invoice.paid", "customer": "cus_a"})
    assert again.json()["retried"] == 0
    assert (await client.post("/api/events/retry", content=b"")).json()["retried"] == 2


async def test_retry_by_filter_still_counts_when_redis_is_down(settings, pool, conn):
    failed = await store_typed(conn, "invoice.paid", T, status="failed")
    down = redis_pool(unreachable_redis())
    async with serving(create_app(settings, pool=pool, redis=down), token=settings.api_token) as client:
        answer = await client.post("/api/events/retry", json={})
    await down.aclose()
    # Pending again: the worker's sweeper enqueues it once Redis is back.
    assert answer.status_code == 202 and answer.json() == {"retried": 1, "enqueued": False}
    assert await conn.fetchval("SELECT status FROM stripe_events WHERE id = $1", failed) == "pending"


@pytest.mark.parametrize(
    "body",
    [b"[]", b"not json", b'{"status": "failed"}', b'{"type": 5}', b'{"customer": ""}',
     b'{"since": "2024-02-01", "until": "2024-01-01"}', b'{"type": "a b"}'],
)
async def test_bad_retry_filters_are_400_and_retry_nothing(client, conn, body):
    failed = await store_typed(conn, "invoice.paid", T, status="failed")
    answer = await client.post("/api/events/retry", content=body)
    assert answer.status_code == 400 and answer.json()["error"]
    assert await conn.fetchval("SELECT status FROM stripe_events WHERE id = $1", failed) == "failed"


# --- GET /api/sync/history ------------------------------------------------------------------------


async def test_sync_history_counts_received_processed_and_failed_per_minute(client, pool, conn, settings):
    async def on_test_failed(conn, record, ctx):
        raise RuntimeError("handler bug")

    registry = registries.replacing({"test.failed": on_test_failed})
    for payload in [ping_event(), ping_event(), event("test.failed", {"id": "obj_1", "object": "thing"})]:
        body, headers = signed(payload, WEBHOOK_SECRET)
        assert (await client.post("/webhooks/stripe", content=body, headers=headers)).status_code == 200
        await run_worker_until_idle(settings, pool, registry)

    answer = await client.get("/api/sync/history", params={"minutes": 5})
    assert answer.status_code == 200
    body = answer.json()
    assert body["interval_seconds"] == 60 and len(body["history"]) == 5
    assert all(point["at"].endswith(":00Z") for point in body["history"])
    totals = {key: sum(point[key] for point in body["history"]) for key in ("received", "processed", "failed")}
    # Two events ignored (processed, in the chart's sense); the third failed on each of its attempts.
    assert totals == {"received": 3, "processed": 2, "failed": settings.max_attempts}


@pytest.mark.parametrize("minutes", ["0", "2881", "abc", "-5", "1.5"])
async def test_bad_history_window_is_400(client, minutes):
    answer = await client.get("/api/sync/history", params={"minutes": minutes})
    assert answer.status_code == 400 and answer.json()["error"]


async def test_an_unknown_query_parameter_is_400_naming_it_not_ignored(client, conn):
    await store_typed(conn, "invoice.paid", T, status="processed")
    answer = await client.get("/api/events", params={"stauts": "failed"})
    assert answer.status_code == 400
    assert "'stauts'" in answer.json()["error"] and "status" in answer.json()["error"]
    assert (await client.get("/api/sync", params={"verbose": "1"})).status_code == 400
