"""Group commit for webhooks: many concurrent requests share one INSERT and one enqueue.

Each request hands its verified event to the Ingestor and waits. A flusher takes whatever
has gathered (up to MAX_BATCH) and stores it in one statement; the enqueuer takes every batch
stored since its last turn and enqueues one arq job for their new events (or lets them join
the queued job no worker has claimed yet: app/store/queue.py), and only then releases their
waiting requests. The two run side by side: while Redis answers for one batch, the next is
being stored. Under load, batches grow by themselves; alone, a request waits for nothing but
its own round trips. An event is acknowledged only after its row is committed and the enqueue
was tried; a duplicate or a refused event is answered as soon as its batch is stored.

Faults: an event whose values PostgreSQL refuses is refused alone (400) and the rest of its
batch is stored. A connection that died under the flusher (a terminated backend, a restart) is
replaced and the batch tried once more; only a real outage answers 503. Enqueueing never holds
an acknowledgement hostage: Redis gets ENQUEUE_WAIT_SECONDS, and while it is known to be down
(or frozen) new events are left pending for the worker's sweeper, with one probe per backoff
step to notice its return. Each outage is logged once when it starts and once when it ends.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import asyncpg
from arq.connections import ArqRedis

from stripeline.logging import log
from stripeline.model import events
from stripeline.outages import Backoff, Dependency, blames_content, is_connection_lost
from stripeline.store import event_log, queue

MAX_BATCH = 256
# Flushers at work at once. Each statement and commit costs PostgreSQL about 0.2 ms whatever its
# size, so fewer, larger INSERTs are cheaper. With the enqueue out of the flusher's loop (the
# enqueuer answers for Redis meanwhile), one flusher stored 5.5-5.8 events per INSERT at 16
# connections and the whole pipeline used 0.411-0.419 ms of CPU per event, 3,527-3,538 events/s
# end to end; two flushers 3.9-4.0 per INSERT, 0.448-0.484 ms, 3,179-3,328/s; before the
# enqueuer (two flushers, each waiting for Redis) 5.0-5.1, 0.448-0.457 ms, 3,172-3,279/s
# (bench/pipeline.py, alternated, 2026-11-30 17:07-17:12 UTC).
FLUSHERS = 1


class StoreUnavailable(Exception):
    """PostgreSQL could not store the event; Stripe should retry later."""


# Redis answers in well under a millisecond; one that has not answered by then is frozen or
# gone, and the sweeper will enqueue the stored events instead.
ENQUEUE_WAIT_SECONDS = 0.5

# How often a summary line reports what the flushers did (per-event lines are debug).
SUMMARY_EVERY_SECONDS = 10.0


@dataclass(slots=True)
class _Pending:
    event: events.EventRecord
    future: asyncio.Future


@dataclass(slots=True)
class _Stored:
    """A stored batch waiting for the enqueuer: its new events' ids, in order, and who waits on them."""

    new_ids: list[str]
    waiting: list[_Pending] = field(default_factory=list)


@dataclass(slots=True)
class _Flusher:
    # Held between batches: giving a connection back to the pool costs a round trip (its reset).
    conn: asyncpg.Connection | None = None


@dataclass(slots=True)
class _Tally:
    batches: int = 0
    events: int = 0
    new: int = 0
    not_enqueued: int = 0
    since: float = 0.0


class Ingestor:
    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: ArqRedis,
        queue_name: str,
        metrics=None,
        *,
        postgres: Dependency | None = None,
        redis_state: Dependency | None = None,
    ):
        self._pool = pool
        self._redis = redis
        self._queue_name = queue_name
        self._metrics = metrics
        self.postgres = postgres or Dependency("postgres")
        self.redis = redis_state or Dependency("redis")
        self._redis_backoff = Backoff(first=0.5)
        self._next_redis_probe = 0.0
        self._waiting: asyncio.Queue[_Pending] = asyncio.Queue()
        self._stored: asyncio.Queue[_Stored] = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self._tally = _Tally(since=time.monotonic())

    async def start(self) -> None:
        # Each flusher holds a connection for good: leave two for /readyz and the API.
        flushers = max(1, min(FLUSHERS, self._pool.get_max_size() - 2))
        self._tasks = [asyncio.create_task(self._run(_Flusher())) for _ in range(flushers)]
        self._tasks.append(asyncio.create_task(self._run_enqueuer()))
        self._tasks.append(asyncio.create_task(self._report()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._summarise(force=True)

    async def _report(self) -> None:
        """The summary line on a timer: a burst is reported when it ends, not at the next webhook."""
        while True:
            await asyncio.sleep(SUMMARY_EVERY_SECONDS)
            self._summarise()

    async def submit(self, event: events.EventRecord) -> bool:
        """Store and enqueue one event; return True when it was already stored (a duplicate).

        Raises StoreUnavailable when PostgreSQL is down, InvalidEvent when it refuses the event.
        """
        future = asyncio.get_running_loop().create_future()
        self._waiting.put_nowait(_Pending(event, future))
        return await future

    async def _run(self, flusher: _Flusher) -> None:
        try:
            while True:
                batch = [await self._waiting.get()]
                while len(batch) < MAX_BATCH and not self._waiting.empty():
                    batch.append(self._waiting.get_nowait())
                try:
                    await self._flush(flusher, batch)
                except Exception as error:  # noqa: BLE001 - every waiter must hear back
                    if not isinstance(error, StoreUnavailable):
                        log.error("events_not_stored", count=len(batch), error=type(error).__name__, exc_info=True)
                        error = StoreUnavailable()
                    await self._let_go(flusher)
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(error)
        finally:
            await self._let_go(flusher)

    async def _let_go(self, flusher: _Flusher) -> None:
        """Give the flusher's connection back (a broken one is closed by the pool)."""
        conn, flusher.conn = flusher.conn, None
        if conn is not None:
            try:
                await self._pool.release(conn)
            except Exception as error:  # noqa: BLE001 - the pool has closed it; nothing to do
                log.warning("ingest_connection_not_released", error=type(error).__name__)

    async def _flush(self, flusher: _Flusher, batch: list[_Pending]) -> None:
        """Store a batch, answer its duplicates and refused events, and hand the rest to the enqueuer."""
        started = time.perf_counter()
        # A repeat inside one batch is a duplicate of its first occurrence.
        first: dict[str, events.EventRecord] = {}
        for item in batch:
            first.setdefault(item.event.id, item.event)
        new_ids, refused = await self._store_once_more_if_lost(flusher, list(first.values()))
        stored = _Stored([event_id for event_id in first if event_id in new_ids])
        answered = set()
        for item in batch:
            event_id = item.event.id
            if item.future.done():
                continue
            if event_id in refused:
                item.future.set_exception(events.InvalidEvent(refused[event_id]))
            elif event_id in new_ids and event_id not in answered:
                stored.waiting.append(item)
                answered.add(event_id)
            else:
                item.future.set_result(True)
        if self._metrics is not None:
            self._metrics.observe_ingest(len(batch) - len(refused), len(stored.new_ids))
        log.debug(
            "events_stored",
            count=len(batch),
            new=len(stored.new_ids),
            store_ms=round((time.perf_counter() - started) * 1000, 2),
        )
        tally = self._tally
        tally.batches += 1
        tally.events += len(batch)
        tally.new += len(stored.new_ids)
        self._summarise()
        if stored.new_ids:  # enqueued even when no one waits any more (a client that went away)
            self._stored.put_nowait(stored)

    async def _run_enqueuer(self) -> None:
        """Enqueue what the flushers stored, every batch stored meanwhile in one call, then answer."""
        taken: list[_Stored] = []
        try:
            while True:
                taken = [await self._stored.get()]
                while not self._stored.empty():
                    taken.append(self._stored.get_nowait())
                event_ids = [event_id for stored in taken for event_id in stored.new_ids]
                try:
                    enqueued = await self._enqueue(event_ids)
                except Exception:  # noqa: BLE001 - the events are stored: answered whatever happens here
                    log.error("events_not_enqueued", count=len(event_ids), exc_info=True)
                    enqueued = False
                if not enqueued:
                    self._tally.not_enqueued += len(event_ids)
                self._answer_stored(taken)
                taken = []
        finally:
            # Stopping: what is stored is acknowledged (the sweeper enqueues what was not).
            while not self._stored.empty():
                taken.append(self._stored.get_nowait())
            self._answer_stored(taken)

    @staticmethod
    def _answer_stored(taken: list[_Stored]) -> None:
        for stored in taken:
            for item in stored.waiting:
                if not item.future.done():
                    item.future.set_result(False)

    async def _store_once_more_if_lost(
        self, flusher: _Flusher, records: list[events.EventRecord]
    ) -> tuple[set[str], dict[str, str]]:
        """Store; a connection that died under us costs one more try on a fresh one, not a 503."""
        for attempt in (1, 2):
            try:
                stored = await self._store(flusher, records)
            except StoreUnavailable as unavailable:
                cause = unavailable.__cause__
                if attempt == 1 and is_connection_lost(cause):
                    log.debug("ingest_connection_replaced", error=type(cause).__name__)
                    # Its idle siblings most likely died with it (a restart, terminated
                    # backends): the retry must get a new connection, not another dead one.
                    await self._pool.expire_connections()
                    continue
                self.postgres.failed(cause, deferred=len(records))
                raise
            self.postgres.answered()
            return stored
        raise AssertionError("unreachable")

    async def _store(self, flusher: _Flusher, records: list[events.EventRecord]) -> tuple[set[str], dict[str, str]]:
        """Insert in one statement; return (new ids, {refused id: reason}).

        If PostgreSQL refuses the data of one event, the others are stored one by one so that
        only that event is refused. Raises StoreUnavailable (from the cause) for anything else.
        """
        try:
            if flusher.conn is None:
                flusher.conn = await self._pool.acquire()
            new_ids = await event_log.insert_events(flusher.conn, records)
        except Exception as error:  # noqa: BLE001 - sorted below: the event's fault, or the server's
            if not blames_content(error):
                await self._let_go(flusher)
                raise StoreUnavailable() from error
            if len(records) == 1:
                record = records[0]
                reason = getattr(error, "sqlstate", None) or type(error).__name__
                log.warning("event_not_storable", event_id=record.id, event_type=record.type, error=type(error).__name__)
                return set(), {record.id: f"event cannot be stored: PostgreSQL refused a value ({reason})"}
        else:
            return new_ids, {}
        new_ids = set()
        refused: dict[str, str] = {}
        for record in records:
            new, not_stored = await self._store(flusher, [record])
            new_ids |= new
            refused |= not_stored
        return new_ids, refused

    async def _enqueue(self, event_ids: list[str]) -> bool:
        """Enqueue stored events; if Redis is down they stay pending and the sweeper enqueues them."""
        if not event_ids:
            return True
        if not self.redis.up and time.monotonic() < self._next_redis_probe:
            self.redis.defer(len(event_ids))
            return False
        try:
            async with asyncio.timeout(ENQUEUE_WAIT_SECONDS):  # not wait_for: no task of its own per batch
                await queue.enqueue_events(self._redis, self._queue_name, event_ids, join_open_job=True)
        except Exception as error:  # noqa: BLE001 - Redis trouble never fails a stored event
            self.redis.failed(error, deferred=len(event_ids))
            self._next_redis_probe = time.monotonic() + self._redis_backoff.next()
            return False
        self.redis.answered()
        self._redis_backoff.reset()
        return True

    def _summarise(self, force: bool = False) -> None:
        """One info line per interval instead of one per webhook, which would cost throughput."""
        tally = self._tally
        now = time.monotonic()
        if not tally.events or (not force and now - tally.since < SUMMARY_EVERY_SECONDS):
            return
        log.info(
            "webhooks_ingested",
            events=tally.events,
            new=tally.new,
            duplicates=tally.events - tally.new,
            not_enqueued=tally.not_enqueued,
            batches=tally.batches,
            seconds=round(now - tally.since, 1),
        )
        self._tally = _Tally(since=now)
