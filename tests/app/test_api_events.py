"""The event store API: /api/events/{id}, /api/events/{id}/retry and /api/sync, behind the token."""

from __future__ import annotations

import httpx
import pytest

from app.db import create_pool
from app.events import insert_events, parse_event
from app.web import create_app
from tests.conftest import WEBHOOK_SECRET
from tests.factories import ping_event, signed
from tests.services import serving, unreachable_postgres


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
