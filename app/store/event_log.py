"""The event log in PostgreSQL: storing events, reading them back, their counts, and the
marker of a rebuild in progress (while it exists the model is behind the log)."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from stripeline.model.events import EventRecord

# Many events in one statement; a duplicate id is skipped and not returned. The payloads
# arrive as JSON text and are stored as they came (json: PostgreSQL checks the syntax and
# builds nothing, sql/0013). One holding a \u escape goes through jsonb first, so that the log
# refuses what it refused as jsonb (\u0000, a lone surrogate) and can always be read as jsonb
# (the deletion scrub searches payloads as jsonb). Which ones do is found here ($11), not by
# PostgreSQL: its strpos over the payloads cost 4-5 us an event, Python's `in` a tenth of it.
# $12 is the status they are stored with: 'pending', or 'processed' for events that the
# transaction storing them also applies (an import's, `insert_events(done=True)`).
INSERT_EVENTS = """
INSERT INTO stripe_events (id, type, account, livemode, api_version, created,
                           object_type, object_id, customer_id, payload, status, processed_at)
SELECT id, type, account, livemode, api_version, created, object_type, object_id, customer_id,
       CASE WHEN escaped THEN payload::jsonb::json ELSE payload::json END,
       $12::text, CASE WHEN $12::text = 'pending' THEN NULL ELSE now() END
FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::text[], $6::timestamptz[],
            $7::text[], $8::text[], $9::text[], $10::text[], $11::bool[])
     AS e(id, type, account, livemode, api_version, created, object_type, object_id, customer_id, payload, escaped)
ON CONFLICT (id) DO NOTHING
RETURNING id
"""


def stored_json(event: EventRecord) -> bytes:
    """The JSON text an event is stored as: the text it was received in, or orjson's."""
    return event.raw if event.raw is not None else orjson.dumps(event.payload)


def _json_text(event: EventRecord) -> str:
    return stored_json(event).decode()


# The payload text one INSERT carries at most. The statement reads its rows from `unnest` and
# PostgreSQL keeps them in memory up to work_mem (4 MB by default), then in a temporary file:
# 1,000 real-sized events (3.6 MB) wrote one of 6.7 MB per statement, and cost PostgreSQL 36-40
# microseconds of CPU an event against 27-32 in statements of 500-600 (bench/store.py).
INSERT_BYTES = 2_000_000


async def insert_events(conn: asyncpg.Connection, events: list[EventRecord], *, done: bool = False) -> set[str]:
    """Store events, in one transaction; return the ids that were new (the rest were already stored).

    `done`: stored as processed, by a transaction that applies them before it commits (it
    marks those that turn out ignored)."""
    status = "processed" if done else "pending"
    payloads = [_json_text(e) for e in events]
    parts, start, size = [], 0, 0
    for end, payload in enumerate(payloads):
        if size and size + len(payload) > INSERT_BYTES:
            parts.append((start, end))
            start, size = end, 0
        size += len(payload)
    parts.append((start, len(payloads)))
    if len(parts) == 1:
        return await _insert(conn, events, payloads, status)
    new: set[str] = set()
    async with conn.transaction():
        for start, end in parts:
            new |= await _insert(conn, events[start:end], payloads[start:end], status)
    return new


async def _insert(conn: asyncpg.Connection, events: list[EventRecord], payloads: list[str], status: str) -> set[str]:
    rows = await conn.fetch(
        INSERT_EVENTS,
        [e.id for e in events],
        [e.type for e in events],
        [e.account for e in events],
        [e.livemode for e in events],
        [e.api_version for e in events],
        [e.created for e in events],
        [e.object_type for e in events],
        [e.object_id for e in events],
        [e.customer_id for e in events],
        payloads,
        # "\\" first: one memchr rules out most payloads (a search for "\\u" costs ten times as much).
        ["\\" in payload and "\\u" in payload for payload in payloads],
        status,
    )
    return {row["id"] for row in rows}


GET_EVENT = """
SELECT id, type, status, attempts, last_error, received_at, processed_at, payload
FROM stripe_events WHERE id = $1
"""

# Put a finished-badly event back in line; a pending one is left as it is.
RESET_FOR_RETRY = """
UPDATE stripe_events SET status = 'pending', next_attempt_at = NULL
WHERE id = $1 AND status = 'failed'
RETURNING id
"""

# Kept by triggers on stripe_events (sql/0006_event_counts.sql): deltas, summed here.
COUNT_BY_STATUS = "SELECT status, sum(n)::bigint AS n FROM stripe_event_counts GROUP BY status"
# Fold the deltas into one row per status. Deltas committed meanwhile are not in the
# DELETE's snapshot and stay; two folds at once each move only the rows they deleted.
FOLD_COUNTS = """
WITH folded AS (DELETE FROM stripe_event_counts RETURNING status, n)
INSERT INTO stripe_event_counts (status, n)
SELECT status, sum(n) FROM folded GROUP BY status HAVING sum(n) <> 0
"""

SYNC_SUMMARY = """
SELECT
    (SELECT min(received_at) FROM stripe_events WHERE status = 'pending') AS oldest_pending_at,
    (SELECT max(received_at) FROM stripe_events) AS last_event_at,
    now() AS now
"""


async def count_by_status(conn: asyncpg.Connection) -> dict[str, int]:
    counts = {"pending": 0, "processed": 0, "ignored": 0, "failed": 0}
    for row in await conn.fetch(COUNT_BY_STATUS):
        counts[row["status"]] = row["n"]
    return counts


async def fold_counts(conn: asyncpg.Connection) -> None:
    """Keep the count deltas few (the worker's sweeper calls this)."""
    await conn.execute(FOLD_COUNTS)


GET_REBUILD = """
SELECT started_at, through_received_at, after_created, after_id, events_done, events_total FROM replay_rebuilds
"""


async def rebuild_status(conn: asyncpg.Connection) -> dict[str, Any] | None:
    """The rebuild in progress, if any: while it runs the billing model is incomplete."""
    marker = await conn.fetchrow(GET_REBUILD)
    if marker is None:
        return None
    return {key: marker[key] for key in ("started_at", "events_done", "events_total")}
