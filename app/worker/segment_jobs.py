"""The scheduled segment refresh: time moves customers between segments with no event at all.

An arq cron ticks every few seconds; at most once per STRIPELINE_SEGMENT_REFRESH_SECONDS
(across all workers) it re-evaluates the customers whose review time has come (a trial ended,
activity grew 2 or 15 days old), set-based, in batches. Each batch takes the per-customer
locks of the customers no event is touching right now; the others are left to that event's
own recompute, or to the next run. New or changed segment definitions trigger one full refresh.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from stripeline.clock import utc_now
from stripeline.handlers import segments
from stripeline.logging import log
from stripeline.settings import Settings

# Customers evaluated per transaction, and at most per run (the rest wait for the next run).
REVIEW_BATCH = 500
REVIEW_LIMIT = 50_000

# The row is created by the migration; recreate it if something emptied the table.
ENSURE_REFRESH_STATE = "INSERT INTO segment_refresh_state DEFAULT VALUES ON CONFLICT DO NOTHING"
# Serialises refresh runs across workers; a run that finds the row locked has nothing to do.
LOCK_REFRESH_STATE = "SELECT definitions, refreshed_at FROM segment_refresh_state FOR UPDATE SKIP LOCKED"
SAVE_REFRESH_STATE = "UPDATE segment_refresh_state SET definitions = $1, refreshed_at = $2"


def _is_recent(refreshed_at: datetime | None, now: datetime, settings: Settings) -> bool:
    # A clock that went backwards (refreshed_at in the future) counts as not recent.
    if refreshed_at is None:
        return False
    return refreshed_at <= now < refreshed_at + timedelta(seconds=settings.segment_refresh_seconds)


REBUILD_IN_PROGRESS = "SELECT EXISTS (SELECT FROM replay_rebuilds)"


async def refresh_segments(ctx: dict[str, Any]) -> dict[str, int]:
    """Apply what time changed to segment memberships; a no-op until the refresh period has passed."""
    settings: Settings = ctx["settings"]
    clock: Callable[[], datetime] = ctx.get("clock", utc_now)
    started = time.perf_counter()
    now = clock()
    async with ctx["pool"].acquire() as conn:
        if await conn.fetchval(REBUILD_IN_PROGRESS):
            # The model is partial until the rebuild ends with its own full refresh.
            return {"skipped": 1}
        await conn.execute(ENSURE_REFRESH_STATE)
        async with conn.transaction():
            state = await conn.fetchrow(LOCK_REFRESH_STATE)
            if state is None:
                return {"skipped": 1}
            if state["definitions"] != segments.DEFINITIONS:
                renumber = segments.renumbered(state["definitions"])
                changes = await segments.refresh_all(conn, now, settings, renumber=renumber)
                await conn.execute(SAVE_REFRESH_STATE, segments.DEFINITIONS, now)
                log.info(
                    "segments_refreshed_all",
                    reason="definitions_changed",
                    renumbered=renumber,
                    entered=changes.entered,
                    exited=changes.exited,
                    duration_ms=round((time.perf_counter() - started) * 1000, 1),
                )
                return {"entered": changes.entered, "exited": changes.exited}
            if _is_recent(state["refreshed_at"], now, settings):
                return {"skipped": 1}
            await conn.execute(SAVE_REFRESH_STATE, segments.DEFINITIONS, now)

        due = await segments.due_for_review(conn, now, REVIEW_LIMIT)
        reviewed = entered = exited = 0
        for start in range(0, len(due), REVIEW_BATCH):
            async with conn.transaction():
                idle = await segments.lock_idle_customers(conn, due[start : start + REVIEW_BATCH])
                # Read the clock once the locks are held: a customer an event has just
                # evaluated must not get a result computed for an earlier time.
                changes = await segments.evaluate(conn, idle, clock(), settings)
            reviewed += len(idle)
            entered += changes.entered
            exited += changes.exited
    if due:
        log.info(
            "segments_refreshed",
            due=len(due),
            reviewed=reviewed,
            entered=entered,
            exited=exited,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )
    return {"due": len(due), "reviewed": reviewed, "entered": entered, "exited": exited}
