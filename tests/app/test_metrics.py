"""GET /metrics as Prometheus scrapes it: the web's own counters, the stores' gauges, and no
failure while a store is down."""

from __future__ import annotations

import dataclasses

from stripeline.http.body import WEBHOOK_MAX_BYTES as MAX_BODY_BYTES
from stripeline.http.web import create_app
from stripeline.store.db import create_pool
from stripeline.store.queue import redis_pool
from tests.app.test_health import samples
from tests.conftest import WEBHOOK_SECRET
from tests.factories import customer_object, event, ping_event, signed
from tests.services import serving, unreachable_postgres, unreachable_redis

URL = "/webhooks/stripe"


async def deliver(client, payload, secret=WEBHOOK_SECRET):
    body, headers = signed(payload, secret)
    return await client.post(URL, content=body, headers=headers)


async def test_webhooks_are_counted_by_outcome_and_reason_with_their_latency(client):
    first = ping_event()
    assert (await deliver(client, first)).status_code == 200
    assert (await deliver(client, first)).status_code == 200
    assert (await deliver(client, ping_event(), secret="whsec_someone_else")).status_code == 400
    assert (await deliver(client, b'{"object": "event"}')).status_code == 400
    too_large = b"x" * (MAX_BODY_BYTES + 1)
    assert (await client.post(URL, content=too_large, headers={"stripe-signature": "t=1,v1=0"})).status_code == 413

    found = samples((await client.get("/metrics")).text)
    assert found['stripeline_webhooks_total{outcome="accepted",reason=""}'] == 1
    assert found['stripeline_webhooks_total{outcome="duplicate",reason=""}'] == 1
    assert found['stripeline_webhooks_total{outcome="rejected",reason="signature"}'] == 1
    assert found['stripeline_webhooks_total{outcome="rejected",reason="not_an_event"}'] == 1
    assert found['stripeline_webhooks_total{outcome="rejected",reason="too_large"}'] == 1
    assert found["stripeline_webhook_duration_seconds_count"] == 5
    # Each stored event went through one INSERT of the Ingestor.
    assert found["stripeline_ingest_batch_events_count"] == 2
    assert found["stripeline_ingest_batch_events_sum"] == 2
    assert found["stripeline_web_process_resident_memory_bytes"] > 0


async def test_metrics_answer_while_postgres_and_redis_are_down(settings):
    broken = await create_pool(unreachable_postgres(), min_size=0)
    down = redis_pool(unreachable_redis())
    async with serving(create_app(settings, pool=broken, redis=down)) as client:
        refused = await deliver(client, ping_event())
        answer = await client.get("/metrics")
    await broken.close()
    await down.aclose()
    assert refused.status_code == 503
    assert answer.status_code == 200
    found = samples(answer.text)
    assert found["stripeline_database_up"] == 0 and found["stripeline_redis_up"] == 0
    assert found['stripeline_webhooks_total{outcome="unavailable",reason=""}'] == 1
    assert not any(name.startswith(("stripeline_events", "stripeline_queue_depth")) for name in found)


async def test_metrics_show_queue_depth_segment_sizes_and_the_outbox(client, conn, settings, app):
    # Segment webhooks configured but never delivered (no worker runs here): they wait in the outbox.
    app.state.settings = dataclasses.replace(settings, segment_webhook_url="http://127.0.0.1:9/hook")
    from tests.handlers.billing_support import apply

    await apply(conn, app.state.settings, [event("customer.created", customer_object(email="ada@example.com"))])
    assert (await deliver(client, ping_event())).status_code == 200

    found = samples((await client.get("/metrics")).text)
    assert found["stripeline_database_up"] == 1 and found["stripeline_redis_up"] == 1
    assert found["stripeline_queue_depth"] == 1
    assert found['stripeline_segment_customers{segment="syncing_with_stripe"}'] == 1
    assert found['stripeline_outbox_depth{state="waiting"}'] == 1
    assert found['stripeline_outbox_depth{state="given_up"}'] == 0
    assert 0 <= found["stripeline_outbox_oldest_age_seconds"] < 60
    assert found["stripeline_last_event_received_timestamp_seconds"] > 1.7e9
    assert found["stripeline_workers"] == 0  # the workers' own: tests/app/test_worker_metrics.py
