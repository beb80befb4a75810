"""The worker: arq's Worker in burst mode against real Redis, processing stored events.

A test hands the worker its own registry (the product's with a test handler added), as arq
intends: through the worker's ctx.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal

import pytest
import structlog
from arq.worker import Worker

from stripeline.http.web import create_app
from stripeline.model.events import parse_event
from stripeline.processing.engine import WORKER, Batch, Engine
from stripeline.store.db import create_pool
from stripeline.store.event_log import insert_events
from stripeline.store.queue import enqueue_events, redis_pool
from stripeline.worker import jobs as worker_module
from stripeline.worker.arq_worker import CLAIM_SHA
from tests import registries
from tests.conftest import WEBHOOK_SECRET
from tests.factories import event, ping_event, signed
from tests.servers import REDIS_PASSWORD, RedisServer
from tests.services import serving, unreachable_postgres, unreachable_redis

URL = "/webhooks/stripe"
TEST_TYPE = "test.happened"


async def run_worker_until_idle(settings, pool, registry=None) -> Worker:
    """Run arq's Worker in burst mode (no crons) until the queue is empty."""
    options = worker_module.worker_settings(settings)
    options.update(burst=True, cron_jobs=[], handle_signals=False, poll_delay=0.05,
                   ctx={"settings": settings, "pool": pool, "registry": registry or registries.product()})
    worker = Worker(**options)
    try:
        await worker.main()
    finally:
        await worker.close()
    return worker


async def deliver(client, payload) -> None:
    body, headers = signed(payload, WEBHOOK_SECRET)
    answer = await client.post(URL, content=body, headers=headers)
    assert answer.status_code == 200


async def status_of(conn, event_id: str):
    return await conn.fetchrow("SELECT status, attempts, last_error, processed_at FROM stripe_events WHERE id = $1", event_id)


def handled_event(**kwargs):
    return event(TEST_TYPE, {"id": "obj_1", "object": "thing", "customer": "cus_worker1"}, **kwargs)


async def test_worker_processes_delivered_events_through_their_handler(client, conn, pool, settings):
    seen = []

    async def on_test_happened(conn, record, ctx):
        seen.append((record.id, record.customer_id))

    registry = registries.replacing({TEST_TYPE: on_test_happened})
    payloads = [handled_event() for _ in range(3)]
    for payload in payloads:
        await deliver(client, payload)
    await run_worker_until_idle(settings, pool, registry)
    assert sorted(seen) == sorted((p["id"], "cus_worker1") for p in payloads)
    for payload in payloads:
        row = await status_of(conn, payload["id"])
        assert row["status"] == "processed" and row["processed_at"] is not None and row["attempts"] == 0


async def test_event_of_an_unhandled_type_is_ignored_not_failed(client, conn, pool, settings):
    payload = ping_event()
    await deliver(client, payload)
    await run_worker_until_idle(settings, pool)
    row = await status_of(conn, payload["id"])
    assert row["status"] == "ignored" and row["last_error"] is None


async def test_event_is_processed_once_however_often_it_is_queued(client, conn, pool, settings, redis):
    calls = []

    async def on_test_happened(conn, record, ctx):
        calls.append(record.id)

    registry = registries.replacing({TEST_TYPE: on_test_happened})
    payload = handled_event()
    await deliver(client, payload)
    for n in range(3):
        await redis.enqueue_job("process_events", [payload["id"]], _job_id=f"again:{n}", _queue_name=settings.queue_name)
    await run_worker_until_idle(settings, pool, registry)
    assert calls == [payload["id"]]


async def test_failing_handler_is_retried_then_left_failed_with_its_error(client, conn, pool, settings):
    attempts = []

    async def on_test_happened(conn, record, ctx):
        attempts.append(record.id)
        await conn.execute("CREATE TABLE written_by_failing_handler (id int)")  # must be rolled back
        raise RuntimeError("upstream shape not understood")

    registry = registries.replacing({TEST_TYPE: on_test_happened})
    payload = handled_event()
    await deliver(client, payload)
    await run_worker_until_idle(settings, pool, registry)
    assert len(attempts) == settings.max_attempts
    row = await status_of(conn, payload["id"])
    assert row["status"] == "failed"
    assert row["attempts"] == settings.max_attempts
    assert row["last_error"] == "RuntimeError: upstream shape not understood"
    assert await conn.fetchval("SELECT to_regclass('written_by_failing_handler')") is None


async def test_one_failing_event_does_not_hold_up_the_others_in_its_batch(conn, pool, settings, redis):
    from stripeline.model.events import parse_event
    from stripeline.store.event_log import insert_events

    async def on_test_happened(conn, record, ctx):
        if record.payload["data"]["object"].get("poison"):
            raise ValueError("poison")

    registry = registries.replacing({TEST_TYPE: on_test_happened})
    good, bad = handled_event(), handled_event()
    bad["data"]["object"]["poison"] = True
    records = [parse_event(signed(p, WEBHOOK_SECRET)[0]) for p in (good, bad)]
    await insert_events(conn, records)
    await redis.enqueue_job("process_events", [good["id"], bad["id"]], _queue_name=settings.queue_name)
    await run_worker_until_idle(settings, pool, registry)
    assert (await status_of(conn, good["id"]))["status"] == "processed"
    assert (await status_of(conn, bad["id"]))["status"] == "failed"


async def test_failure_that_clears_up_is_processed_on_retry(client, conn, pool, settings):
    attempts = []

    async def on_test_happened(conn, record, ctx):
        attempts.append(record.id)
        if len(attempts) == 1:
            raise RuntimeError("flaky")  # a bug that goes away; an outage is not counted at all

    registry = registries.replacing({TEST_TYPE: on_test_happened})
    payload = handled_event()
    await deliver(client, payload)
    await run_worker_until_idle(settings, pool, registry)
    row = await status_of(conn, payload["id"])
    assert len(attempts) == 2
    assert row["status"] == "processed" and row["attempts"] == 1 and row["last_error"] is None


async def test_event_stored_while_redis_was_down_is_queued_by_the_sweeper(settings, pool, conn, redis):
    broken = redis_pool(unreachable_redis())
    payload = ping_event()
    async with serving(create_app(settings, pool=pool, redis=broken)) as client:
        await deliver(client, payload)
    await broken.aclose()
    assert await redis.queued_jobs(queue_name=settings.queue_name) == []
    # The sweeper leaves events alone for a few seconds (their own job may be on its way).
    await conn.execute("UPDATE stripe_events SET received_at = now() - interval '1 minute'")

    requeued = await worker_module.requeue_stale_events({"settings": settings, "pool": pool, "redis": redis})

    assert requeued == 1
    queued = await redis.queued_jobs(queue_name=settings.queue_name)
    assert [job.args[0] for job in queued] == [[payload["id"]]]
    await run_worker_until_idle(settings, pool)
    assert (await status_of(conn, payload["id"]))["status"] == "ignored"


async def test_sweeper_leaves_fresh_and_backing_off_events_alone(conn, pool, settings, redis):
    from stripeline.model.events import parse_event
    from stripeline.store.event_log import insert_events

    fresh, backing_off = ping_event(), ping_event()
    await insert_events(conn, [parse_event(signed(p, WEBHOOK_SECRET)[0]) for p in (fresh, backing_off)])
    await conn.execute(
        "UPDATE stripe_events SET received_at = now() - interval '1 minute', next_attempt_at = now() + interval '1 hour'"
        " WHERE id = $1",
        backing_off["id"],
    )
    requeued = await worker_module.requeue_stale_events({"settings": settings, "pool": pool, "redis": redis})
    assert requeued == 0
    assert await redis.queued_jobs(queue_name=settings.queue_name) == []


async def test_same_batch_enqueued_twice_is_one_job_until_it_has_run(conn, pool, settings, redis):
    from stripeline.model.events import parse_event
    from stripeline.store.event_log import insert_events
    from stripeline.store.queue import enqueue_events

    payloads = [ping_event(), ping_event()]
    await insert_events(conn, [parse_event(signed(p, WEBHOOK_SECRET)[0]) for p in payloads])
    ids = [p["id"] for p in payloads]
    assert await enqueue_events(redis, settings.queue_name, ids) is True
    assert await enqueue_events(redis, settings.queue_name, ids) is False
    assert len(await redis.queued_jobs(queue_name=settings.queue_name)) == 1
    await run_worker_until_idle(settings, pool)
    assert await enqueue_events(redis, settings.queue_name, ids) is True


async def test_fresh_events_join_the_open_job_and_are_all_processed(conn, pool, settings, redis):
    """The web's events join a job that no worker has claimed yet instead of queueing a job per
    flush; nothing they carry is left behind."""
    payloads = [ping_event() for _ in range(5)]
    await insert_events(conn, [parse_event(signed(p, WEBHOOK_SECRET)[0]) for p in payloads])
    ids = [p["id"] for p in payloads]
    assert await enqueue_events(redis, settings.queue_name, ids[:1], join_open_job=True) is True
    for event_id in ids[1:]:
        assert await enqueue_events(redis, settings.queue_name, [event_id], join_open_job=True) is True
    assert len(await redis.queued_jobs(queue_name=settings.queue_name)) == 1
    worker = await run_worker_until_idle(settings, pool)
    assert worker.jobs_complete == 1
    assert [(await status_of(conn, event_id))["status"] for event_id in ids] == ["ignored"] * 5


async def test_fresh_events_never_join_a_job_a_worker_has_claimed(conn, settings, redis):
    """A claimed job may have taken its events already: later events get a job of their own."""
    from arq.constants import in_progress_key_prefix

    from stripeline.store.queue import job_id_for

    first, later = ping_event(), ping_event()
    assert await enqueue_events(redis, settings.queue_name, [first["id"]], join_open_job=True) is True
    await redis.set(in_progress_key_prefix + job_id_for([first["id"]]), "1")
    assert await enqueue_events(redis, settings.queue_name, [later["id"]], join_open_job=True) is True
    assert len(await redis.queued_jobs(queue_name=settings.queue_name)) == 2
    # Retries and sweeps name their events and never join.
    assert await enqueue_events(redis, settings.queue_name, [later["id"]], job_id="sweep:1", join_open_job=False)
    assert len(await redis.queued_jobs(queue_name=settings.queue_name)) == 3


async def test_a_full_batch_leaves_no_pending_event_without_a_job(conn, pool, settings, redis, monkeypatch):
    """Events that joined an open job are found by its batch; when that batch comes out full,
    the job queues another one for the rest."""
    monkeypatch.setattr(worker_module, "FILL_BATCH_UP_TO", 3)
    payloads = [ping_event() for _ in range(8)]
    await insert_events(conn, [parse_event(signed(p, WEBHOOK_SECRET)[0]) for p in payloads])
    ids = [p["id"] for p in payloads]
    for event_id in ids:
        await enqueue_events(redis, settings.queue_name, [event_id], join_open_job=True)
    assert len(await redis.queued_jobs(queue_name=settings.queue_name)) == 1
    await run_worker_until_idle(settings, pool)
    assert [(await status_of(conn, event_id))["status"] for event_id in ids] == ["ignored"] * 8


async def test_deferred_job_waits_its_turn(redis, settings):
    from stripeline.store.queue import enqueue_events

    await enqueue_events(redis, settings.queue_name, ["evt_later"], defer_seconds=60)
    (job,) = await redis.queued_jobs(queue_name=settings.queue_name)
    assert job.score - job.enqueue_time.timestamp() * 1000 >= 59_000


async def test_last_error_never_repeats_a_value_from_the_database_message():
    import asyncpg

    from stripeline.processing.engine import describe_error

    violation = asyncpg.UniqueViolationError("duplicate key value violates unique constraint")
    violation.sqlstate = "23505"
    violation.constraint_name = "customers_email_key"
    violation.detail = "Key (email)=(jane@example.com) already exists."
    described = describe_error(violation)
    assert "jane@example.com" not in described
    assert "23505" in described and "customers_email_key" in described


async def test_a_job_takes_other_due_pending_events_into_its_batch(client, conn, pool, settings):
    from stripeline.processing.engine import process_events

    seen = []

    async def on_test_happened(conn, record, ctx):
        seen.append(record.id)

    registry = registries.replacing({TEST_TYPE: on_test_happened})
    payloads = [handled_event() for _ in range(3)]
    for payload in payloads:
        await deliver(client, payload)

    outcome = await process_events(pool, [payloads[0]["id"]], settings, fill_up_to=10, registry=registry)

    assert sorted(outcome.processed) == sorted(p["id"] for p in payloads)
    for payload in payloads:
        assert (await status_of(conn, payload["id"]))["status"] == "processed"


async def test_events_that_joined_a_failing_batch_are_processed_at_once_and_only_the_culprit_fails(
    client, conn, pool, settings
):
    from stripeline.processing.engine import process_events

    named, joined_good, joined_bad = handled_event(), handled_event(), handled_event()

    async def on_test_happened(conn, record, ctx):
        if record.id == joined_bad["id"]:
            raise RuntimeError("broken")

    registry = registries.replacing({TEST_TYPE: on_test_happened})
    for payload in (named, joined_good, joined_bad):
        await deliver(client, payload)

    outcome = await process_events(pool, [named["id"]], settings, fill_up_to=10, registry=registry)

    # The good ones do not wait for the sweeper: their own jobs already found them taken.
    assert sorted(outcome.processed) == sorted([named["id"], joined_good["id"]])
    for payload in (named, joined_good):
        assert (await status_of(conn, payload["id"]))["status"] == "processed"
    culprit = await status_of(conn, joined_bad["id"])
    assert (culprit["status"], culprit["attempts"]) == ("pending", 1)
    assert culprit["last_error"] == "RuntimeError: broken"


# --- Outages and stopping: our Worker (arq's, made to outlive its servers) --------------------


def own_worker(settings, pool, registry=None, **overrides) -> worker_module.Worker:
    options = worker_module.worker_settings(settings)
    options.update(cron_jobs=[], handle_signals=False, poll_delay=0.02,
                   ctx={"settings": settings, "pool": pool, "registry": registry or registries.product()})
    options.update(overrides)
    return worker_module.Worker(**options)


async def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


async def test_worker_rides_out_a_redis_outage_and_logs_it_once(settings, pool, conn, own_redis):
    settings = dataclasses.replace(settings, redis_url=own_redis.url)
    worker = own_worker(settings, pool, redis_settings=None, redis_pool=redis_pool(own_redis.url))
    with structlog.testing.capture_logs() as logs:
        running = asyncio.create_task(worker_module.run_worker_until_stopped(worker))
        await asyncio.sleep(0.3)
        own_redis.kill()
        await asyncio.sleep(2.0)  # many polls fail meanwhile
        own_redis.start()
        payload = ping_event()
        await insert_events(conn, [parse_event(signed(payload, WEBHOOK_SECRET)[0])])
        queue_client = redis_pool(own_redis.url)
        await enqueue_events(queue_client, settings.queue_name, [payload["id"]])
        await queue_client.aclose()
        await wait_for(lambda: status_is(conn, payload["id"], "ignored"))
        worker.handle_sig(signal.SIGTERM)
        await running
    events = [line["event"] for line in logs if line.get("dependency") == "redis"]
    assert events == ["dependency_unavailable", "dependency_available"]
    assert not running.exception()


async def test_jobs_leave_their_events_pending_while_postgres_is_down_and_say_so_once(settings, redis):
    broken = await create_pool(unreachable_postgres(), min_size=0)
    ctx = {"settings": settings, "pool": broken, "redis": redis,
           "engine": Engine(broken, settings, registries.product())}
    with structlog.testing.capture_logs() as logs:
        first = await worker_module.process_events(ctx, ["evt_a", "evt_b"])
        second = await worker_module.process_events(ctx, ["evt_c"])
        swept = await worker_module.requeue_stale_events(ctx)
    await worker_module.dependencies_of(ctx)["postgres"].close()
    await broken.close()
    assert (first, second, swept) == (None, None, None)
    assert [line["event"] for line in logs if line.get("dependency") == "postgres"] == ["dependency_unavailable"]
    assert worker_module.dependencies_of(ctx)["postgres"].failures == 1  # the others did not even try


async def status_is(conn, event_id: str, status: str) -> bool:
    return await conn.fetchval("SELECT status FROM stripe_events WHERE id = $1", event_id) == status


async def test_a_worker_that_is_behind_takes_its_next_batch_without_waiting_for_the_next_poll(
    conn, pool, settings, redis, monkeypatch
):
    """Live batches gather events between polls; a full batch, though, means more are due, and
    the worker goes on at once rather than idling out poll_delay (here far longer than the test)."""
    monkeypatch.setattr(worker_module, "FILL_BATCH_UP_TO", 3)
    payloads = [ping_event() for _ in range(8)]
    await insert_events(conn, [parse_event(signed(p, WEBHOOK_SECRET)[0]) for p in payloads])
    # One job names one event; its batch fills up with two more, and so on.
    await enqueue_events(redis, settings.queue_name, [payloads[0]["id"]])
    worker = own_worker(settings, pool, poll_delay=600)
    working = asyncio.create_task(worker_module.run_worker_until_stopped(worker))
    try:
        await wait_for(lambda: all_done(conn, [p["id"] for p in payloads]))
    finally:
        worker.handle_sig(signal.SIGTERM)
        await working
    assert worker.jobs_complete == 3  # 3 + 3 + 2 events, each batch its own poll


async def all_done(conn, event_ids: list[str]) -> bool:
    rows = await conn.fetch("SELECT status FROM stripe_events WHERE id = ANY($1::text[])", event_ids)
    return len(rows) == len(event_ids) and all(row["status"] != "pending" for row in rows)


async def test_a_workers_batches_take_turns(client, conn, pool, settings):
    # Two batches of one worker at once mostly waited on each other's locks; the second job's
    # batch starts only once the first one's has ended, and then takes the events left.
    first_running, release = asyncio.Event(), asyncio.Event()
    running, overlaps = [], []

    async def on_test_happened(conn, record, ctx):
        overlaps.append(len(running))
        running.append(record.id)
        if record.customer_id == "cus_turn_first":
            first_running.set()
            await release.wait()
        running.remove(record.id)

    registry = registries.replacing({TEST_TYPE: on_test_happened})
    first = event(TEST_TYPE, {"id": "obj_turn_1", "object": "thing", "customer": "cus_turn_first"})
    second = event(TEST_TYPE, {"id": "obj_turn_2", "object": "thing", "customer": "cus_turn_second"})
    await deliver(client, first)
    worker = own_worker(settings, pool, registry)
    working = asyncio.create_task(worker_module.run_worker_until_stopped(worker))
    await asyncio.wait_for(first_running.wait(), 20)
    await deliver(client, second)  # its own job, for another customer
    await asyncio.sleep(0.5)
    assert (await status_of(conn, second["id"]))["status"] == "pending"
    release.set()
    await wait_for(lambda: status_is(conn, second["id"], "processed"))
    worker.handle_sig(signal.SIGTERM)
    await working
    assert overlaps == [0, 0]


async def test_sigterm_lets_the_batch_in_hand_finish_then_stops(client, conn, pool, settings):
    started = asyncio.Event()

    async def on_test_happened(conn, record, ctx):
        started.set()
        await asyncio.sleep(0.5)

    registry = registries.replacing({TEST_TYPE: on_test_happened})
    payload = handled_event()
    await deliver(client, payload)
    worker = own_worker(settings, pool, registry)
    with structlog.testing.capture_logs() as logs:
        running = asyncio.create_task(worker_module.run_worker_until_stopped(worker))
        await asyncio.wait_for(started.wait(), 20)
        worker.handle_sig(signal.SIGTERM)
        await running
    assert (await status_of(conn, payload["id"]))["status"] == "processed"
    (stopped,) = [line for line in logs if line["event"] == "worker_stopped"]
    assert (stopped["signal"], stopped["jobs_complete"], stopped["handed_back"]) == ("SIGTERM", 1, 0)


async def test_sigterm_hands_back_a_batch_that_outlasts_the_wait_without_counting_an_attempt(
    client, conn, pool, settings, redis
):
    started, release = asyncio.Event(), asyncio.Event()

    async def on_test_happened(conn, record, ctx):
        started.set()
        await release.wait()

    registry = registries.replacing({TEST_TYPE: on_test_happened})
    payload = handled_event()
    await deliver(client, payload)
    worker = own_worker(settings, pool, registry, stop_wait=0.2)
    running = asyncio.create_task(worker_module.run_worker_until_stopped(worker))
    await asyncio.wait_for(started.wait(), 20)
    worker.handle_sig(signal.SIGTERM)
    await running
    assert worker.handed_back == 1
    row = await status_of(conn, payload["id"])
    assert (row["status"], row["attempts"], row["last_error"]) == ("pending", 0, None)
    # The job is still queued: the next worker takes it at once, not after a sweep.
    assert len(await redis.queued_jobs(queue_name=settings.queue_name)) == 1
    release.set()
    await run_worker_until_idle(settings, pool, registry)
    assert (await status_of(conn, payload["id"]))["status"] == "processed"


class CuttingProxy:
    """A TCP proxy to Redis that cuts the connection carrying each of the next `cuts` job claims
    (the claim script, by its SHA): the network failing just as the worker claims a job, after
    it has seen the job queued."""

    def __init__(self, port: int, cuts: int) -> None:
        self.port = port
        self.cuts = cuts
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"redis://:{REDIS_PASSWORD}@127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def _serve(self, client_reader, client_writer) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.port)

        async def pump(reader, writer, watching: bool) -> None:
            try:
                while data := await reader.read(65536):
                    if watching and self.cuts and CLAIM_SHA.encode() in data:
                        self.cuts -= 1
                        break
                    writer.write(data)
                    await writer.drain()
            except OSError:
                pass
            for side in (client_writer, upstream_writer):
                side.close()

        await asyncio.gather(pump(client_reader, upstream_writer, True), pump(upstream_reader, client_writer, False))

    async def stop(self) -> None:
        self.server.close()


async def test_redis_failing_while_a_job_starts_costs_no_job_slot(settings, pool, conn, own_redis):
    proxy = CuttingProxy(own_redis.port, cuts=3)
    url = await proxy.start()
    settings = dataclasses.replace(settings, redis_url=url)
    payload = ping_event()
    await insert_events(conn, [parse_event(signed(payload, WEBHOOK_SECRET)[0])])
    client = redis_pool(own_redis.url)
    await enqueue_events(client, settings.queue_name, [payload["id"]])
    await client.aclose()
    worker = own_worker(settings, pool, max_jobs=1, redis_settings=None, redis_pool=redis_pool(url))
    running = asyncio.create_task(worker_module.run_worker_until_stopped(worker))
    # With one slot, a slot lost to a failed claim would leave the worker unable to run any job.
    await wait_for(lambda: status_is(conn, payload["id"], "ignored"))
    worker.handle_sig(signal.SIGTERM)
    await running
    await proxy.stop()
    assert proxy.cuts == 0 and worker.redis_state.outages >= 1  # the claims did fail
    assert worker.job_counter == 0 and worker.jobs_complete == 1


async def test_two_batches_that_deadlock_both_end_processed_and_postgresql_is_not_taken_for_down(conn, pool, settings):
    # Two workers' batches lock shared rows in opposite orders (as two invoices sharing prices
    # can): PostgreSQL aborts one with a deadlock. That is no outage and no event's fault: the
    # aborted batch runs again, and both events end processed without an attempt counted.
    await conn.execute("CREATE TABLE shared_rows (id int PRIMARY KEY, n int NOT NULL)")
    await conn.execute("INSERT INTO shared_rows VALUES (1, 0), (2, 0)")
    both_hold_one = asyncio.Barrier(2)
    first_tries = set()

    async def on_test_happened(conn, record, ctx):
        first, second = (1, 2) if record.object["id"] == "obj_a" else (2, 1)
        await conn.execute("UPDATE shared_rows SET n = n + 1 WHERE id = $1", first)
        if record.id not in first_tries:
            first_tries.add(record.id)
            await asyncio.wait_for(both_hold_one.wait(), 10)
        await conn.execute("UPDATE shared_rows SET n = n + 1 WHERE id = $1", second)

    payloads = [event(TEST_TYPE, {"id": f"obj_{x}", "object": "thing", "customer": f"cus_{x}"}) for x in "ab"]
    await insert_events(conn, [parse_event(signed(p, WEBHOOK_SECRET)[0]) for p in payloads])
    engine = Engine(pool, settings, registries.replacing({TEST_TYPE: on_test_happened}))
    with structlog.testing.capture_logs() as logs:
        outcomes = await asyncio.gather(*(engine.run(Batch([p["id"]]), WORKER) for p in payloads))
    assert sorted(event_id for outcome in outcomes for event_id in outcome.processed) == sorted(p["id"] for p in payloads)
    for payload in payloads:
        row = await status_of(conn, payload["id"])
        assert (row["status"], row["attempts"], row["last_error"]) == ("processed", 0, None)
    assert [line["error"] for line in logs if line["event"] == "batch_conflict"] == ["DeadlockDetectedError"]
    assert await conn.fetchval("SELECT sum(n) FROM shared_rows") == 4
