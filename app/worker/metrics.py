"""The worker's Prometheus metrics, pushed through PostgreSQL so that the web's /metrics shows them.

A worker dyno has no port Prometheus could scrape on Heroku or as a Render background worker,
so each worker process writes its metrics to `worker_metrics` every PUSH_SECONDS and the web
process renders them with a `worker` label (app/http/metrics.py). Hooked into app/worker/jobs.py by
`instrument` (which times every job and starts the pusher) and `observe_outcome` (one line in
the `process_events` job). Each batch's events are counted and timed as soon as it finishes,
from what the batch knew of them (`Outcome.finished`: type, Stripe `created`, `received_at`
as its claim read it, `processed_at` as MARK_DONE stored it): their rows are never read again,
and nothing waits for the pusher, which only writes the snapshot. It also folds the per-minute
activity deltas (sql/0012) and prunes what is older than the history keeps.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import os
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from stripeline.logging import log
from stripeline.outages import STORE_DOWN
from stripeline.processing.engine import Outcome

PUSH_SECONDS = 10
CTX_KEY = "worker_metrics"
# The per-minute activity is folded and pruned on every this many pushes (about a minute).
MAINTAIN_EVERY = 6

# Stripe `created` is whole seconds and webhooks take a moment to arrive: wider buckets there.
RECEIVED_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
CREATED_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500)
JOB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

PUSH = """
INSERT INTO worker_metrics (worker, started_at, pushed_at, metrics) VALUES ($1, $2, now(), $3)
ON CONFLICT (worker) DO UPDATE SET started_at = EXCLUDED.started_at, pushed_at = now(), metrics = EXCLUDED.metrics
"""
# Workers gone for a day are forgotten (their last segment refresh with them).
FORGET_GONE_WORKERS = "DELETE FROM worker_metrics WHERE pushed_at < now() - interval '1 day'"

# Fold the per-minute deltas of the last hour into one row per minute, as stripeline.store.event_log folds
# the status counts: deltas committed meanwhile are not in the DELETE's snapshot and stay.
FOLD_MINUTES = """
WITH folded AS (
    DELETE FROM stripe_event_minutes WHERE minute >= date_trunc('minute', now()) - interval '1 hour'
    RETURNING minute, received, processed, failed
)
INSERT INTO stripe_event_minutes (minute, received, processed, failed)
SELECT minute, sum(received), sum(processed), sum(failed) FROM folded GROUP BY minute
"""
# GET /api/sync/history shows at most two days.
PRUNE_MINUTES = "DELETE FROM stripe_event_minutes WHERE minute < now() - interval '2 days'"


def worker_name() -> str:
    """$DYNO on Heroku (stable across restarts, as Prometheus likes), else host:pid."""
    return os.environ.get("DYNO") or f"{socket.gethostname()}:{os.getpid()}"


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.events = Counter(
            "stripeline_worker_events",
            "Events the worker finished, by type and outcome (processed, ignored, retrying, failed).",
            ["type", "outcome"],
            registry=registry,
        )
        self.received_to_processed = Histogram(
            "stripeline_worker_received_to_processed_seconds",
            "From an event's arrival (received_at) to its processing (processed_at).",
            buckets=RECEIVED_BUCKETS,
            registry=registry,
        )
        self.created_to_processed = Histogram(
            "stripeline_worker_created_to_processed_seconds",
            "From an event's creation at Stripe (created) to its processing: Stripe's delivery delay included.",
            buckets=CREATED_BUCKETS,
            registry=registry,
        )
        self.batch_events = Histogram(
            "stripeline_worker_batch_events",
            "Events one process_events job finished in one transaction (its own and those it filled up with).",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.job_seconds = Histogram(
            "stripeline_worker_job_duration_seconds",
            "Duration of the worker's jobs by name; process_events is one batch.",
            ["job"],
            buckets=JOB_BUCKETS,
            registry=registry,
        )
        self.job_failures = Counter(
            "stripeline_worker_job_failures",
            "Jobs that raised, by name (an event's own failure is recorded on the event, not here).",
            ["job"],
            registry=registry,
        )
        self.refreshed = Gauge(
            "stripeline_worker_segment_refresh_last_success_timestamp_seconds",
            "When this worker last finished a scheduled segment refresh (Unix time).",
            registry=registry,
        )
        ProcessCollector(namespace="stripeline_worker", registry=registry)
        self.started_at = datetime.now(timezone.utc)
        self.name = worker_name()

    def observe_outcome(self, outcome: Outcome) -> None:
        """Count and time the events a batch finished."""
        finished = [
            *((event_id, "processed") for event_id in outcome.processed),
            *((event_id, "ignored") for event_id in outcome.ignored),
            *((event_id, "failed") for event_id in outcome.failed),
            *((event_id, "retrying") for event_id, _ in outcome.retry),
        ]
        if not finished:
            return
        self.batch_events.observe(len(finished))
        counts: collections.Counter[tuple[str, str]] = collections.Counter()
        for event_id, status in finished:
            event = outcome.finished.get(event_id)
            if event is None:  # every event has one; but were one missing, a metric must not fail the job
                continue
            counts[event.type, status] += 1
            if event.processed_at is not None:
                if event.received_at is not None:
                    self.received_to_processed.observe(max((event.processed_at - event.received_at).total_seconds(), 0))
                self.created_to_processed.observe(max((event.processed_at - event.created).total_seconds(), 0))
        for (event_type, status), count in counts.items():  # one labelled increment per type, not per event
            self.events.labels(event_type, status).inc(count)

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {
                "name": family.name,
                "documentation": family.documentation,
                "type": family.type,
                "samples": [[sample.name, sample.labels, sample.value] for sample in family.samples],
            }
            for family in self.registry.collect()
        ]

    async def push(self, pool: asyncpg.Pool, maintain: bool = False) -> None:
        async with pool.acquire() as conn:
            await conn.execute(PUSH, self.name, self.started_at, self.snapshot())
            if maintain:
                await conn.execute(FOLD_MINUTES)
                await conn.execute(PRUNE_MINUTES)
                await conn.execute(FORGET_GONE_WORKERS)


async def _push_forever(metrics: WorkerMetrics, pool: asyncpg.Pool) -> None:
    pushes = 0
    failing = False
    while True:
        await asyncio.sleep(PUSH_SECONDS)
        pushes += 1
        try:
            await metrics.push(pool, maintain=pushes % MAINTAIN_EVERY == 0)
            failing = False
        except STORE_DOWN as problem:
            if not failing:  # one line per outage, not one per push
                log.warning("worker_metrics_not_pushed", error=type(problem).__name__)
            failing = True


def observe_outcome(ctx: dict[str, Any], outcome: Outcome) -> None:
    """The hook in the process_events job: count and time what the batch finished."""
    metrics = ctx.get(CTX_KEY)
    if metrics is not None:
        metrics.observe_outcome(outcome)


async def start(ctx: dict[str, Any]) -> None:
    previous = ctx.pop("metrics_pusher", None)
    if previous is not None:  # started again by a worker that reconnected: one pusher at a time
        previous.cancel()
    if CTX_KEY not in ctx:
        ctx[CTX_KEY] = WorkerMetrics()
    metrics = ctx[CTX_KEY]
    ctx["metrics_pusher"] = asyncio.create_task(_push_forever(metrics, ctx["pool"]))


async def stop(ctx: dict[str, Any]) -> None:
    """Push one last time, so that a short-lived worker's work shows too."""
    pusher = ctx.pop("metrics_pusher", None)
    if pusher is None:
        return
    pusher.cancel()
    await asyncio.gather(pusher, return_exceptions=True)
    try:
        await ctx[CTX_KEY].push(ctx["pool"])
    except STORE_DOWN as problem:
        log.warning("worker_metrics_not_pushed", error=type(problem).__name__)


Job = Callable[..., Awaitable[Any]]


def measured(job: Job) -> Job:
    """The job, timed and counted in the worker's metrics (arq knows it by the same name)."""
    name = job.__name__

    @functools.wraps(job)
    async def timed(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        metrics = ctx.get(CTX_KEY)
        try:
            result = await job(ctx, *args, **kwargs)
        except Exception:
            if metrics is not None:
                metrics.job_failures.labels(name).inc()
            raise
        finally:
            if metrics is not None:
                metrics.job_seconds.labels(name).observe(time.perf_counter() - started)
        # The refresh answers {"skipped": 1} when it was not yet due or another worker ran it.
        if metrics is not None and name == "refresh_segments" and "skipped" not in (result or {}):
            metrics.refreshed.set_to_current_time()
        return result

    return timed


def instrument(options: dict[str, Any]) -> dict[str, Any]:
    """arq Worker options with every job timed and the metrics pushed from start to stop."""
    startup, shutdown = options["on_startup"], options["on_shutdown"]

    async def on_startup(ctx: dict[str, Any]) -> None:
        await startup(ctx)
        await start(ctx)

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        await stop(ctx)
        await shutdown(ctx)

    return {
        **options,
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "functions": [measured(job) for job in options["functions"]],
        "cron_jobs": [dataclasses.replace(job, coroutine=measured(job.coroutine)) for job in options["cron_jobs"]],
    }
