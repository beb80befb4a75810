"""Group commit for webhooks: many concurrent requests share one INSERT and one enqueue.

Each request hands its verified event to the Ingestor and waits. A flusher takes whatever
has gathered (up to MAX_BATCH), stores it in one statement, enqueues one arq job for the new
events, and only then releases the waiting requests. Under load, batches grow by themselves;
alone, a request waits for nothing but its own round trip. An event is acknowledged only after
its row is committed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import asyncpg
from arq.connections import ArqRedis

from app import events, queue
from app.logging import log

MAX_BATCH = 256
FLUSHERS = 2


class StoreUnavailable(Exception):
    """PostgreSQL could not store the event; Stripe should retry later."""


@dataclass(slots=True)
class _Pending:
    event: events.EventRecord
    future: asyncio.Future


class Ingestor:
    def __init__(self, pool: asyncpg.Pool, redis: ArqRedis, queue_name: str, metrics=None):
        self._pool = pool
        self._redis = redis
        self._queue_name = queue_name
        self._metrics = metrics
        self._waiting: asyncio.Queue[_Pending] = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run()) for _ in range(FLUSHERS)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def submit(self, event: events.EventRecord) -> bool:
        """Store and enqueue one event; return True when it was already stored (a duplicate)."""
        future = asyncio.get_running_loop().create_future()
        await self._waiting.put(_Pending(event, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._waiting.get()]
            while len(batch) < MAX_BATCH and not self._waiting.empty():
                batch.append(self._waiting.get_nowait())
            try:
                await self._flush(batch)
            except Exception as error:  # noqa: BLE001 - every waiter must hear back
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(error)

    async def _flush(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        # A repeat inside one batch is a duplicate of its first occurrence.
        first: dict[str, events.EventRecord] = {}
        for item in batch:
            first.setdefault(item.event.id, item.event)
        try:
            async with self._pool.acquire() as conn:
                new_ids = await events.insert_events(conn, list(first.values()))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError) as error:
            log.warning("events_not_stored", count=len(batch), error=type(error).__name__)
            raise StoreUnavailable() from error
        stored_at = time.perf_counter()
        new_in_order = [e.id for e in first.values() if e.id in new_ids]
        enqueued = await self._enqueue(new_in_order)
        answered = set()
        for item in batch:
            duplicate = item.event.id not in new_ids or item.event.id in answered
            answered.add(item.event.id)
            if not item.future.done():
                item.future.set_result(duplicate)
        if self._metrics is not None:
            self._metrics.observe_ingest(len(batch), len(new_in_order))
        log.debug(
            "events_stored",
            count=len(batch),
            new=len(new_in_order),
            enqueued=enqueued,
            store_ms=round((stored_at - started) * 1000, 2),
            total_ms=round((time.perf_counter() - started) * 1000, 2),
        )

    async def _enqueue(self, event_ids: list[str]) -> bool:
        """Enqueue stored events; if Redis is down they stay pending and the sweeper enqueues them."""
        if not event_ids:
            return True
        try:
            await asyncio.wait_for(queue.enqueue_events(self._redis, self._queue_name, event_ids), timeout=2)
            return True
        except Exception as error:  # noqa: BLE001 - Redis trouble never fails a stored event
            log.warning("events_not_enqueued", count=len(event_ids), error=type(error).__name__)
            return False
