"""Processing stored events: lock them, dispatch to handlers, record the outcome.

Knows nothing of arq. The fast path runs a whole batch in one transaction; if anything in it
fails, the batch is rolled back and each event is run alone, so one bad event never holds up
the others, and its failure is recorded (attempts, last_error) in a short transaction of its own.

Concurrency: rows of one customer are written by one transaction at a time. A batch takes a
transaction-scoped advisory lock per customer, in sorted order, before touching anything, so
two workers never interleave writes for one customer and never deadlock on each other.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import asyncpg

from app.events import EVENT_COLUMNS, EventRecord, record_from_row
from app.logging import log
from app.settings import Settings


def _write_buffer() -> Any:
    from handlers.writes import WriteBuffer

    return WriteBuffer()


@dataclass
class ProcessingContext:
    """What handlers may know beyond the event: settings, the clock, and what they touched."""

    settings: Settings
    now: datetime
    # Customers whose derived state (MRR, segments) must be recomputed after the handlers ran.
    touched: set[str] = field(default_factory=set)
    # The event being applied, recorded as the cause of segment changes.
    cause: str | None = None
    # Customers deleted in Stripe among this batch's, by id (handlers.deletion.Tombstone).
    tombstones: dict[str, Any] = field(default_factory=dict)
    # Row snapshots staged by the handlers, written in one flush before the refreshers run
    # (handlers/writes.py). A handler that writes SQL itself may flush it first.
    writes: Any = field(default_factory=_write_buffer)
    # A `replay --rebuild` is refilling the model: derived state that compares before and after
    # (segment entries and exits) waits for the rebuild's end, which settles it in one pass.
    rebuilding: bool = False
    # The last event of the batch that named each customer: the cause of its segment changes.
    causes: dict[str, str] = field(default_factory=dict)


Handler = Callable[[asyncpg.Connection, EventRecord, ProcessingContext], Awaitable[None]]
Refresher = Callable[[asyncpg.Connection, list[str], ProcessingContext], Awaitable[None]]


@dataclass
class Outcome:
    processed: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    # (event id, seconds to wait) for failures that will be tried again.
    retry: list[tuple[str, float]] = field(default_factory=list)

    def merge(self, other: Outcome) -> None:
        self.processed += other.processed
        self.ignored += other.ignored
        self.failed += other.failed
        self.retry += other.retry


LOCK_EVENTS = f"""
SELECT {EVENT_COLUMNS} FROM stripe_events
WHERE id = ANY($1::text[]) AND status = 'pending'
ORDER BY created, id
FOR UPDATE SKIP LOCKED
"""

# Other pending events that are due, oldest arrival first, to fill up a small batch: the
# worker's jobs carry the few events one web flush stored, and one transaction over hundreds
# of events costs little more than one over a handful. Their own jobs then find them done.
LOCK_MORE_EVENTS = f"""
SELECT {EVENT_COLUMNS} FROM stripe_events
WHERE status = 'pending' AND (next_attempt_at IS NULL OR next_attempt_at <= now())
  AND NOT (id = ANY($1::text[]))
ORDER BY received_at
LIMIT $2
FOR UPDATE SKIP LOCKED
"""

LOCK_CUSTOMERS = """
SELECT pg_advisory_xact_lock(hashtextextended(customer_id, 0))
FROM (SELECT DISTINCT unnest($1::text[]) AS customer_id ORDER BY 1) AS sorted
"""

MARK_DONE = """
UPDATE stripe_events AS e
SET status = outcome.status, processed_at = now(), last_error = NULL, next_attempt_at = NULL
FROM unnest($1::text[], $2::text[]) AS outcome(id, status)
WHERE e.id = outcome.id
"""

RECORD_FAILURE = """
UPDATE stripe_events
SET attempts = attempts + 1,
    last_error = $2,
    status = CASE WHEN attempts + 1 >= $3 THEN 'failed' ELSE 'pending' END,
    next_attempt_at = CASE WHEN attempts + 1 >= $3 THEN NULL
                           ELSE now() + make_interval(secs => $4 * power(2, attempts)) END
WHERE id = $1 AND status = 'pending'
RETURNING attempts, status
"""


def handlers_registry() -> dict[str, Handler]:
    from handlers import HANDLERS

    return HANDLERS


def refreshers_registry() -> list[Refresher]:
    from handlers import REFRESHERS

    return REFRESHERS


async def lock_customers(conn: asyncpg.Connection, customer_ids: Iterable[str]) -> None:
    ids = sorted({c for c in customer_ids if c})
    if ids:
        await conn.execute(LOCK_CUSTOMERS, ids)


async def apply_events(conn: asyncpg.Connection, records: list[EventRecord], ctx: ProcessingContext) -> list[str]:
    """Run each event's handler in order, then refresh derived state; return the ignored ids.

    The one code path for live processing, retries and replay. Runs inside the caller's
    transaction and never commits.
    """
    # Imported here, like the registries: handlers import this module.
    from handlers.deletion import admit_event, load_tombstones

    handlers = handlers_registry()
    await load_tombstones(conn, records, ctx)
    ignored = []
    for record in records:
        handler = handlers.get(record.type)
        if record.customer_id in ctx.tombstones:
            # A customer deleted in Stripe: the deletion policy decides what of this event applies.
            record, handler = await admit_event(conn, record, handler, ctx)
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
        for refresh in refreshers_registry():
            await refresh(conn, touched, ctx)
    return ignored


async def _process_together(
    pool: asyncpg.Pool, event_ids: list[str], settings: Settings, fill_up_to: int, joined: list[str]
) -> Outcome:
    outcome = Outcome()
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(LOCK_EVENTS, event_ids)
        if len(rows) < fill_up_to:
            more = await conn.fetch(LOCK_MORE_EVENTS, event_ids, fill_up_to - len(rows))
            joined.extend(row["id"] for row in more)
            rows += more
        records = sorted((record_from_row(row) for row in rows), key=lambda r: (r.created, r.id))
        if not records:
            return outcome
        await lock_customers(conn, (r.customer_id for r in records))
        ctx = ProcessingContext(settings=settings, now=datetime.now(timezone.utc))
        ignored = set(await apply_events(conn, records, ctx))
        statuses = ["ignored" if r.id in ignored else "processed" for r in records]
        await conn.execute(MARK_DONE, [r.id for r in records], statuses)
    for record, status in zip(records, statuses):
        (outcome.ignored if status == "ignored" else outcome.processed).append(record.id)
        log.info("event_processed", event_id=record.id, event_type=record.type, status=status)
    return outcome


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


async def _record_failure(pool: asyncpg.Pool, event_id: str, error: BaseException, settings: Settings) -> Outcome:
    outcome = Outcome()
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            RECORD_FAILURE, event_id, describe_error(error), settings.max_attempts, float(settings.retry_base_seconds)
        )
    if row is None:
        return outcome
    if row["status"] == "failed":
        outcome.failed.append(event_id)
    else:
        delay = settings.retry_base_seconds * 2 ** (row["attempts"] - 1)
        outcome.retry.append((event_id, delay))
    return outcome


async def process_events(
    pool: asyncpg.Pool, event_ids: list[str], settings: Settings, *, fill_up_to: int = 0
) -> Outcome:
    """Process stored events (those still pending); safe to call any number of times.

    With `fill_up_to`, other due pending events join the batch up to that many in all.
    """
    started = time.perf_counter()
    joined: list[str] = []
    try:
        outcome = await _process_together(pool, event_ids, settings, fill_up_to, joined)
    except Exception as error:
        if joined:
            # The culprit may be an event that only joined to fill up: go back to the named ones.
            return await process_events(pool, event_ids, settings)
        if len(event_ids) > 1:
            outcome = Outcome()
            for event_id in event_ids:
                outcome.merge(await process_events(pool, [event_id], settings))
            return outcome
        log.warning(
            "event_failed",
            event_id=event_ids[0],
            error=type(error).__name__,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return await _record_failure(pool, event_ids[0], error, settings)
    if len(event_ids) > 1:
        log.info(
            "events_processed",
            count=len(event_ids),
            processed=len(outcome.processed),
            ignored=len(outcome.ignored),
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )
    return outcome

