"""The one batch engine: how the live worker, retries, import, backfill, replay and rebuild apply events.

A batch runs in one transaction: claim its events, take a transaction-scoped advisory lock per
customer in sorted order (two workers never interleave writes for one customer and never
deadlock on each other), run each event's handler, write what they staged, refresh derived
state for the customers touched, record the outcomes. Knows nothing of arq.

What differs between the runs is policy, handed in as a value (`Policy`): which events a batch
claims and how their outcomes are recorded, how a failing event is recorded, and whether
derived state waits for the end of the run. Failure isolation is the same for all: a batch that
fails is rolled back and split (a live batch first drops the events that only joined it, then
halves) until the failing event stands alone, so one bad event never holds up the others, and
only its failure is recorded, in a short transaction of its own.

The handlers and refreshers arrive as a `Registry` value, never read from a global by this
module's callers: the worker sets one up at start, commands build one, tests build their own.
"""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import NamedTuple

import asyncpg

from stripeline.logging import log
from stripeline.model.context import ProcessingContext, Registry
from stripeline.model.events import EVENT_COLUMNS, EventRecord, record_from_row
from stripeline.model.locks import customer_lock_key
from stripeline.outages import is_conflict, is_connection_lost, is_outage
from stripeline.settings import Settings
from stripeline.store.event_log import insert_events


@dataclass(frozen=True)
class Policy:
    """What differs between the runs that share the batch engine."""

    # Live runs (worker, import, backfill) claim pending events by id, skipping those another
    # transaction holds, and mark them done; a replay applies the events as it read them,
    # whatever their status, and changes a stored status only when the outcome differs.
    live: bool
    # Live: a failing event is retried later with backoff (attempts, next_attempt_at), and
    # `failed` after STRIPELINE_MAX_ATTEMPTS. Replay: it is `failed` at once and the run goes on.
    retries_failures: bool
    # Rebuild: MRR, last payment and segments wait for the run's end, which settles them once.
    rebuilding: bool = False
    # Import: MRR and last payment wait for the import's end (`billing.settle_unsettled`).
    billing_later: bool = False
    # One info line per batch (the worker's unit of work); commands show progress instead.
    announces: bool = False


WORKER = Policy(live=True, retries_failures=True, announces=True)
INTAKE = Policy(live=True, retries_failures=True)
IMPORT = Policy(live=True, retries_failures=True, billing_later=True)
REPLAY = Policy(live=False, retries_failures=False)
REBUILD = Policy(live=False, retries_failures=False, rebuilding=True)


@dataclass
class Batch:
    """The events of one transaction: named by id (claimed inside it), or already read (replay;
    an import's, which a live run claims by id without reading them back)."""

    ids: list[str]
    records: list[EventRecord] | None = None
    statuses: list[str] | None = None
    # Run inside the batch's transaction (or a lone failure's): e.g. a rebuild's resume marker.
    on_commit: Callable[[asyncpg.Connection, list[EventRecord]], Awaitable[None]] | None = None
    # Live: a batch of few events is filled up with other due pending events, up to this many.
    fill_up_to: int = 0
    # The events that joined to fill it up, once claimed.
    joined: list[str] = field(default_factory=list)
    # Live, records in hand: the ids of those not stored yet (an import's). The batch stores
    # them itself, processed, in its transaction: their row is written once, in its final
    # state. Its claim of them is that insert; one found stored already (a duplicate) is left
    # out, in `Outcome.already`.
    unstored: frozenset[str] = frozenset()

    @classmethod
    def read(cls, records: list[EventRecord], statuses: list[str], on_commit=None) -> Batch:  # noqa: ANN001
        return cls([r.id for r in records], records, statuses, on_commit)

    def halves(self) -> list[Batch]:
        """Smaller batches to try when this one failed; none when it holds a single event."""
        if self.joined:
            # The culprit may be an event that only joined to fill up: the named ones and the
            # joined ones go on separately (their own jobs found them taken and are done).
            return [replace(self, fill_up_to=0, joined=[]), replace(self, ids=self.joined, fill_up_to=0, joined=[])]
        if len(self.ids) < 2:
            return []
        middle = len(self.ids) // 2
        return [self._slice(0, middle), self._slice(middle, len(self.ids))]

    def _slice(self, start: int, stop: int) -> Batch:
        return replace(
            self,
            ids=self.ids[start:stop],
            unstored=self.unstored.intersection(self.ids[start:stop]),
            records=None if self.records is None else self.records[start:stop],
            statuses=None if self.statuses is None else self.statuses[start:stop],
        )


class Finished(NamedTuple):
    """What a batch knew of an event it finished: enough for the worker's metrics to count and
    time it without reading its row again."""

    type: str
    created: datetime | None = None  # None for a failure
    received_at: datetime | None = None  # None when the claim did not read the row (records in hand)
    processed_at: datetime | None = None  # as stored; None for a failure, or when MARK_DONE did not run


@dataclass
class Outcome:
    processed: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    # (event id, seconds to wait) for failures that will be tried again.
    retry: list[tuple[str, float]] = field(default_factory=list)
    # What went wrong, by event id (as recorded in last_error).
    errors: dict[str, str] = field(default_factory=dict)
    # Events that were not named but joined to fill the batch up.
    joined: int = 0
    # Of the batch's unstored events: how many it stored, and those found stored already.
    stored: int = 0
    already: list[str] = field(default_factory=list)
    # By event id, for every event in the lists above, in a live run (the worker's metrics).
    finished: dict[str, Finished] = field(default_factory=dict)

    @property
    def claimed(self) -> int:
        """How many events the batch took, whatever became of them."""
        return len(self.processed) + len(self.ignored) + len(self.failed) + len(self.retry)

    def merge(self, other: Outcome) -> None:
        self.processed += other.processed
        self.ignored += other.ignored
        self.failed += other.failed
        self.retry += other.retry
        self.errors |= other.errors
        self.joined += other.joined
        self.stored += other.stored
        self.already += other.already
        self.finished |= other.finished


# What a claim reads of each event: its record, and when it arrived (for the worker's metrics; a
# column of the rows read anyway).
CLAIMED_COLUMNS = f"{EVENT_COLUMNS}, received_at"

LOCK_EVENTS = f"""
SELECT {CLAIMED_COLUMNS} FROM stripe_events
WHERE id = ANY($1::text[]) AND status = 'pending'
ORDER BY created, id
FOR UPDATE SKIP LOCKED
"""

# The same claim for events whose records are already in hand (an import reads them from its
# file): their payloads are not read back.
LOCK_EVENT_IDS = """
SELECT id FROM stripe_events
WHERE id = ANY($1::text[]) AND status = 'pending'
FOR UPDATE SKIP LOCKED
"""

# The named events and, up to $2 in all, other pending events that are due, oldest arrival
# first, to fill up a small batch (each marked by whether it joined), in one round trip: the
# worker's jobs carry the few events one web flush stored, and one transaction over hundreds
# of events costs little more than one over a handful. Their own jobs then find them done.
LOCK_EVENTS_FILLING_UP = f"""
WITH named AS (
    SELECT {CLAIMED_COLUMNS} FROM stripe_events
    WHERE id = ANY($1::text[]) AND status = 'pending'
    FOR UPDATE SKIP LOCKED
), more AS (
    SELECT {CLAIMED_COLUMNS} FROM stripe_events
    WHERE status = 'pending' AND (next_attempt_at IS NULL OR next_attempt_at <= now())
      AND NOT (id = ANY($1::text[]))
    ORDER BY received_at
    LIMIT greatest($2 - (SELECT count(*) FROM named), 0)
    FOR UPDATE SKIP LOCKED
)
SELECT *, false AS joined FROM named
UNION ALL
SELECT *, true AS joined FROM more
"""

LOCK_CUSTOMERS = f"""
SELECT pg_advisory_xact_lock({customer_lock_key("customer_id")})
FROM (SELECT DISTINCT unnest($1::text[]) AS customer_id ORDER BY 1) AS sorted
"""

# Live: the claimed (pending) events are done; so are those a batch stored itself, of which
# only the ignored ones change (they were stored as processed). Answers the processed_at it
# stored (now(): the transaction's start), in the same round trip.
MARK_DONE = """
WITH done AS (
    UPDATE stripe_events AS e
    SET status = outcome.status, processed_at = now(), last_error = NULL, next_attempt_at = NULL
    FROM unnest($1::text[], $2::text[]) AS outcome(id, status)
    WHERE e.id = outcome.id
)
SELECT now()
"""

# Replay: only finished events change, and only when the outcome differs (a plain replay writes
# nothing). Pending ones are the worker's: it may hold their rows, and will process them itself.
RECORD_OUTCOMES = """
UPDATE stripe_events AS e
SET status = outcome.status, processed_at = now(), last_error = NULL, next_attempt_at = NULL
FROM unnest($1::text[], $2::text[]) AS outcome(id, status)
WHERE e.id = outcome.id AND e.status IN ('processed', 'ignored', 'failed') AND e.status <> outcome.status
"""

RECORD_FAILURE = """
UPDATE stripe_events
SET attempts = attempts + 1,
    last_error = $2,
    status = CASE WHEN attempts + 1 >= $3 THEN 'failed' ELSE 'pending' END,
    next_attempt_at = CASE WHEN attempts + 1 >= $3 THEN NULL
                           ELSE now() + make_interval(secs => $4 * power(2, attempts)) END
WHERE id = $1 AND status = 'pending'
RETURNING attempts, status, type
"""

MARK_FAILED = """
UPDATE stripe_events
SET status = 'failed', attempts = attempts + 1, last_error = $2, next_attempt_at = NULL
WHERE id = $1
"""

# How often a batch that met another transaction on the same rows (a deadlock between two
# workers on shared price rows, say) runs again whole before it is split like a failing one.
CONFLICT_RETRIES = 3


async def lock_customers(conn: asyncpg.Connection, customer_ids: Iterable[str]) -> None:
    ids = sorted({c for c in customer_ids if c})
    if ids:
        await conn.execute(LOCK_CUSTOMERS, ids)


async def apply_events(conn: asyncpg.Connection, records: list[EventRecord], ctx: ProcessingContext) -> list[str]:
    """Run each event's handler in order, write what they staged, refresh derived state for the
    customers they touched; return the ids of the ignored events.

    Runs inside the caller's transaction, which holds the locks of the events' customers, and
    never commits.
    """
    registry = ctx.registry
    await registry.prepare(conn, records, ctx)
    ignored = []
    for record in records:
        record, handler = await registry.admit(conn, record, registry.handlers.get(record.type), ctx)
        if handler is None:
            ignored.append(record.id)
            continue
        if record.customer_id:
            ctx.touched.add(record.customer_id)
            ctx.causes[record.customer_id] = record.id
        ctx.cause = record.id
        await handler(conn, record, ctx)
    await ctx.writes.flush(conn, ctx)
    if ctx.touched:
        touched = sorted(ctx.touched)
        for refresh in registry.refreshers:
            await refresh(conn, touched, ctx)
    return ignored


@dataclass(frozen=True)
class Engine:
    """Runs batches of stored events for one process: its pool, settings and registry."""

    pool: asyncpg.Pool
    settings: Settings
    registry: Registry

    async def run(self, batch: Batch, policy: Policy, *, lost_once: bool = False, conflicts: int = 0) -> Outcome:
        """Apply a batch; a failure is isolated down to the one event that causes it.

        An outage is no event's fault: it is neither split nor counted against an event, but
        raised for the caller (the worker reports it once; the sweeper brings the events back).
        A connection that died under the batch costs one retry on a fresh one first. A conflict
        with another transaction (deadlock, serialization failure) is neither: the batch runs
        again after a short random pause, then in halves, and only an event that still conflicts
        alone is recorded as failing (and retried later, like any failure).
        """
        started = time.perf_counter()
        try:
            outcome = await self._together(batch, policy)
        except Exception as error:
            if is_conflict(error):
                if conflicts < CONFLICT_RETRIES:
                    log.debug("batch_conflict", error=type(error).__name__, events=len(batch.ids), attempt=conflicts + 1)
                    await asyncio.sleep(random.uniform(0.005, 0.05) * (conflicts + 1))
                    return await self.run(batch, policy, lost_once=lost_once, conflicts=conflicts + 1)
            elif is_outage(error):
                if is_connection_lost(error) and not lost_once:
                    await self.pool.expire_connections()  # its idle siblings most likely died with it
                    return await self.run(batch, policy, lost_once=True)
                raise
            parts = batch.halves()
            if not parts:
                return await self._failed(batch, policy, error, started)
            outcome = Outcome()
            for part in parts:
                outcome.merge(await self.run(part, policy))
            return outcome
        if outcome.processed or outcome.ignored:
            (log.info if policy.announces else log.debug)(
                "events_processed",
                count=len(outcome.processed) + len(outcome.ignored),
                processed=len(outcome.processed),
                ignored=len(outcome.ignored),
                joined=outcome.joined,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
        return outcome

    async def _together(self, batch: Batch, policy: Policy) -> Outcome:
        async with self.pool.acquire() as conn, conn.transaction():
            records, joined, stored = await self._claim(conn, batch, policy)
            if not records:
                return Outcome(already=sorted(batch.unstored - stored))
            await lock_customers(conn, (r.customer_id for r in records))
            ctx = ProcessingContext(
                settings=self.settings, now=datetime.now(timezone.utc), registry=self.registry,
                rebuilding=policy.rebuilding, billing_later=policy.billing_later,
            )
            ignored = set(await apply_events(conn, records, ctx))
            statuses = ["ignored" if r.id in ignored else "processed" for r in records]
            # The worker's metrics time events by the processed_at stored rather than the worker's
            # clock: PostgreSQL's clock set their received_at too, and another host's may be off by
            # more than the smallest bucket. None when MARK_DONE does not run (replay; an import's
            # events the batch stored processed itself).
            processed_at = None
            if policy.live:
                done = [(r.id, s) for r, s in zip(records, statuses) if r.id not in stored or s != "processed"]
                if done:
                    processed_at = await conn.fetchval(MARK_DONE, [d[0] for d in done], [d[1] for d in done])
            else:
                changed = [(r.id, s) for r, s, was in zip(records, statuses, batch.statuses or statuses)
                           if was in ("processed", "ignored", "failed") and was != s]
                if changed:
                    await conn.execute(RECORD_OUTCOMES, [c[0] for c in changed], [c[1] for c in changed])
            if batch.on_commit is not None:
                await batch.on_commit(conn, records)
        outcome = Outcome(joined=joined, stored=len(stored), already=sorted(batch.unstored - stored))
        for record, status in zip(records, statuses):
            (outcome.ignored if status == "ignored" else outcome.processed).append(record.id)
            log.debug("event_processed", event_id=record.id, event_type=record.type, status=status)
        if policy.live:  # for the worker's metrics; a replay or rebuild has no use for them
            outcome.finished = {r.id: Finished(r.type, r.created, r.received_at, processed_at) for r in records}
        return outcome

    async def _claim(self, conn: asyncpg.Connection, batch: Batch,
                     policy: Policy) -> tuple[list[EventRecord], int, set[str]]:
        """The batch's events in Stripe order, how many joined to fill it up, and the ids of those
        it stored itself (`Batch.unstored`)."""
        if not policy.live:
            return list(batch.records or ()), 0, set()
        if batch.records is not None:
            stored_ids = [i for i in batch.ids if i not in batch.unstored]
            claimed = {row["id"] for row in await conn.fetch(LOCK_EVENT_IDS, stored_ids)} if stored_ids else set()
            stored = set()
            if batch.unstored:
                stored = await insert_events(conn, [r for r in batch.records if r.id in batch.unstored], done=True)
                claimed |= stored
            return sorted((r for r in batch.records if r.id in claimed), key=lambda r: (r.created, r.id)), 0, stored
        if batch.fill_up_to:
            rows = await conn.fetch(LOCK_EVENTS_FILLING_UP, batch.ids, batch.fill_up_to)
            batch.joined = [row["id"] for row in rows if row["joined"]]  # kept should the batch fail (see `halves`)
        else:
            rows = await conn.fetch(LOCK_EVENTS, batch.ids)
        records = sorted((record_from_row(row) for row in rows), key=lambda r: (r.created, r.id))
        return records, len(batch.joined), set()

    async def _failed(self, batch: Batch, policy: Policy, error: BaseException, started: float) -> Outcome:
        """Record the failure of a batch's one event (none when another worker had it)."""
        event_id = batch.ids[0] if batch.ids else None
        if event_id is None:
            return Outcome()
        if not policy.live and is_conflict(error):
            try:
                return await self._together(batch, policy)
            except Exception as again:  # noqa: BLE001 - recorded below
                error = again
        described = describe_error(error)
        log.warning(
            "event_failed",
            event_id=event_id,
            error=type(error).__name__,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )
        outcome = Outcome(errors={event_id: described})
        async with self.pool.acquire() as conn, conn.transaction():
            if event_id in batch.unstored:
                # Stored pending, with its failure: retried later like any other.
                if not await insert_events(conn, [r for r in batch.records or () if r.id == event_id]):
                    return Outcome(already=[event_id])
                outcome.stored = 1
            if policy.retries_failures:
                row = await conn.fetchrow(
                    RECORD_FAILURE, event_id, described, self.settings.max_attempts,
                    float(self.settings.retry_base_seconds),
                )
                if row is None:  # no longer pending: done or taken elsewhere meanwhile
                    return Outcome()
                if row["status"] == "failed":
                    outcome.failed.append(event_id)
                else:
                    outcome.retry.append((event_id, self.settings.retry_base_seconds * 2 ** (row["attempts"] - 1)))
                outcome.finished[event_id] = Finished(row["type"])
            else:
                await conn.execute(MARK_FAILED, event_id, described)
                outcome.failed.append(event_id)
            if batch.on_commit is not None and batch.records:
                await batch.on_commit(conn, batch.records)
        return outcome


def crc32_lane_of(customer_id: str | None, lanes: int) -> int:
    """The lane, of `lanes`, of a customer's events when a run applies lanes side by side (an
    import's chunks; a rebuild started under sql/0015): all of one customer's events on one
    lane, so each lane keeps them in order; events without a customer on lane 0."""
    return zlib.crc32(customer_id.encode()) % lanes if customer_id else 0


def describe_error(error: BaseException) -> str:
    """A last_error that helps an operator without repeating data from the payload.

    PostgreSQL's and asyncpg's messages can quote the offending value (an email in a unique
    violation, say), so for those we keep the class, SQLSTATE and the names of the schema
    objects involved, never the message.
    """
    if isinstance(error, asyncpg.PostgresError):
        names = [
            f"{part}={value}"
            for part in ("table_name", "column_name", "constraint_name")
            if (value := getattr(error, part, None))
        ]
        return f"{type(error).__name__} (SQLSTATE {error.sqlstate}) {' '.join(names)}".strip()
    if isinstance(error, asyncpg.InterfaceError):  # includes client-side encoding errors, which quote values
        return type(error).__name__
    return f"{type(error).__name__}: {error}"[:1000]


async def process_events(
    pool: asyncpg.Pool,
    event_ids: list[str],
    settings: Settings,
    *,
    fill_up_to: int = 0,
    registry: Registry,
) -> Outcome:
    """Process stored events (those still pending) as the live worker does; safe to repeat.

    With `fill_up_to`, other due pending events join the batch up to that many in all.
    """
    engine = Engine(pool, settings, registry)
    return await engine.run(Batch(list(event_ids), fill_up_to=fill_up_to), INTAKE)
