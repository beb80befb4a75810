"""Replay: re-apply stored events in Stripe order through the worker's own code path.

Events are read in (created, id) order in keyset batches; each batch runs through the worker's
own batch engine (`processing.Engine`, with the REPLAY or REBUILD policy): one transaction under
the per-customer advisory locks the worker takes, so replay and live workers coexist exactly as
two workers do. A batch that fails is split in halves until the failing event stands alone; it
is marked `failed` and the replay goes on.

Stored statuses: replay leaves pending events to the worker. A finished event records what
its replay found: `failed` when it fails now, and `processed` (or `ignored`) when a fixed or
new handler now applies it, so that a repair by replay does not leave stale failures behind.

`--rebuild` empties the Stripe-derived tables and refills them from the log. We chose a
resumable rebuild over one big transaction: the wipe and a rebuild marker commit together,
then batches commit one by one, each advancing the marker's cursor. A crash before the wipe
commits leaves the old state; after it, the marker says the model is incomplete (/api/sync
answers "lagging" with a `rebuild` key) and the next `replay` resumes after the last committed batch. One big
transaction would hold a lock per customer until the end, which PostgreSQL's lock table
cannot hold for large accounts, and would stall the live worker for the whole rebuild.

A rebuild applies its events in lanes, each customer's events in one lane (REBUILD_LANES says
why). `stripeline replay --rebuild` runs each lane in a process of its own when its connections
allow (stripeline.processing.lanes); a library call, with its own registry, runs them side by
side in its process. Both run the one lane function, `_walk_lane`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import asyncpg

from stripeline.handlers import billing, segments
from stripeline.logging import log
from stripeline.model import tables
from stripeline.model.context import Registry
from stripeline.model.events import EVENT_COLUMNS, EventRecord, record_from_row
from stripeline.model.locks import customer_lock_key
from stripeline.processing.engine import REBUILD, REPLAY, Batch, Engine, Outcome, crc32_lane_of, lock_customers
from stripeline.processing.lanes import LaneReporter, run_lane_processes, serve_parent
from stripeline.processing.runs import Reporter, RunError, Tally, side_by_side
from stripeline.settings import Settings
from stripeline.store import event_log

BATCH_SIZE = 1000
# Each distinct customer in a batch holds an advisory lock until commit, and PostgreSQL's lock
# table holds about 64 per connection by default: bigger batches risk "out of shared memory".
MAX_BATCH_SIZE = 2000
# While a replay walks the log, Python's cyclic garbage collector runs every this many batches
# and never on its own (see `_collecting_rarely`).
COLLECT_EVERY = 64
# Events are at least this old (Stripe's `created` is a Unix time >= 0).
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
FAR_FUTURE = datetime(9999, 1, 1, tzinfo=timezone.utc)

# Everything a rebuild empties: rows derived from Stripe events only (app/model/tables.py). Never
# customer attributes, tags or activity (users wrote those), nor segment history, nor tombstones:
# in `delete` mode a deleted customer's events are gone, and only its tombstone keeps a late
# webhook from bringing it back.
DERIVED_TABLES = tables.STRIPE_DERIVED
# Segment memberships are not wiped: batches of a rebuild skip the segment refresher and the
# rebuild ends with one full refresh, so history and segment webhooks see only real changes.
# Batches skip the billing refresher too (MRR, last payment): the rebuild ends by refreshing
# every customer once, a thousand at a time under their locks, as a batch of the worker would.
BILLING_CHUNK = 1000
CUSTOMERS_AFTER = "SELECT id FROM customers WHERE id > $1 ORDER BY id LIMIT $2"

# Held for a whole rebuild so that two rebuilds never refill the model at once.
REBUILD_LOCK = 0x7374726970726562  # "stripreb" as an integer, like the migration lock
# NOWAIT: a busy worker or reader makes us back off and retry, never wait holding locks.
LOCK_DERIVED = f"LOCK TABLE {', '.join(DERIVED_TABLES)} IN ACCESS EXCLUSIVE MODE NOWAIT"
WIPE_DERIVED = f"TRUNCATE {', '.join(DERIVED_TABLES)}"
ANALYZE_DERIVED = f"ANALYZE {', '.join(DERIVED_TABLES)}"
WIPE_ATTEMPTS = 300

# A rebuild applies its events in this many lanes side by side (sql/0015_rebuild_lanes.sql,
# sql/0016_rebuild_lanes_in_sql.sql). Each lane reads the events of its customers (those whose
# lock hash falls in it; events of no customer are lane 0's) in Stripe order, so two lanes
# never wait for each other's customer locks and each customer's events are applied in Stripe
# order, as before. The model does not depend on the order between customers (a shared row, a
# price say, keeps the version of the event that wrote it). Each lane's cursor moves with its
# own batches. Two lanes: one per core of the machine issue #12 measures on; in two processes
# they keep both busy with Python while PostgreSQL writes the other lane's batch.
REBUILD_LANES = 2
# What the lane cursors of a rebuild started now follow (NULL in the marker: 0015's crc32).
LANE_HASH = "hashtextextended"

START_REBUILD = """
INSERT INTO replay_rebuilds (through_received_at, events_total, lane_after_created, lane_after_id, lane_hash)
SELECT now(), count(*), array_fill(NULL::timestamptz, ARRAY[$1::int]), array_fill(NULL::text, ARRAY[$1::int]), $2
FROM stripe_events WHERE received_at <= now()
RETURNING started_at, through_received_at, after_created, after_id, events_done, events_total
"""
GET_LANES = "SELECT through_received_at, lane_after_created, lane_after_id, lane_hash FROM replay_rebuilds"
# A rebuild started before lanes (both lane arrays NULL) resumes on the one cursor.
ADVANCE_REBUILD = "UPDATE replay_rebuilds SET after_created = $1, after_id = $2, events_done = events_done + $3"
# Lane $4 (1-based). Both lanes update this one row, each as the last statement before its
# COMMIT: one waits for the other's commit at most, and never while the other waits for it.
ADVANCE_LANE = """
UPDATE replay_rebuilds
SET lane_after_created[$4] = $1, lane_after_id[$4] = $2, events_done = events_done + $3
"""
# A rebuild's batch commits without waiting for its WAL to reach the disk (`synchronous_commit`
# off for that transaction alone; the flush took about a sixth of PostgreSQL's time in a
# rebuild). Safe because the batch and its resume marker are one transaction: a crash of the
# server loses at most the last few committed batches whole, marker included, and PostgreSQL
# recovers to a consistent prefix of the WAL (a later synchronous commit, a live worker's or the
# rebuild's end, flushes every earlier one), so the resumed rebuild re-applies exactly the lost
# batches. Nothing leaves the database from a rebuild's batches (segment changes and their
# webhooks wait for its end, which commits synchronously); a reader of the API may have seen a
# lost batch, while /api/sync said the model was incomplete (`rebuild`). Runs in the batch's
# transaction (SET LOCAL ends with it).
ASYNC_COMMIT = "SET LOCAL synchronous_commit = off"
FINISH_REBUILD = "DELETE FROM replay_rebuilds"
# The cause recorded in segment history for what a rebuild changed.
REBUILD_CAUSE = "rebuild"

# The selection: after the cursor ($1, $2), received by the snapshot ($3), created before $4,
# of a type matching the regular expression $5, of customer $6; in Stripe order.
SELECT_BATCH = f"""
SELECT {EVENT_COLUMNS}, status FROM stripe_events
WHERE (created, id) > ($1, $2) AND received_at <= $3 AND created < $4
  AND ($5::text IS NULL OR type ~ $5) AND ($6::text IS NULL OR customer_id = $6)
ORDER BY created, id
LIMIT $7
"""
# The lane of a stored event, for a parameter holding the number of lanes: its customer's lock
# key (one hash for both) modulo the lanes; lane 0 for an event of no customer.
LANE_OF_EVENT = (
    "CASE WHEN coalesce(customer_id, '') = '' THEN 0"
    f" ELSE ({customer_lock_key('customer_id')} % {{lanes}} + {{lanes}}) % {{lanes}} END"
)
# The events of one of $4 lanes after the cursor ($1, $2), received by the snapshot ($3), in
# Stripe order: those in none of the other lanes ($5). Not "= this lane": PostgreSQL guesses
# that an equality on an expression keeps 0.5% of the rows, and for the first executions on a
# connection (custom plans) scanned and sorted the whole log for each batch, 180 ms against 15
# at 200,000 events; "none of these" it guesses keeps most, and walks the (created, id) index.
SELECT_LANE_BATCH = f"""
SELECT {EVENT_COLUMNS}, status FROM stripe_events
WHERE (created, id) > ($1, $2) AND received_at <= $3 AND {LANE_OF_EVENT.format(lanes="$4")} <> ALL($5::bigint[])
ORDER BY created, id
LIMIT $6
"""
COUNT_SELECTION = """
SELECT count(*) FROM stripe_events
WHERE (created, id) > ($1, $2) AND received_at <= $3 AND created < $4
  AND ($5::text IS NULL OR type ~ $5) AND ($6::text IS NULL OR customer_id = $6)
"""

# The argv of the process of a rebuild's lane: (lane, lanes, connections) -> argv.
LaneProcess = Callable[[int, int, int], Sequence[str]]


class ReplayRefused(RunError):
    """The replay cannot run as asked; the message says why and what to do."""

    exit_code = 2


@dataclass(frozen=True)
class Selection:
    """Which stored events a replay applies; empty fields select everything."""

    since: datetime | None = None
    until: datetime | None = None
    type_pattern: str | None = None
    customer: str | None = None

    @property
    def filtered(self) -> bool:
        return any(value is not None for value in dataclasses.astuple(self))

    def type_regex(self) -> str | None:
        return None if self.type_pattern is None else glob_to_regex(self.type_pattern)


_GLOB_TOKEN = re.compile(r"\*|\?|\[!?[A-Za-z0-9_.-]+\]|[A-Za-z0-9_-]|\.")


def glob_to_regex(pattern: str) -> str:
    """A shell glob over event types (`*`, `?`, `[abc]`, `[!abc]`) as an anchored regex."""
    if not pattern:
        raise ReplayRefused("--type must not be empty")
    parts = []
    position = 0
    while position < len(pattern):
        match = _GLOB_TOKEN.match(pattern, position)
        if match is None:
            raise ReplayRefused(
                f"--type {pattern!r} is not a glob of event types: use letters, digits, '.', '_', '*', '?' and [...]"
            )
        token = match.group()
        if token == "*":
            parts.append(".*")
        elif token == "?":
            parts.append(".")
        elif token == ".":
            parts.append(r"\.")
        elif token.startswith("[!"):
            parts.append("[^" + token[2:])
        else:
            parts.append(token)
        position = match.end()
    return "^" + "".join(parts) + "$"


def _tally(outcome: Outcome, records: list[EventRecord]) -> Tally:
    types = {r.id: r.type for r in records}
    return Tally(
        applied=len(outcome.processed),
        skipped=len(outcome.ignored),
        failed=len(outcome.failed),
        failures=[f"{event_id} ({types.get(event_id)}): {outcome.errors.get(event_id)}" for event_id in outcome.failed],
    )


def _advancing(lane: int | None) -> Callable[[asyncpg.Connection, list[EventRecord]], Awaitable[None]]:
    """The on_commit of a rebuild's batches in `lane` (None: the one cursor of an older rebuild)."""

    async def advance(conn: asyncpg.Connection, records: list[EventRecord]) -> None:
        """Move the lane's resume cursor past these events in their transaction, which then
        commits without waiting for its WAL flush (ASYNC_COMMIT says why that is safe)."""
        await conn.execute(ASYNC_COMMIT)
        last = records[-1]
        if lane is None:
            await conn.execute(ADVANCE_REBUILD, last.created, last.id, len(records))
        else:
            await conn.execute(ADVANCE_LANE, last.created, last.id, len(records), lane + 1)

    return advance


@dataclass(frozen=True)
class _Scope:
    """The rows one replay walks: the selection after a cursor, received up to a snapshot."""

    after: tuple[datetime, str]
    through_received_at: datetime
    until: datetime = FAR_FUTURE
    type_regex: str | None = None
    customer: str | None = None
    # A rebuild's lane: (lane, lanes), the events of that lane's customers only.
    lane: tuple[int, int] | None = None

    def arguments(self, after: tuple[datetime, str]) -> tuple:
        return (*after, self.through_received_at, self.until, self.type_regex, self.customer)

    def select(self, after: tuple[datetime, str], batch_size: int) -> tuple[str, tuple]:
        """The query of the next batch after `after`, and its arguments."""
        if self.lane is not None:
            lane, lanes = self.lane
            others = [other for other in range(lanes) if other != lane]
            return SELECT_LANE_BATCH, (*after, self.through_received_at, lanes, others, batch_size)
        return SELECT_BATCH, (*self.arguments(after), batch_size)


async def _batches(
    pool: asyncpg.Pool, scope: _Scope, batch_size: int
) -> AsyncIterator[tuple[list[EventRecord], list[str]]]:
    """Keyset batches of the scope (records and stored statuses); the next batch is read, and
    its records built, while the caller applies this one (in its waits on PostgreSQL)."""

    async def fetch(after: tuple[datetime, str]) -> tuple[list[EventRecord], list[str]]:
        query, arguments = scope.select(after, batch_size)
        async with pool.acquire() as conn:
            rows = await conn.fetch(query, *arguments)
        return [record_from_row(row) for row in rows], [row["status"] for row in rows]

    pending = asyncio.create_task(fetch(scope.after))
    try:
        while True:
            records, statuses = await pending
            if not records:
                return
            pending = asyncio.create_task(fetch((records[-1].created, records[-1].id)))
            yield records, statuses
    finally:
        pending.cancel()
        await asyncio.gather(pending, return_exceptions=True)


@dataclass
class _Run:
    """What one replay works with, passed down whole."""

    engine: Engine
    tally: Tally
    batch_size: int
    progress: Reporter | None
    stop: asyncio.Event | None
    # The argv of the process of lane i of n with c connections (the installed command's), or
    # None: a rebuild's lanes run in this process.
    lane_process: LaneProcess | None = None
    # Batches applied so far, in all lanes of this process.
    batches: int = 0
    # Whether this process refreshes the rebuilt tables' statistics (see `_apply`): in the
    # process of lane 0 only, whose batches double about when all lanes' do.
    analyzes: bool = True

    def stopping(self) -> bool:
        """Asked to stop (the tally then says it was interrupted)."""
        if self.stop is not None and self.stop.is_set():
            self.tally.interrupted = True
            return True
        return False


async def _apply(run: _Run, records: list[EventRecord], statuses: list[str], on_commit: Callable | None) -> bool:
    """Apply one batch (a rebuild's advances its cursor: `on_commit`); False once asked to stop."""
    rebuilding = on_commit is not None
    done = _tally(await run.engine.run(Batch.read(records, statuses, on_commit), REBUILD if rebuilding else REPLAY),
                  records)
    run.batches += 1
    if run.batches % COLLECT_EVERY == 0:
        gc.collect()
    if rebuilding and run.analyzes and run.batches & (run.batches - 1) == 0:
        # A wiped table has no statistics and autovacuum cannot keep up with a rebuild:
        # PostgreSQL would plan for empty tables (nested loops over thousands of rows,
        # 2-3 s a batch at 30,000 invoices). Refresh them as the tables double.
        async with run.engine.pool.acquire() as conn:
            await conn.execute(ANALYZE_DERIVED)
    run.tally.add(done)
    if run.progress is not None:
        for failure in done.failures:
            run.progress.failure(failure)
        run.progress.advance(len(records))
    return not run.stopping()


@contextlib.contextmanager
def _collecting_rarely() -> Iterator[None]:
    """No automatic cyclic garbage collection while the replay walks: one every COLLECT_EVERY
    batches instead.

    Batches in flight hold thousands of decoded payloads of about 300 objects each, so an
    automatic collection walked hundreds of thousands of live objects and promoted them for the
    next one to walk again: with a rebuild's lanes, 20-22 collections took 25-29% of the
    replay process's CPU over 50,000 events, even at the process's raised threshold
    (stripeline.garbage). Payloads hold no cycles and reference counting frees them; the little
    cyclic garbage of a batch waits for the next collection (a 50,000-event rebuild peaked at
    139 MB, against 104 MB with one lane and automatic collections).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


async def _walk(run: _Run, scope: _Scope, on_commit: Callable | None = None,
                keep: Callable[[EventRecord], bool] | None = None) -> None:
    """Apply the scope's events (those it `keep`s) batch by batch, in Stripe order."""
    async with contextlib.aclosing(_batches(run.engine.pool, scope, run.batch_size)) as batches:
        async for records, statuses in batches:
            if keep is not None:
                kept = [i for i, record in enumerate(records) if keep(record)]
                records, statuses = [records[i] for i in kept], [statuses[i] for i in kept]
            if run.stopping():
                return
            if records and not await _apply(run, records, statuses, on_commit):
                return


async def _walk_lane(run: _Run, lanes: asyncpg.Record, lane: int) -> None:
    """Lane `lane` of the rebuild whose marker's lanes are `lanes`, from its cursor: the events
    of its customers, in Stripe order, each batch committed with the lane's cursor."""
    count = len(lanes["lane_after_id"])
    after = (lanes["lane_after_created"][lane] or EPOCH, lanes["lane_after_id"][lane] or "")
    if lanes["lane_hash"] == LANE_HASH:
        await _walk(run, _Scope(after, lanes["through_received_at"], lane=(lane, count)), _advancing(lane))
    else:  # crc32 lanes (sql/0015): every event read, this lane's kept
        await _walk(run, _Scope(after, lanes["through_received_at"]), _advancing(lane),
                    keep=lambda record: crc32_lane_of(record.customer_id, count) == lane)


def _lane_connections(run: _Run, lanes: asyncpg.Record) -> list[int] | None:
    """Connections for each lane process, or None when the lanes run in this process: lanes
    given to processes (`lane_process`) and following PostgreSQL's hash, and the command's one
    budget (STRIPELINE_DB_POOL_SIZE), less the connection holding the rebuild's lock here,
    leaves each lane at least one."""
    count = len(lanes["lane_after_id"])
    spare = run.engine.settings.pool_size("command") - 1
    if run.lane_process is None or lanes["lane_hash"] != LANE_HASH or spare < count:
        return None
    return [spare // count + (1 if lane < spare % count else 0) for lane in range(count)]


async def _walk_lanes(run: _Run, marker: asyncpg.Record, lanes: asyncpg.Record) -> None:
    """The rebuild's lanes, each from its cursor (or an older rebuild's one cursor)."""
    if lanes["lane_after_id"] is None:  # started before lanes: its one cursor
        after = (marker["after_created"] or EPOCH, marker["after_id"] or "")
        await _walk(run, _Scope(after, lanes["through_received_at"]), _advancing(None))
        return
    connections = _lane_connections(run, lanes)
    if connections is None:
        if run.lane_process is not None and lanes["lane_hash"] != LANE_HASH and run.progress is not None:
            run.progress.note("the rebuild was started by an older version: its lanes finish in this process")
        # The first failure stops every lane: what each committed is behind its cursor.
        await side_by_side(_walk_lane(run, lanes, lane) for lane in range(len(lanes["lane_after_id"])))
        return
    commands = [run.lane_process(lane, len(connections), n) for lane, n in enumerate(connections)]
    await run_lane_processes(commands, run.tally, run.progress, run.stop)


async def rebuild_lane(
    pool: asyncpg.Pool,
    settings: Settings,
    lane: int,
    *,
    batch_size: int = BATCH_SIZE,
    stop: asyncio.Event,
    registry: Registry,
) -> int:
    """The body of a lane process (`run_lane_processes` starts it): lane `lane` of the pending
    rebuild, reporting to its parent over standard input; its exit code."""
    tally = Tally()

    async def walk(parent: LaneReporter) -> None:
        run = _Run(Engine(pool, settings, registry), tally, batch_size, parent, stop, analyzes=lane == 0)
        async with pool.acquire() as conn:
            lanes = await conn.fetchrow(GET_LANES)
        if lanes is None or lanes["lane_hash"] != LANE_HASH:
            raise ReplayRefused("no rebuild with lanes in PostgreSQL's hash is pending")
        with _collecting_rarely():
            await _walk_lane(run, lanes, lane)

    return await serve_parent(tally, stop, settings.schema, walk)


async def _start_rebuild(conn: asyncpg.Connection) -> asyncpg.Record:
    """Empty the derived tables and record the rebuild, in one transaction (on the connection
    that holds the rebuild's lock: the lanes get the rest of the command's connections)."""
    for _ in range(WIPE_ATTEMPTS):
        try:
            async with conn.transaction():
                await conn.execute(LOCK_DERIVED)
                await conn.execute(WIPE_DERIVED)
                marker = await conn.fetchrow(START_REBUILD, REBUILD_LANES, LANE_HASH)
        except asyncpg.LockNotAvailableError:
            await asyncio.sleep(random.uniform(0.02, 0.1))
            continue
        log.info("rebuild_started", events_total=marker["events_total"])
        return marker
    raise ReplayRefused("the billing tables stayed busy (worker or API); try the rebuild again")


async def _refresh_billing_of_everyone(pool: asyncpg.Pool, progress: Reporter | None) -> None:
    """The billing refresh that the rebuild's batches skipped, once per customer."""
    after = ""
    async with pool.acquire() as conn:
        if progress is not None:
            progress.phase("billing", total=await conn.fetchval("SELECT count(*) FROM customers"))
        while True:
            async with conn.transaction():
                ids = [row["id"] for row in await conn.fetch(CUSTOMERS_AFTER, after, BILLING_CHUNK)]
                if not ids:
                    return
                await lock_customers(conn, ids)
                await billing.refresh_customers(conn, ids)
            after = ids[-1]
            if progress is not None:
                progress.advance(len(ids))


async def _rebuild(run: _Run) -> None:
    pool, settings = run.engine.pool, run.engine.settings
    async with pool.acquire() as guard:
        if not await guard.fetchval("SELECT pg_try_advisory_lock($1)", REBUILD_LOCK):
            raise ReplayRefused("another `replay --rebuild` is running")
        try:
            marker = await guard.fetchrow(event_log.GET_REBUILD)
            if marker is None:
                marker = await _start_rebuild(guard)
            elif run.progress is not None:
                run.progress.note(f"resuming the rebuild started at {marker['started_at'].isoformat()}")
            if run.progress is not None:
                run.progress.phase("rebuild", total=marker["events_total"], done=marker["events_done"])
            with _collecting_rarely():
                await _walk_lanes(run, marker, await guard.fetchrow(GET_LANES))
            if not run.tally.interrupted:
                await _refresh_billing_of_everyone(pool, run.progress)
                if run.progress is not None:
                    run.progress.phase("segments")
                async with guard.transaction():
                    await segments.refresh_all(guard, datetime.now(timezone.utc), settings, cause=REBUILD_CAUSE)
                    await guard.execute(FINISH_REBUILD)
                tally = run.tally
                log.info("rebuild_finished", applied=tally.applied, skipped=tally.skipped, failed=tally.failed)
        finally:
            await guard.execute("SELECT pg_advisory_unlock($1)", REBUILD_LOCK)


async def replay(
    pool: asyncpg.Pool,
    settings: Settings,
    selection: Selection = Selection(),
    *,
    rebuild: bool = False,
    tally: Tally | None = None,
    batch_size: int = BATCH_SIZE,
    progress: Reporter | None = None,
    stop: asyncio.Event | None = None,
    registry: Registry,
    lane_process: LaneProcess | None = None,
) -> Tally:
    """Re-apply the selected stored events (all of them, from empty tables, with `rebuild`).

    `lane_process(lane, lanes, connections)`: the argv of a process that runs a rebuild's lane
    (`rebuild_lane`) with that registry; without it the lanes run in this process."""
    engine = Engine(pool, settings, registry)
    run = _Run(engine, tally if tally is not None else Tally(), batch_size, progress, stop, lane_process)
    async with pool.acquire() as conn:
        pending_rebuild = await conn.fetchval("SELECT true FROM replay_rebuilds")
    if pending_rebuild and selection.filtered:
        raise ReplayRefused("an interrupted rebuild is pending: run `stripeline replay --rebuild` to finish it first")
    if rebuild and selection.filtered:
        raise ReplayRefused("--rebuild replays every stored event and takes no filters")
    if rebuild or pending_rebuild:
        await _rebuild(run)
        return run.tally
    async with pool.acquire() as conn:
        snapshot = await conn.fetchval("SELECT now()")
        scope = _Scope(
            after=(selection.since or EPOCH, ""),
            through_received_at=snapshot,
            until=selection.until or FAR_FUTURE,
            type_regex=selection.type_regex(),
            customer=selection.customer,
        )
        total = await conn.fetchval(COUNT_SELECTION, *scope.arguments(scope.after))
    if progress is not None:
        progress.phase("replay", total=total)
    with _collecting_rarely():
        await _walk(run, scope)
    return run.tally
