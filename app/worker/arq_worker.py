"""arq's Worker, made to outlive its servers and to stop without losing a batch.

arq's own loop ends at the first Redis error (a one-second blip stopped the worker for good),
leaks a job slot whenever Redis fails while a job is claimed (after `max_jobs` such failures
the worker never starts a job again), and on SIGTERM cancels the jobs it holds at once. This
one backs off and polls again, gives the slot back, and lets the jobs in hand finish.

A job's `ctx["dependencies"]` holds this process's view of PostgreSQL and Redis (stripeline.outages):
each outage is logged once when it starts and once when it ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
from typing import Any

from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker as ArqWorker
from redis.exceptions import NoScriptError

from stripeline.logging import log
from stripeline.outages import Backoff, Dependency, is_outage, ping_postgres
from stripeline.store import queue

# arq's claim of a job (WATCH the in-progress key, EXISTS, ZSCORE, MULTI/PSETEX/EXEC: four
# round trips, a sixth of the worker's time with the polling) in one round trip, atomic in
# Redis: the same keys, the same rule (not running elsewhere, still queued, due by our clock).
CLAIM_SCRIPT = """
if redis.call('exists', KEYS[1]) == 1 then return false end
local score = redis.call('zscore', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return false end
redis.call('psetex', KEYS[1], ARGV[3], '1')
return score
"""
CLAIM_SHA = hashlib.sha1(CLAIM_SCRIPT.encode()).hexdigest()

# On SIGTERM, how long the jobs in hand get to finish before they are handed back (Heroku
# sends SIGKILL 30 s after SIGTERM).
STOP_WAIT_SECONDS = 20


def dependencies_of(ctx: dict[str, Any]) -> dict[str, Dependency]:
    """This worker's view of its servers, kept in `ctx` (made on first use)."""
    if "dependencies" not in ctx:
        ctx["dependencies"] = {
            "postgres": Dependency("postgres", probe=lambda: ping_postgres(ctx["pool"])),
            "redis": Dependency("redis"),  # the poll loop is its probe
        }
    return ctx["dependencies"]


class Worker(ArqWorker):
    """arq's Worker that backs off through Redis outages and finishes (or hands back) its jobs on SIGTERM."""

    def __init__(self, *args: Any, stop_wait: float = STOP_WAIT_SECONDS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stop_wait = stop_wait
        self.stop_reason: str | None = None
        self.handed_back = 0
        self._stopping = asyncio.Event()
        # Set by a job that leaves more work due (`poll_soon`), or by a signal: the pause
        # between polls ends early.
        self._wake = asyncio.Event()
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
        self.ctx["poll_soon"] = self.poll_soon
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
            await self._pause(self.poll_delay_s, wakeable=True)

    def poll_soon(self) -> None:
        """Poll again without waiting out poll_delay: a job left work due (a full batch had more
        events behind it), and the worker should not idle while it is behind."""
        self._wake.set()

    async def _burst_done(self) -> bool:
        if 0 <= self.max_burst_jobs <= self._jobs_started() or await self.pool.zcard(self.queue_name) == 0:
            await asyncio.gather(*self.tasks.values())
            return True
        return False

    async def _pause(self, seconds: float, wakeable: bool = False) -> None:
        """Wait `seconds`, or less when stopped (or, if `wakeable`, when `poll_soon` is called)."""
        wake = self._wake if wakeable else self._stopping
        try:
            await asyncio.wait_for(wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass
        self._wake.clear()

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
        keys = (in_progress_key_prefix + job_id, self.queue_name)
        arguments = (job_id, timestamp_ms(), int(self.in_progress_timeout_s * 1000))
        try:
            try:
                score = await self.pool.evalsha(CLAIM_SHA, len(keys), *keys, *arguments)
            except NoScriptError:
                score = await self.pool.eval(CLAIM_SCRIPT, len(keys), *keys, *arguments)
        except Exception as error:
            if is_outage(error):
                self._orphaned.add(job_id)  # the claim may have gone through
            raise
        return None if score is None else int(float(score))

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
        self._wake.set()

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
