"""Events from outside the webhook path (an import file, a backfill listing), taken in as received.

They are stored with `events.insert_events` (a known id is a duplicate and changes nothing)
and processed in Stripe order by the worker's own batch engine (`processing.Engine`): a failure
is recorded and retried later with backoff, exactly as for an event Stripe sent. An import read
in order has most of its events stored by the batch that applies them, processed
(`Batch.unstored`); the rest are stored pending first, then processed. An import's batches
(the IMPORT policy) leave MRR and last payment to `settle_billing` at its end; a backfill's
(INTAKE) recompute them as the worker does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from stripeline.handlers import billing
from stripeline.model.context import Registry
from stripeline.model.events import EventRecord
from stripeline.processing.engine import IMPORT, INTAKE, Batch, Engine, Policy, crc32_lane_of
from stripeline.processing.event_files import Malformed, Unparsed, parsed, parsed_text
from stripeline.processing.lanes import APPLY, DONE, STOP, ForkedLane, LaneProcesses, LaneReporter, serve_parent
from stripeline.processing.replay import ANALYZE_DERIVED
from stripeline.processing.runs import Reporter, Tally, side_by_side
from stripeline.settings import Settings
from stripeline.store.event_log import insert_events, stored_json

# Events read and stored at a time; a lane's share of a chunk is applied as one batch. Batches
# of about 1,000 (a chunk of 2,000 in two lanes) cost a fifth less of PostgreSQL's CPU per event
# than of 500 (each customer's segments and billing refreshed once for more of its events, fewer
# statements per event): 7,053-7,399 events/s against 6,114-6,726 (bench/import.py,
# 2026-11-30); chunks of 3,000 and 4,000 were no faster. A lane process peaks at 66 MB.
STORE_CHUNK = 2000
PROCESS_BATCH = 1000
# A file read in order has each stored chunk's events applied in this many lanes of customers
# at once, each batch on a connection of its own (the store's is another; a command's pool
# has 4): 5,720-5,799 events/s against 5,203-5,255 in one (bench/import.py, 2026-11-30).
APPLY_LANES = 2


@dataclass
class LaneStarts:
    """How the command has its apply lanes run in processes of their own (then Python runs on more
    than one core: the import's one thread was the bound): the argv of lane `lane` of `lanes`,
    started once a file turns out longer than a chunk, or the lanes it forked as it started."""

    argv: Callable[[int, int], list[str]]
    forked: list[ForkedLane] = field(default_factory=list)

    def lanes(self, count: int, more: bool) -> list[list[str]] | list[ForkedLane]:
        """What to start `count` lanes from (none for a file of one chunk without forked lanes)."""
        if len(self.forked) == count:
            return self.forked
        return [self.argv(lane, count) for lane in range(count)] if more else []


# The import's settle (settle_billing) recomputes this many parts of its customers at once: one
# took 0.10 s of 0.14 s for the 842 customers of a 20,000-event import, PostgreSQL's work on one
# connection with the other core idle.
SETTLE_PARTS = 2
IMPORT_LANE_ENDED = ("import lane {number} ended unexpectedly ({how}); run the same import again: it stores and "
                     "applies the events that lane had not applied")


async def process_in_order(
    pool: asyncpg.Pool,
    settings: Settings,
    keys: Iterable[tuple[datetime, str]],
    tally: Tally,
    *,
    batch_size: int = PROCESS_BATCH,
    progress: Reporter | None = None,
    stop: asyncio.Event | None = None,
    registry: Registry,
    policy: Policy = INTAKE,
) -> None:
    """Process those of the given (created, id) events that are still pending, in that order
    (with IMPORT, the caller settles billing at its end)."""
    ordered = [event_id for _, event_id in sorted(set(keys))]
    engine = Engine(pool, settings, registry)
    if progress is not None:
        progress.phase("process", total=len(ordered))
    for start in range(0, len(ordered), batch_size):
        chunk = ordered[start : start + batch_size]
        await _process(engine, Batch(chunk), tally, progress, policy=policy)
        if progress is not None:
            progress.advance(len(chunk))
        if stop is not None and stop.is_set():
            tally.interrupted = True
            return


async def _process(engine: Engine, batch: Batch, tally: Tally, progress: Reporter | None,
                   counts: ImportCounts | None = None, *, policy: Policy = IMPORT) -> None:
    """Process one batch of events as the worker does (those it names stored and pending, and
    those it stores itself), and count what happened. An import's batches (IMPORT) leave
    billing to be settled at the import's end."""
    outcome = await engine.run(batch, policy)
    if counts is not None:
        counts.found(outcome.stored, outcome.already)
    failed = outcome.failed + [event_id for event_id, _ in outcome.retry]
    failures = [f"{event_id}, left for retry (see /api/events/{event_id})" for event_id in failed]
    skipped = len(batch.ids) - len(outcome.processed) - len(failed)  # ignored, or already done
    tally.add(Tally(applied=len(outcome.processed), skipped=skipped, failed=len(failed), failures=failures))
    if progress is not None:
        for failure in failures:
            progress.failure(failure)


@dataclass
class ImportCounts:
    stored: int = 0
    duplicates: int = 0
    malformed: int = 0
    # Events that a batch was to store and found stored already (before this import): left for
    # the end, where the stored payload is applied if it is still pending.
    already: list[str] = field(default_factory=list)

    def found(self, stored: int, already: list[str]) -> None:
        """Count what batches that store their events stored, and found stored already."""
        self.stored += stored
        self.duplicates += len(already)
        self.already += already


def _skipped(malformed: Malformed, counts: ImportCounts, progress: Reporter | None) -> None:
    counts.malformed += 1
    if progress is not None:
        progress.note(f"{malformed.where}: skipped, {malformed.reason}")


def _parsed_all(items: Iterable[EventRecord | Unparsed], counts: ImportCounts,
                progress: Reporter | None) -> list[EventRecord]:
    """The events parsed and checked (an Unparsed's payload, here); the malformed ones counted,
    told, and left out."""
    records = []
    for item in items:
        record = parsed(item)
        if isinstance(record, Malformed):
            _skipped(record, counts, progress)
        else:
            records.append(record)
    return records


def _stored_by_its_batch(record: EventRecord | Unparsed) -> bool:
    """Whether an event read in order is stored by the batch that applies it (processed, in one
    write) rather than before it, pending. Events of a customer are: each is in its customer's
    lane, after that customer's earlier events. Events of no customer are stored first, with
    their chunk: a deletion, in whichever lane, scrubs the stored events that mention the
    customer, and must find those of its chunk and before stored already, as when all of a
    chunk was stored before it was applied."""
    return record.customer_id is not None


class _Tasks:
    """Chunks applied by tasks of this process: one chunk at a time, a task per lane."""

    def __init__(self, engine: Engine, tally: Tally, progress: Reporter | None, counts: ImportCounts):
        self._engine, self._tally, self._progress, self._counts = engine, tally, progress, counts
        self._applying: asyncio.Task | None = None
        self.stopping = asyncio.Event()  # never set: our stop is the command's

    async def apply(self, records: list[EventRecord | Unparsed]) -> None:
        """Start applying these records once the chunk before them is applied."""
        await self.finish()
        lanes = _lanes_of(_parsed_all(records, self._counts, self._progress), APPLY_LANES)
        self._applying = asyncio.create_task(side_by_side(
            _apply_in_batches(self._engine, lane, self._tally, self._progress, self._counts) for lane in lanes if lane))

    async def finish(self) -> None:
        if self._applying is not None:
            task, self._applying = self._applying, None
            await task

    async def close(self) -> None:
        if self._applying is not None:
            self._applying.cancel()
            await asyncio.gather(self._applying, return_exceptions=True)


class _Processes:
    """Chunks applied by lane processes: each gets its customers' events, at most a chunk ahead."""

    def __init__(self, lanes: LaneProcesses, counts: ImportCounts):
        self._lanes, self._counts = lanes, counts
        self.stopping = lanes.stopping  # a lane stopped (signalled itself): so do we

    async def apply(self, records: list[EventRecord | Unparsed]) -> None:
        await self._lanes.caught_up(behind=STORE_CHUNK)
        for lane, part in zip(self._lanes.lanes, _lanes_of(records, len(self._lanes.lanes))):
            if part:
                await lane.send([_lane_line(r) for r in part])

    async def finish(self) -> None:
        await self._lanes.caught_up()
        for lane in self._lanes.lanes:  # what they stored, found stored and found malformed, so far
            self._counts.found(lane.stored, lane.already)
            self._counts.malformed += lane.malformed
            lane.stored, lane.already, lane.malformed = 0, [], 0


def _lane_line(record: EventRecord | Unparsed) -> bytes:
    """What a lane gets of an event: its line number in the file (0: none, or checked already),
    a space, and its JSON text."""
    if isinstance(record, Unparsed):
        return b"%d %b" % (record.line, record.raw)
    return b"0 " + stored_json(record)


async def _apply_in_batches(engine: Engine, records: list[EventRecord], tally: Tally, progress: Reporter | None,
                            counts: ImportCounts, *, stop: asyncio.Event | None = None,
                            done: Callable[[int], None] | None = None) -> None:
    """Apply records read in order, PROCESS_BATCH at a time (`done` told of each batch), until
    `stop`; those not stored yet (`_stored_by_its_batch`) are stored by their batch."""
    for start in range(0, len(records), PROCESS_BATCH):
        if stop is not None and stop.is_set():
            return
        part = records[start : start + PROCESS_BATCH]
        unstored = frozenset(r.id for r in part if _stored_by_its_batch(r))
        await _process(engine, Batch([r.id for r in part], records=part, unstored=unstored), tally, progress, counts)
        if done is not None:
            done(len(part))


def _lanes_of(records: list[Any], count: int) -> list[list[Any]]:
    lanes: list[list[Any]] = [[] for _ in range(count)]
    for record in records:
        lanes[crc32_lane_of(record.customer_id, count)].append(record)
    return lanes


def lane_count(settings: Settings) -> int:
    """Apply lanes in processes: APPLY_LANES, each with a connection, within the command's
    budget (STRIPELINE_DB_POOL_SIZE) less the store's connection; 0: none (the lanes run here)."""
    lanes = min(APPLY_LANES, settings.pool_size("command") - 1)
    return lanes if lanes >= 2 else 0


async def import_events(
    pool: asyncpg.Pool,
    settings: Settings,
    items: Iterable[EventRecord | Unparsed | Malformed],
    tally: Tally,
    counts: ImportCounts,
    *,
    chunk_size: int = STORE_CHUNK,
    progress: Reporter | None = None,
    stop: asyncio.Event | None = None,
    registry: Registry,
    lane_process: LaneStarts | None = None,
) -> None:
    """Store the file's events (duplicates skipped) and process the pending ones in Stripe order.

    A file in chronological order (as `created` goes; the order within a second does not
    matter) is processed as it is read, a chunk at a time: the chunk's events are applied from
    the records in hand, in (created, id) order in each of APPLY_LANES lanes of customers side
    by side, while the next chunk is read, except those of its last second, which wait for the
    rest of their second. An event of a customer is stored by the batch that applies it, already
    processed (one write of its row, not an insert and then an update); the chunk's events of no
    customer are stored first (`_stored_by_its_batch`). So memory stays flat and the reading and
    the engine's writes overlap. With `lane_process` (the command's), a file that forked its
    lanes, or is longer than a chunk, has its lanes in processes of their own (`import_lane`),
    sent the JSON text of their events. Any other file (listed newest first, as `stripe events
    list` prints it, or shuffled) is found out in its first chunk: it is stored whole, then
    processed in Stripe order, read back from the store. A file that goes back in time only
    later has its chronological beginning applied as it came, and the rest after it, in Stripe
    order: an older event then comes late, as a late webhook does, and the model's rules make the
    state the same. An event stored before this import is applied at the end, from its stored
    payload, if still pending.
    """
    created: dict[str, datetime] = {}
    chunk: list[EventRecord | Unparsed] = []
    engine = Engine(pool, settings, registry)
    # Events read in order and not applied yet, of the newest second so far.
    waiting: list[EventRecord | Unparsed] = []
    # Stored events left for the end, once the file went back in time.
    left: list[tuple[datetime, str]] = []
    # The file is in chronological order so far (file order, by `created`).
    in_order = True
    went_back = False
    newest: datetime | None = None
    appliers = contextlib.AsyncExitStack()
    applier: _Tasks | _Processes | None = None

    async def apply(records: list[EventRecord | Unparsed], more: bool) -> None:
        """Apply these records, in order, in lanes of customers (`more`: the file goes on)."""
        nonlocal applier
        if applier is None:
            count = lane_count(settings)
            commands = lane_process.lanes(count, more) if lane_process is not None and count else []
            if commands:
                applier = _Processes(await appliers.enter_async_context(
                    LaneProcesses(commands, tally, progress, stop, unexpected_end=IMPORT_LANE_ENDED)), counts)
            else:
                applier = _Tasks(engine, tally, progress, counts)
                appliers.push_async_callback(applier.close)
        await applier.apply(records)

    async def store(more: bool) -> None:
        """Store what the chunk's batches will not (all of it once the file went back in time),
        and apply the chunk's events that are ready."""
        nonlocal in_order, newest, waiting
        if progress is not None:
            progress.advance(len(chunk))
        if went_back and in_order:
            in_order = False
            # What waited for the rest of its second is left for the end, stored now if not yet.
            left.extend((r.created, r.id) for r in waiting if not _stored_by_its_batch(r))
            chunk.extend(r for r in waiting if _stored_by_its_batch(r))
            waiting = []
        # Stored here: parsed and checked here (an Unparsed's malformed line is skipped now).
        first = _parsed_all((r for r in chunk if not in_order or not _stored_by_its_batch(r)), counts, progress)
        new: set[str] = set()
        if first:
            async with pool.acquire() as conn:
                new = await insert_events(conn, first)
        counts.stored += len(new)
        counts.duplicates += len(first) - len(new)
        # Already in the store before this import: its stored payload is the one to apply, if
        # it is still pending at all.
        left.extend((r.created, r.id) for r in first if r.id not in new)
        if not in_order:
            left.extend((r.created, r.id) for r in first if r.id in new)
            chunk.clear()
            return
        read = sorted(waiting + [r for r in chunk if r.id in new or _stored_by_its_batch(r)],
                      key=lambda r: (r.created, r.id))
        chunk.clear()
        if not read:
            return
        newest = read[-1].created
        ready = [r for r in read if r.created < newest]
        waiting = read[len(ready) :]
        if ready:
            await apply(ready, more)

    def stopped() -> bool:
        return (stop is not None and stop.is_set()) or (applier is not None and applier.stopping.is_set())

    newest_read: datetime | None = None
    async with appliers:
        if progress is not None:
            progress.phase("store")
        for item in items:
            if isinstance(item, Malformed):
                _skipped(item, counts, progress)
                continue
            if item.id in created:
                counts.duplicates += 1
                continue
            created[item.id] = item.created
            went_back = went_back or (newest_read is not None and item.created < newest_read)
            newest_read = item.created if newest_read is None else max(newest_read, item.created)
            chunk.append(item)
            if len(chunk) >= chunk_size:
                await store(more=True)
                if stopped():
                    if applier is not None:
                        await applier.finish()
                    tally.interrupted = True
                    await settle_billing(pool, progress)  # what was applied, consistent
                    return
        if chunk:
            await store(more=False)
        if waiting:
            await apply(waiting, more=False)
        # The file read in order: the model's tables are about as full as they will be, and
        # their statistics are taken while the lanes apply the last chunk, not after.
        analyzing = asyncio.create_task(_analyze(pool)) if in_order and applier is not None else None
        try:
            if applier is not None:
                await applier.finish()
        finally:
            if analyzing is not None:
                await analyzing
    left.extend((created[event_id], event_id) for event_id in counts.already)
    if left:
        await process_in_order(pool, settings, left, tally, progress=progress, stop=stop, registry=registry,
                               policy=IMPORT)
    await settle_billing(pool, progress, analyzed=analyzing is not None and not left)


async def _analyze(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute(ANALYZE_DERIVED)


async def settle_billing(pool: asyncpg.Pool, progress: Reporter | None, *, analyzed: bool = False) -> None:
    """MRR and last payment of every customer the import's batches left unsettled (and of any
    an earlier import left), each recomputed once, in SETTLE_PARTS of the customers at once (a
    connection each), with the statistics of the tables the import filled (`analyzed`: taken
    already): without them (autovacuum analyzes a minute or so later) PostgreSQL planned the
    recompute for tables as empty as they were before, at 300 microseconds a customer instead of
    90 (20,000 events into an empty database)."""
    async with pool.acquire() as conn:
        unsettled = await conn.fetchval(billing.COUNT_UNSETTLED)
        if progress is not None:
            progress.phase("settle", total=unsettled)
        if not unsettled:
            return
        if not analyzed:
            await conn.execute(ANALYZE_DERIVED)

    async def settle(part: int) -> int:
        async with pool.acquire() as conn:
            return await billing.settle_unsettled(conn, part=(part, SETTLE_PARTS))

    settled = sum(await asyncio.gather(*(settle(part) for part in range(SETTLE_PARTS))))
    if progress is not None:
        progress.advance(settled)


async def import_lane(pool: asyncpg.Pool, settings: Settings, *, stop: asyncio.Event, registry: Registry) -> int:
    """The body of an import's lane process: the events its parent sends (one line of the JSON
    text to store each, then `apply`), stored (`_stored_by_its_batch`) and applied in batches
    as sent, each acknowledged; `done` ends it. Its exit code."""
    tally = Tally()
    counts = ImportCounts()
    engine = Engine(pool, settings, registry)

    async def apply_what_comes(parent: LaneReporter) -> None:
        records: list[EventRecord] = []

        def acknowledge(n: int) -> None:
            parent.applied(n, stored=counts.stored, already=counts.already)
            counts.stored, counts.already = 0, []

        while (line := await _next_line(parent, stop)) not in (DONE, STOP):
            if line != APPLY:
                # An event's line number in the file (or 0) and its text, stored as the parent read it.
                number, _, text = line.removesuffix(b"\n").partition(b" ")
                record = parsed_text(text, "")  # where it is, said only if it is malformed
                if isinstance(record, Malformed):
                    parent.malformed(f"line {int(number)}" if number != b"0" else "an event", record.reason)
                else:
                    records.append(record)
                continue
            await _apply_in_batches(engine, records, tally, parent, counts, stop=stop, done=acknowledge)
            records = []
        tally.interrupted = stop.is_set()

    return await serve_parent(tally, stop, settings.schema, apply_what_comes)


async def _next_line(parent: LaneReporter, stop: asyncio.Event) -> bytes:
    """The parent's next line, or STOP once we are asked to stop (by the parent or a signal)."""
    if stop.is_set():
        return STOP
    if not parent.inbox.empty():
        return parent.inbox.get_nowait()
    getting = asyncio.ensure_future(parent.inbox.get())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((getting, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not getting.done():
            getting.cancel()
    return getting.result() if getting.done() and not getting.cancelled() else STOP
