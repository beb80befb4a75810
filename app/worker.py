"""The arq worker: jobs and crons. Everything a job needs arrives through `ctx`.

It outlives its servers. While Redis is down or frozen the poll loop backs off and retries;
while PostgreSQL is down jobs leave their events pending (the sweeper enqueues them again once
it is back). Each outage is logged once when it starts and once when it ends, and the worker
never exits for one. On SIGTERM or SIGINT it stops taking jobs, gives the ones it holds
STOP_WAIT_SECONDS to finish and hands the rest back (their transactions roll back, so no
attempt is counted, and arq leaves their jobs queued for the next worker), then exits 0.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from arq import cron
from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker as ArqWorker
from redis.exceptions import ResponseError, WatchError

from app import events, queue
from app.db import create_pool
from app.garbage import quiet_garbage_collector
from app.logging import configure_logging, log
from app.outages import Backoff, Dependency, dependency_of, is_outage
from app.outbound import check_segment_webhook, deliver_segment_webhooks
from app.processing import process_events as process_stored_events
from app.segment_jobs import refresh_segments
from app.settings import Settings

# Pending events older than this were probably never enqueued (Redis was down at ingest).
STALE_AFTER_SECONDS = 5
SWEEP_BATCH = 500
# A job also takes other due pending events, up to this many in one transaction.
FILL_BATCH_UP_TO = 500
# While the queue is this deep the worker is simply behind: pending events are expected.
BUSY_QUEUE_DEPTH = 100
# On SIGTERM, how long the jobs in hand get to finish before they are handed back (Heroku
# sends SIGKILL 30 s after SIGTERM).
STOP_WAIT_SECONDS = 20

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
            if not is_outage(error):
                raise
            dependencies[dependency_of(error)].failed(error)
            return None

    return guarded


@outliving_outages
async def process_events(ctx: dict[str, Any], event_ids: list[str]) -> dict[str, int]:
    settings: Settings = ctx["settings"]
    outcome = await process_stored_events(ctx["pool"], event_ids, settings, fill_up_to=FILL_BATCH_UP_TO)
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


@outliving_outages
async def requeue_stale_events(ctx: dict[str, Any]) -> int:
    """Enqueue pending events that no job is carrying, so nothing stored is ever stranded.

    Each sweep's jobs get ids of their own: a job id that is still queued (its worker was
    killed holding it, so it waits for arq's in-progress key to expire) must not keep the
    events it names from being enqueued again. Processing twice is harmless.

    Also folds the event count deltas (app.events), busy or not: every statement adds one.
    """
    settings: Settings = ctx["settings"]
    async with ctx["pool"].acquire() as conn:
        await events.fold_counts(conn)
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


async def _select_one(ctx: dict[str, Any]) -> None:
    async with asyncio.timeout(2):
        async with ctx["pool"].acquire() as conn:
            await conn.fetchval("SELECT 1")


def dependencies_of(ctx: dict[str, Any]) -> dict[str, Dependency]:
    """This worker's view of its servers, kept in `ctx` (made on first use)."""
    if "dependencies" not in ctx:
        ctx["dependencies"] = {
            "postgres": Dependency("postgres", probe=lambda: _select_one(ctx)),
            "redis": Dependency("redis"),  # the poll loop is its probe
        }
    return ctx["dependencies"]


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx.get("settings") or Settings.from_env()
    ctx["settings"] = settings
    if "pool" not in ctx:
        # min_size=0: the worker starts while PostgreSQL is down, and waits for it.
        ctx["pool"] = await create_pool(settings.database_url, min_size=0, max_size=12)
        ctx["owns_pool"] = True
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
]
FUNCTIONS: list = [process_events, outliving_outages(refresh_segments), outliving_outages(deliver_segment_webhooks)]


def worker_settings(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for arq's Worker, built from our settings."""
    return {
        "functions": FUNCTIONS,
        "cron_jobs": CRON_JOBS,
        "on_startup": startup,
        "on_shutdown": shutdown,
        "redis_settings": queue.redis_settings(settings.redis_url),
        "queue_name": settings.queue_name,
        "ctx": {"settings": settings},
        "max_jobs": 8,
        # arq starts new jobs only when it polls; at its default 0.5 s a busy worker ran at most
        # 16 jobs/s (about 300 events/s) while idle in between (bench/pipeline.py).
        "poll_delay": 0.02,
        "keep_result": 0,
        "job_timeout": 300,
        # Retries of failed events are ours (attempts and backoff live on the event row); arq
        # runs a job again only when it was handed back on SIGTERM, which is not an attempt.
        "max_tries": 10,
        "handle_signals": True,
    }


class Worker(ArqWorker):
    """arq's Worker, made to outlive Redis outages and to stop without losing a batch.

    arq's own loop ends at the first Redis error (a one-second blip stopped the worker for
    good), leaks a job slot when Redis fails while a job starts, and on SIGTERM cancels the
    jobs it holds at once. This one backs off and polls again, gives the slot back, and lets
    the jobs finish (module docstring).
    """

    def __init__(self, *args: Any, stop_wait: float = STOP_WAIT_SECONDS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stop_wait = stop_wait
        self.stop_reason: str | None = None
        self.handed_back = 0
        self._stopping = asyncio.Event()
        self._backoff = Backoff()
        # Jobs that met a Redis outage: their in-progress keys may outlive them (and block the
        # job for job_timeout + 10 s), so they are deleted once Redis answers.
        self._orphaned: set[str] = set()

    @property
    def redis_state(self) -> Dependency:
        return dependencies_of(self.ctx)["redis"]

    async def main(self) -> None:
        # arq's main, less its first round trip (Redis INFO), which fails while Redis is down.
        if self._pool is None:
            self._pool = queue.redis_pool(self.ctx["settings"].redis_url)
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        pool = self.ctx.get("pool")
        log.info(
            "worker_started",
            queue=self.queue_name,
            concurrency=self.max_jobs,
            pool_size=pool.get_max_size() if pool is not None else None,
        )
        while not self._stopping.is_set():
            await self._poll_iteration()
            if self.burst and await self._burst_done():
                return
            await self._pause(self.poll_delay_s)

    async def _burst_done(self) -> bool:
        if 0 <= self.max_burst_jobs <= self._jobs_started() or await self.pool.zcard(self.queue_name) == 0:
            await asyncio.gather(*self.tasks.values())
            return True
        return False

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
            if self._orphaned:
                orphaned, self._orphaned = self._orphaned, set()
                await self.pool.delete(*(in_progress_key_prefix + job_id for job_id in orphaned))
        except Exception as error:
            if not is_outage(error):
                raise
            self.redis_state.failed(error)
            await self._pause(self._backoff.next())
            return
        self.redis_state.answered()
        self._backoff.reset()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's start_jobs, except that a job slot taken for a job that does not start (Redis
        failed while claiming it) is given back: arq's leaked one per failure, and after
        max_jobs failures the worker never started a job again."""
        for job_id in job_ids:
            await self.sem.acquire()
            if self.job_counter >= self.max_jobs:
                self.sem.release()
                return
            self.job_counter += 1
            score = None
            try:
                score = await self._claim(job_id.decode())
            finally:
                if score is None:
                    self.job_counter -= 1
                    self.sem.release()
            if score is not None:
                task = self.loop.create_task(self.run_job(job_id.decode(), score))
                task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
                self.tasks[job_id.decode()] = task

    async def _claim(self, job_id: str) -> int | None:
        """Set arq's in-progress key for a due job; its score, or None when it is not ours to run."""
        key = in_progress_key_prefix + job_id
        score = None
        try:
            async with self.pool.pipeline(transaction=True) as pipe:
                await pipe.watch(key)
                running_elsewhere = await pipe.exists(key)
                queued = await pipe.zscore(self.queue_name, job_id)
                if running_elsewhere or not queued or queued > timestamp_ms():
                    return None
                pipe.multi()
                pipe.psetex(key, int(self.in_progress_timeout_s * 1000), b"1")
                try:
                    await pipe.execute()
                except (ResponseError, WatchError) as error:
                    if is_outage(error):
                        raise
                    return None  # another worker claimed it first
                score = int(queued)
        except Exception as error:
            if score is None:
                if is_outage(error):
                    self._orphaned.add(job_id)  # the claim may have gone through
                raise
            # Only resetting the pipeline failed: the claim stands.
        return score

    async def run_job(self, job_id: str, score: int) -> None:
        try:
            await super().run_job(job_id, score)
        except Exception as error:
            if not is_outage(error):
                raise
            # Redis failed while arq fetched the job or recorded its end. Its events are safe in
            # PostgreSQL (pending ones are swept again); its in-progress key may linger.
            self._orphaned.add(job_id)
            self.redis_state.failed(error)

    def handle_sig(self, signum: int) -> None:
        """SIGTERM or SIGINT: take no more jobs; `close` lets the ones in hand finish."""
        if self.stop_reason is None:
            self.stop_reason = signal.Signals(signum).name
            log.info("worker_stopping", signal=self.stop_reason, jobs_in_hand=sum(not t.done() for t in self.tasks.values()))
        self.allow_pick_jobs = False
        self._stopping.set()

    async def close(self) -> None:
        held = [task for task in self.tasks.values() if not task.done()]
        if held:
            _, unfinished = await asyncio.wait(held, timeout=self.stop_wait)
            for task in unfinished:
                task.cancel()  # its transaction rolls back; arq leaves the job queued
            self.handed_back = len(unfinished)
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        if self._pool is None:
            return
        try:
            await self.pool.delete(self.health_check_key)
        except Exception as error:
            if not is_outage(error):
                raise
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        await self.pool.aclose(close_connection_pool=True)
        self._pool = None


async def run_worker(settings: Settings) -> None:
    settings.require("DATABASE_URL", "REDIS_URL")
    await run_worker_until_stopped(Worker(**worker_settings(settings)))


async def run_worker_until_stopped(worker: Worker) -> None:
    """Run until a signal (or `handle_sig`) stops it; then one line says how it ended."""
    try:
        await worker.main()
    finally:
        await worker.close()
        log.info(
            "worker_stopped",
            signal=worker.stop_reason,
            jobs_complete=worker.jobs_complete,
            jobs_failed=worker.jobs_failed,
            handed_back=worker.handed_back,
        )


def main(settings: Settings) -> None:
    configure_logging(settings)
    quiet_garbage_collector()
    asyncio.run(run_worker(settings))
