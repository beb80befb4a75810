"""Events from outside the webhook path (an import file, a backfill listing), taken in as received.

They are stored with `events.insert_events` (a known id is a duplicate and changes nothing),
then the pending ones are processed in Stripe order by the worker's own batch engine
(`processing.Engine` with the INTAKE policy): a failure is recorded and retried later with
backoff, exactly as for an event Stripe sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from stripeline.model.context import Registry
from stripeline.model.events import EventRecord
from stripeline.processing.engine import INTAKE, Batch, Engine, crc32_lane_of
from stripeline.processing.event_files import Malformed
from stripeline.processing.runs import Reporter, Tally, side_by_side
from stripeline.settings import Settings
from stripeline.store.event_log import insert_events

STORE_CHUNK = 1000
PROCESS_BATCH = 500
# A file read in order has each stored chunk's events applied in this many lanes of customers
# at once, each batch on a connection of its own (the store's is a third; a command's pool
# has 4): 5,720-5,799 events/s against 5,203-5,255 in one (bench/import.py, 2026-11-30).
APPLY_LANES = 2


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
) -> None:
    """Process those of the given (created, id) events that are still pending, in that order."""
    ordered = [event_id for _, event_id in sorted(set(keys))]
    engine = Engine(pool, settings, registry)
    if progress is not None:
        progress.phase("process", total=len(ordered))
    for start in range(0, len(ordered), batch_size):
        chunk = ordered[start : start + batch_size]
        await _process(engine, Batch(chunk), tally, progress)
        if progress is not None:
            progress.advance(len(chunk))
        if stop is not None and stop.is_set():
            tally.interrupted = True
            return


async def _process(engine: Engine, batch: Batch, tally: Tally, progress: Reporter | None) -> None:
    """Process one batch of pending events as the worker does, and count what happened."""
    outcome = await engine.run(batch, INTAKE)
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


async def import_events(
    pool: asyncpg.Pool,
    settings: Settings,
    items: Iterable[EventRecord | Malformed],
    tally: Tally,
    counts: ImportCounts,
    *,
    chunk_size: int = STORE_CHUNK,
    progress: Reporter | None = None,
    stop: asyncio.Event | None = None,
    registry: Registry,
) -> None:
    """Store the file's events (duplicates skipped) and process the pending ones in Stripe order.

    A file in chronological order (as `created` goes; the order within a second does not
    matter) is processed as it is read: each stored chunk's events are applied from the records
    in hand, in (created, id) order in each of APPLY_LANES lanes of customers side by side,
    while the next chunk is stored, except those of its last second, which wait for the rest of
    their second. So memory stays flat and the store's writes and the engine's overlap. Any
    other file (listed newest first, as `stripe events list` prints it, or shuffled) is found
    out in its first chunk: it is stored whole, then processed in Stripe order, read back from
    the store. A file that goes back in time only later has its chronological beginning applied
    as it came, and the rest after it, in Stripe order: an older event then comes late, as a late
    webhook does, and the model's rules make the state the same.
    """
    created: dict[str, datetime] = {}
    chunk: list[EventRecord] = []
    engine = Engine(pool, settings, registry)
    # Stored events not yet applied, of the newest second stored so far (while in order).
    waiting: list[EventRecord] = []
    # Stored events left for the end, once the file went back in time.
    left: list[tuple[datetime, str]] = []
    # The file is in chronological order so far (file order, by `created`).
    in_order = True
    went_back = False
    newest: datetime | None = None
    applying: asyncio.Task | None = None

    async def apply_lane(records: list[EventRecord]) -> None:
        for start in range(0, len(records), PROCESS_BATCH):
            part = records[start : start + PROCESS_BATCH]
            await _process(engine, Batch([r.id for r in part], records=part), tally, progress)

    async def apply(records: list[EventRecord]) -> None:
        """Apply these records, in order, one lane of customers per task."""
        lanes: list[list[EventRecord]] = [[] for _ in range(APPLY_LANES)]
        for record in records:
            lanes[crc32_lane_of(record.customer_id, APPLY_LANES)].append(record)
        await side_by_side(apply_lane(lane) for lane in lanes if lane)

    async def store() -> None:
        nonlocal in_order, newest, applying, waiting
        async with pool.acquire() as conn:
            new = await insert_events(conn, chunk)
        counts.stored += len(new)
        counts.duplicates += len(chunk) - len(new)
        if progress is not None:
            progress.advance(len(chunk))
        stored = [r for r in chunk if r.id in new]
        # Already in the store before this import: its stored payload is the one to apply, if
        # it is still pending at all.
        left.extend((r.created, r.id) for r in chunk if r.id not in new)
        chunk.clear()
        if went_back and in_order:
            in_order = False
            left.extend((r.created, r.id) for r in waiting)
            waiting = []
        if not in_order:
            left.extend((r.created, r.id) for r in stored)
            return
        stored = sorted(waiting + stored, key=lambda r: (r.created, r.id))
        if not stored:
            return
        newest = stored[-1].created
        ready = [r for r in stored if r.created < newest]
        waiting = stored[len(ready) :]
        if not ready:
            return
        await finish()
        applying = asyncio.create_task(apply(ready))

    async def finish() -> None:
        nonlocal applying
        if applying is not None:
            task, applying = applying, None
            await task

    newest_read: datetime | None = None
    try:
        if progress is not None:
            progress.phase("store")
        for item in items:
            if isinstance(item, Malformed):
                counts.malformed += 1
                if progress is not None:
                    progress.note(f"{item.where}: skipped, {item.reason}")
                continue
            if item.id in created:
                counts.duplicates += 1
                continue
            created[item.id] = item.created
            went_back = went_back or (newest_read is not None and item.created < newest_read)
            newest_read = item.created if newest_read is None else max(newest_read, item.created)
            chunk.append(item)
            if len(chunk) >= chunk_size:
                await store()
                if stop is not None and stop.is_set():
                    await finish()
                    tally.interrupted = True
                    return
        if chunk:
            await store()
        await finish()
        if waiting:
            await apply(waiting)
    finally:
        if applying is not None:
            applying.cancel()
            await asyncio.gather(applying, return_exceptions=True)
    if left:
        await process_in_order(pool, settings, left, tally, progress=progress, stop=stop, registry=registry)
