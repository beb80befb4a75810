"""The worker's metrics, pushed through PostgreSQL and shown by the web's /metrics."""

from __future__ import annotations

import asyncio

import pytest

from stripeline.worker import metrics as worker_metrics
from tests import registries
from tests.app.test_health import samples
from tests.app.test_metrics import deliver
from tests.app.test_worker import run_worker_until_idle
from tests.factories import event, ping_event


def worker_samples(text: str) -> dict[str, float]:
    """Samples of one worker, with its label taken out (the only worker in these tests)."""
    found = {}
    for name, value in samples(text).items():
        if 'worker="' in name:
            name = name.replace(f'worker="{worker_metrics.worker_name()}"', "").replace(",}", "}").replace("{}", "")
            found[name.replace("{,", "{")] = value
    return found


async def test_processing_counts_and_latencies_of_the_worker_show_in_web_metrics(client, pool, conn, settings):
    async def on_test_handled(conn, record, ctx):
        pass

    async def on_test_failed(conn, record, ctx):
        raise RuntimeError("handler bug")

    registry = registries.replacing({"test.handled": on_test_handled, "test.failed": on_test_failed})
    for payload in [event("test.handled", {"id": "obj_1", "object": "thing"}) for _ in range(3)] + [ping_event()]:
        assert (await deliver(client, payload)).status_code == 200
    await run_worker_until_idle(settings, pool, registry)

    text = (await client.get("/metrics")).text
    found = worker_samples(text)
    assert samples(text)["stripeline_workers"] == 1
    assert found['stripeline_worker_events_total{outcome="processed",type="test.handled"}'] == 3
    assert found['stripeline_worker_events_total{outcome="ignored",type="balance.available"}'] == 1
    assert found["stripeline_worker_received_to_processed_seconds_count"] == 4
    assert found["stripeline_worker_created_to_processed_seconds_count"] == 4
    assert 0 < found["stripeline_worker_received_to_processed_seconds_sum"] < 60
    # Timed as the batch finished, by the processed_at it stored (not the worker's clock).
    stored = await conn.fetchrow(
        "SELECT sum(extract(epoch FROM processed_at - received_at)) AS received,"
        " sum(extract(epoch FROM processed_at - created)) AS created FROM stripe_events"
    )
    assert found["stripeline_worker_received_to_processed_seconds_sum"] == pytest.approx(float(stored["received"]))
    assert found["stripeline_worker_created_to_processed_seconds_sum"] == pytest.approx(float(stored["created"]))
    assert found['stripeline_worker_job_duration_seconds_count{job="process_events"}'] >= 1
    assert found["stripeline_worker_batch_events_sum"] == 4
    assert found["stripeline_worker_process_resident_memory_bytes"] > 0

    # By a worker started anew under the same name: its counters start again, as after a restart.
    assert (await deliver(client, event("test.failed", {"id": "obj_2", "object": "thing"}))).status_code == 200
    await run_worker_until_idle(settings, pool, registry)
    found = worker_samples((await client.get("/metrics")).text)
    # max_attempts is 3 in tests: two retries, then failed for good.
    assert found['stripeline_worker_events_total{outcome="retrying",type="test.failed"}'] == 2
    assert found['stripeline_worker_events_total{outcome="failed",type="test.failed"}'] == 1
    assert found["stripeline_worker_received_to_processed_seconds_count"] == 0


async def test_a_finished_segment_refresh_sets_its_age(client, pool, redis, settings):
    await redis.enqueue_job("refresh_segments", _queue_name=settings.queue_name)
    await run_worker_until_idle(settings, pool)
    found = samples((await client.get("/metrics")).text)
    assert 0 <= found["stripeline_segment_refresh_age_seconds"] < 60


async def test_a_worker_that_stopped_pushing_is_left_out_but_its_last_refresh_counts(
    client, pool, conn, redis, settings
):
    await redis.enqueue_job("refresh_segments", _queue_name=settings.queue_name)
    await run_worker_until_idle(settings, pool)
    await conn.execute("UPDATE worker_metrics SET pushed_at = now() - interval '5 minutes'")
    found = samples((await client.get("/metrics")).text)
    assert found["stripeline_workers"] == 0
    assert not any("worker=" in name for name in found)
    assert 0 <= found["stripeline_segment_refresh_age_seconds"] < 60


async def test_folding_the_minutes_keeps_the_history(client, pool, conn, settings):
    for _ in range(4):
        assert (await deliver(client, ping_event())).status_code == 200
    await run_worker_until_idle(settings, pool)
    before = (await client.get("/api/sync/history", params={"minutes": 3})).json()["history"]
    rows_before = await conn.fetchval("SELECT count(*) FROM stripe_event_minutes")

    await worker_metrics.WorkerMetrics().push(pool, maintain=True)

    assert (await client.get("/api/sync/history", params={"minutes": 3})).json()["history"] == before
    assert await conn.fetchval("SELECT count(*) FROM stripe_event_minutes") < rows_before


async def test_pushing_rides_out_a_database_that_is_down(monkeypatch):
    from stripeline.store.db import create_pool
    from tests.services import unreachable_postgres

    monkeypatch.setattr(worker_metrics, "PUSH_SECONDS", 0.01)
    broken = await create_pool(unreachable_postgres(), min_size=0)
    ctx = {"pool": broken}
    await worker_metrics.start(ctx)
    await asyncio.sleep(0.1)
    pusher = ctx["metrics_pusher"]
    assert not pusher.done()  # still trying, never crashed
    await worker_metrics.stop(ctx)  # the last push fails too, quietly
    await broken.close()
