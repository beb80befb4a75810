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
from stripeline.processing.engine import INTAKE, Batch, Engine
from stripeline.processing.event_files import Malformed
from stripeline.processing.runs import Reporter, Tally
from stripeline.settings import Settings
from stripeline.store.event_log import insert_events

STORE_CHUNK = 1000
PROCESS_BATCH = 500


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
        outcome = await engine.run(Batch(chunk), INTAKE)
        failed = outcome.failed + [event_id for event_id, _ in outcome.retry]
        failures = [f"{event_id}, left for retry (see /api/events/{event_id})" for event_id in failed]
        skipped = len(chunk) - len(outcome.processed) - len(failed)  # ignored, or already done
        tally.add(Tally(applied=len(outcome.processed), skipped=skipped, failed=len(failed), failures=failures))
        if progress is not None:
            for failure in failures:
                progress.failure(failure)
            progress.advance(len(chunk))
        if stop is not None and stop.is_set():
            tally.interrupted = True
            return


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
    """Store the file's events (duplicates skipped), then process its pending ones in order."""
    created: dict[str, datetime] = {}
    chunk: list[EventRecord] = []

    async def store() -> None:
        async with pool.acquire() as conn:
            new = await insert_events(conn, chunk)
        counts.stored += len(new)
        counts.duplicates += len(chunk) - len(new)
        if progress is not None:
            progress.advance(len(chunk))
        chunk.clear()

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
        chunk.append(item)
        if len(chunk) >= chunk_size:
            await store()
            if stop is not None and stop.is_set():
                tally.interrupted = True
                return
    if chunk:
        await store()
    keys = ((at, event_id) for event_id, at in created.items())
    await process_in_order(pool, settings, keys, tally, progress=progress, stop=stop, registry=registry)
