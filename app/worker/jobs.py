"""The arq worker: jobs and crons. Everything a job needs arrives through `ctx`.

It outlives its servers. While Redis is down or frozen the poll loop backs off and retries
(app.arq_worker); while PostgreSQL is down jobs leave their events pending (the sweeper
enqueues them again once it is back). Each outage is logged once when it starts and once when
it ends, and the worker never exits for one. On SIGTERM or SIGINT it stops taking jobs, gives
the ones it holds STOP_WAIT_SECONDS to finish and hands the rest back (their transactions roll
back, so no attempt is counted, and arq leaves their jobs queued for the next worker), then
exits 0 with a line saying so.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

from arq import cron

from stripeline import event_loop
from stripeline.garbage import quiet_garbage_collector
from stripeline.handlers import registry
from stripeline.logging import configure_logging, log
from stripeline.outages import dependency_of, is_conflict, is_outage
from stripeline.processing.engine import WORKER, Batch, Engine
from stripeline.settings import Settings
from stripeline.store import event_log, queue
from stripeline.store.db import open_pool
from stripeline.worker import metrics as worker_metrics
from stripeline.worker.arq_worker import Worker, dependencies_of, run_worker_until_stopped
from stripeline.worker.billing_jobs import settle_billing
from stripeline.worker.outbound import check_segment_webhook, deliver_segment_webhooks
from stripeline.worker.segment_jobs import refresh_segments

# Pending events older than this were probably never enqueued (Redis was down at ingest).
STALE_AFTER_SECONDS = 5
SWEEP_BATCH = 500
# A job also takes other due pending events, up to this many in one transaction.
FILL_BATCH_UP_TO = 500
# While the queue is this deep the worker is simply behind: pending events are expected.
BUSY_QUEUE_DEPTH = 100

STALE_PENDING = """
SELECT id FROM stripe_events
WHERE status = 'pending'
  AND received_at < now() - make_interval(secs => $1)
  AND (next_attempt_at IS NULL OR next_attempt_at <= now())
ORDER BY created, id
LIMIT $2
"""


Job = Callable[..., Awaitable[Any]]


def outliving_outages(job: Job) -> Job:
    """Skip the job while PostgreSQL is known to be down; report an outage it meets instead of failing.

    Every job's work is redone later by design: events stay pending until processed (the
    sweeper enqueues them again), crons run again on their next tick.
    """

    @functools.wraps(job)
    async def guarded(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        dependencies = dependencies_of(ctx)
        if not dependencies["postgres"].up:
            return None
        try:
            return await job(ctx, *args, **kwargs)
        except Exception as error:
            if is_conflict(error):
                # Met another transaction on the same rows: PostgreSQL is up; the work is redone.
                log.info("job_conflict", job=job.__name__, error=type(error).__name__)
                return None
            if not is_outage(error):
                raise
            dependencies[dependency_of(error)].failed(error)
            return None

    return guarded


def batch_turn(ctx: dict[str, Any]) -> asyncio.Lock:
    """The turn this worker's event batches take one after another (made at start-up, or on
    first use by a caller that builds its own ctx)."""
    if "batch_turn" not in ctx:
        ctx["batch_turn"] = asyncio.Lock()
    return ctx["batch_turn"]


@outliving_outages
async def process_events(ctx: dict[str, Any], event_ids: list[str]) -> dict[str, int]:
    settings: Settings = ctx["settings"]
    # One batch at a time per worker: concurrent batches of one process mostly waited on each
    # other's customer locks and shared price rows (two thirds of their PostgreSQL time in
    # bench/pipeline.py), in many small transactions. A job that waited here finds its events
    # done by the batch before it, which filled up with them, and takes what is pending since.
    async with batch_turn(ctx):
        outcome = await ctx["engine"].run(Batch(event_ids, fill_up_to=FILL_BATCH_UP_TO), WORKER)
    worker_metrics.observe_outcome(ctx, outcome)
    if outcome.claimed >= FILL_BATCH_UP_TO:
        # A full batch may have left due events behind that no queued job names: those the web
        # let join this job (app/store/queue.py). The next job takes them, and goes on so.
        await queue.enqueue_events(
            ctx["redis"], settings.queue_name, event_ids, job_id=f"more:{time.time_ns()}", join_open_job=True
        )
        ctx.get("poll_soon", _no_poll)()  # behind: take that job now, not after poll_delay
    for event_id, delay in outcome.retry:
        await queue.enqueue_events(
            ctx["redis"], settings.queue_name, [event_id], defer_seconds=delay, job_id=f"retry:{event_id}:{time.time_ns()}"
        )
    return {
        "processed": len(outcome.processed),
        "ignored": len(outcome.ignored),
        "failed": len(outcome.failed),
        "retrying": len(outcome.retry),
    }


def _no_poll() -> None:
    """`poll_soon` for a ctx built without our Worker (tests that call jobs directly)."""


@outliving_outages
async def requeue_stale_events(ctx: dict[str, Any]) -> int:
    """Enqueue pending events that no job is carrying, so nothing stored is ever stranded.

    Each sweep's jobs get ids of their own: a job id that is still queued (its worker was
    killed holding it, so it waits for arq's in-progress key to expire) must not keep the
    events it names from being enqueued again. Processing twice is harmless.

    Also folds the event count deltas (stripeline.store.event_log), busy or not: every statement adds one.
    """
    settings: Settings = ctx["settings"]
    async with ctx["pool"].acquire() as conn:
        await event_log.fold_counts(conn)
    if await ctx["redis"].zcard(settings.queue_name) > BUSY_QUEUE_DEPTH:
        return 0
    total = 0
    async with ctx["pool"].acquire() as conn:
        ids = [row["id"] for row in await conn.fetch(STALE_PENDING, float(STALE_AFTER_SECONDS), SWEEP_BATCH * 10)]
    sweep = time.time_ns()
    for start in range(0, len(ids), SWEEP_BATCH):
        chunk = ids[start : start + SWEEP_BATCH]
        await queue.enqueue_events(ctx["redis"], settings.queue_name, chunk, job_id=f"sweep:{sweep}:{start}")
        total += len(chunk)
    if total:
        log.info("stale_events_requeued", count=total)
    return total


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx.get("settings") or Settings.from_env()
    ctx["settings"] = settings
    if "pool" not in ctx:
        # min_size=0: the worker starts while PostgreSQL is down, and waits for it.
        ctx["pool"] = await open_pool(settings, "worker", min_size=0)
        ctx["owns_pool"] = True
    # Set once, as arq intends: the handlers every job applies events through (a test may hand in its own).
    ctx["engine"] = Engine(ctx["pool"], settings, ctx.get("registry") or registry())
    # Made here, in the worker's own ctx: arq hands each job a copy of it.
    batch_turn(ctx)
    dependencies_of(ctx)
    for hook in WORKER_STARTUP:
        await hook(ctx)


async def shutdown(ctx: dict[str, Any]) -> None:
    for dependency in ctx.get("dependencies", {}).values():
        await dependency.close()
    if ctx.get("owns_pool"):
        await ctx["pool"].close()


# Extra start-up steps (e.g. an HTTP client for outbound webhooks) register here.
WORKER_STARTUP: list = [check_segment_webhook]

# Periodic jobs beyond the sweeper register here (e.g. the segment refresh).
CRON_JOBS: list = [
    cron(requeue_stale_events, second=set(range(0, 60, 10)), run_at_startup=True, unique=True),
    # Ticks every 5 s; runs at most once per STRIPELINE_SEGMENT_REFRESH_SECONDS (see the job).
    cron(outliving_outages(refresh_segments), second=set(range(0, 60, 5)), run_at_startup=True, unique=True),
    cron(outliving_outages(deliver_segment_webhooks), second=set(range(2, 60, 5)), unique=True),
    # What an import that died before its end left unsettled (MRR, last payment).
    cron(outliving_outages(settle_billing), second=set(range(7, 60, 10)), unique=True),
]
FUNCTIONS: list = [process_events, outliving_outages(refresh_segments), outliving_outages(deliver_segment_webhooks)]


def worker_settings(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for arq's Worker, built from our settings."""
    options = {
        "functions": FUNCTIONS,
        "cron_jobs": CRON_JOBS,
        "on_startup": startup,
        "on_shutdown": shutdown,
        "redis_settings": queue.redis_settings(settings.redis_url),
        "queue_name": settings.queue_name,
        "ctx": {"settings": settings},
        "max_jobs": 8,
        # arq starts new jobs only when it polls. Each poll's job takes every event due by then
        # (up to FILL_BATCH_UP_TO), and a batch costs about the same few milliseconds of
        # statements, commit and Redis whatever its size. Polling every 0.02 s made live batches
        # of 50-60 events at 2,000-2,500 events/s; every 0.1 s, 225-310; every 0.2 s, 445, and
        # the worker's CPU per event fell from 0.13-0.22 ms to 0.07-0.08 and its PostgreSQL's
        # from 0.17-0.24 to 0.09-0.10 (bench/pipeline.py, alternated), for 0.1 s more lag on
        # average. A worker that is behind does not wait: a full batch calls `poll_soon`
        # (app/worker/arq_worker.py).
        "poll_delay": 0.2,
        "keep_result": 0,
        "job_timeout": 300,
        # Retries of failed events are ours (attempts and backoff live on the event row); arq
        # runs a job again only when it was handed back on SIGTERM, which is not an attempt.
        "max_tries": 10,
        "handle_signals": True,
    }
    return worker_metrics.instrument(options)


async def run_worker(settings: Settings) -> None:
    settings.require("DATABASE_URL", "REDIS_URL")
    await run_worker_until_stopped(Worker(**worker_settings(settings)))


def main(settings: Settings) -> None:
    configure_logging(settings)
    quiet_garbage_collector()
    event_loop.run(run_worker(settings))
