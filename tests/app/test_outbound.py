"""Segment webhooks: delivered signed, retried with backoff, at least once, from the worker."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest
from arq.worker import Worker

from stripeline.signature import verify
from stripeline.worker import jobs as worker
from stripeline.worker import outbound
from tests.segment_support import NOW, add_customer, add_subscription, evaluate

SECRET = "whsec_segment_receiver"


@dataclass
class Receiver:
    """A local HTTP endpoint that records what it gets and answers with the statuses queued."""

    url: str
    requests: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    state = Receiver(url=f"http://127.0.0.1:{server.server_address[1]}/hooks/segments")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["content-length"]))
            state.requests.append((body, {k.lower(): v for k, v in self.headers.items()}))
            self.send_response(state.statuses.pop(0) if state.statuses else 200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server.RequestHandlerClass = Handler
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


class Clock:
    def __init__(self, now) -> None:
        self.now = now

    def __call__(self):
        return self.now


def configured(settings, receiver: Receiver, **changes):
    return replace(settings, segment_webhook_url=receiver.url, segment_webhook_secret=SECRET, **changes)


async def past_due_customer(conn, settings) -> str:
    """A new past-due customer: three segment entries, so three webhooks."""
    customer = await add_customer(conn, created_at=NOW)
    await add_subscription(conn, customer, "past_due")
    await evaluate(conn, [customer], NOW, settings, cause="evt_invoice_failed")
    return customer


async def test_segment_changes_are_delivered_signed(pool, conn, settings, receiver):
    settings = configured(settings, receiver)
    customer = await past_due_customer(conn, settings)
    result = await outbound.deliver_segment_webhooks({"pool": pool, "settings": settings, "clock": Clock(NOW)})
    assert result == {"delivered": 3, "failed": 0}

    events = []
    for body, headers in receiver.requests:
        verify(body, headers["stripeline-signature"], (SECRET,), tolerance=300)  # raises if it does not verify
        assert headers["content-type"] == "application/json"
        events.append(orjson.loads(body))
    assert sorted(e["data"]["segment"] for e in events) == ["customers", "past_due", "syncing_with_stripe"]
    assert {(e["type"], e["data"]["customer"], e["data"]["cause"]) for e in events} == {
        ("segment.entered", customer, "evt_invoice_failed")
    }
    assert len({e["id"] for e in events}) == 3
    assert await conn.fetchval("SELECT count(*) FROM outbox") == 0


async def test_failed_delivery_is_retried_with_exponential_backoff_until_it_lands(pool, conn, settings, receiver):
    settings = configured(settings, receiver, retry_base_seconds=5)
    clock = Clock(NOW)
    ctx = {"pool": pool, "settings": settings, "clock": clock}
    await past_due_customer(conn, settings)
    await conn.execute("DELETE FROM outbox WHERE id <> (SELECT min(id) FROM outbox)")

    receiver.statuses = [500, 503]
    assert await outbound.deliver_segment_webhooks(ctx) == {"delivered": 0, "failed": 1}
    row = await conn.fetchrow("SELECT attempts, next_attempt_at, last_error FROM outbox")
    assert (row["attempts"], row["next_attempt_at"], row["last_error"]) == (1, NOW + timedelta(seconds=5), "HTTP 500")

    clock.now = NOW + timedelta(seconds=4)
    assert await outbound.deliver_segment_webhooks(ctx) == {"delivered": 0, "failed": 0}  # not due yet

    clock.now = NOW + timedelta(seconds=5)
    assert await outbound.deliver_segment_webhooks(ctx) == {"delivered": 0, "failed": 1}
    row = await conn.fetchrow("SELECT attempts, next_attempt_at, last_error FROM outbox")
    expected = (2, clock.now + timedelta(seconds=10), "HTTP 503")
    assert (row["attempts"], row["next_attempt_at"], row["last_error"]) == expected

    clock.now += timedelta(seconds=10)
    assert await outbound.deliver_segment_webhooks(ctx) == {"delivered": 1, "failed": 0}
    bodies = [body for body, _ in receiver.requests]
    assert len(bodies) == 3 and len(set(bodies)) == 1  # the same event, at least once
    assert await conn.fetchval("SELECT count(*) FROM outbox") == 0


async def test_unreachable_receiver_counts_as_a_failed_attempt(pool, conn, settings):
    settings = replace(settings, segment_webhook_url="http://127.0.0.1:9/unreachable", segment_webhook_secret=SECRET)
    await past_due_customer(conn, settings)
    result = await outbound.deliver_segment_webhooks({"pool": pool, "settings": settings, "clock": Clock(NOW)})
    assert result == {"delivered": 0, "failed": 3}
    assert await conn.fetchval("SELECT DISTINCT last_error FROM outbox") == "ConnectError"


async def test_delivery_gives_up_after_the_last_attempt(pool, conn, settings, receiver):
    settings = configured(settings, receiver)
    await past_due_customer(conn, settings)
    await conn.execute("UPDATE outbox SET attempts = $1", outbound.MAX_ATTEMPTS - 1)
    receiver.statuses = [410, 410, 410]
    ctx = {"pool": pool, "settings": settings, "clock": Clock(NOW)}
    assert await outbound.deliver_segment_webhooks(ctx) == {"delivered": 0, "failed": 3}
    assert await conn.fetchval("SELECT count(*) FROM outbox WHERE next_attempt_at = 'infinity'") == 3
    assert await outbound.deliver_segment_webhooks(ctx) == {"delivered": 0, "failed": 0}


async def test_without_a_webhook_url_nothing_is_queued_or_sent(pool, conn, settings, receiver):
    await past_due_customer(conn, settings)
    assert await conn.fetchval("SELECT count(*) FROM outbox") == 0
    assert await outbound.deliver_segment_webhooks({"pool": pool, "settings": settings}) == {"delivered": 0, "failed": 0}
    assert receiver.requests == []


async def test_worker_runs_the_delivery_job(pool, conn, settings, redis, receiver):
    settings = configured(settings, receiver)
    await past_due_customer(conn, settings)
    await redis.enqueue_job("deliver_segment_webhooks", _queue_name=settings.queue_name)
    options = worker.worker_settings(settings) | {
        "ctx": {"settings": settings, "pool": pool},
        "cron_jobs": [],
        "handle_signals": False,
        "burst": True,
        "redis_pool": redis,
    }
    options.pop("redis_settings")
    runner = Worker(**options)
    await runner.main()
    assert runner.jobs_complete == 1 and runner.jobs_failed == 0
    assert len(receiver.requests) == 3
