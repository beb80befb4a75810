"""GET /api/events (the event log, filtered and paginated) and POST /api/events/retry (by filter).

Endpoints here are wrapped by `api.authorized`. Filters: `status` (one or more, comma
separated), `type` (an event type or a glob such as `invoice.*`, as `replay --type`),
`customer`, and `since` / `until` on the event's Stripe `created` time. Newest first, by
`created` then id, paginated with the opaque `next` cursor.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stripeline.http import api_input
from stripeline.http.body import read_body
from stripeline.http.responses import BadInput, JSONResponse
from stripeline.logging import log
from stripeline.processing.replay import ReplayRefused, glob_to_regex
from stripeline.store import queue

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
STATUSES = ("pending", "processed", "ignored", "failed")
RETRY_FIELDS = ("type", "customer", "since", "until")
MAX_RETRY_BODY_BYTES = 4096
# Events per enqueued job when many are retried at once, as the sweeper enqueues them.
RETRY_JOB_SIZE = 500

# The customer's name and email come along, so that a list of events reads without lookups.
LIST_EVENTS = """
SELECT e.id, e.type, e.status, e.attempts, e.last_error, e.created, e.received_at, e.processed_at, e.customer_id,
       e.object_id, c.name AS customer_name, c.email AS customer_email
FROM stripe_events AS e
LEFT JOIN customers AS c ON c.id = e.customer_id
"""

# Each filter is a constant clause; a query holds the clauses its request names, so that
# PostgreSQL plans each combination for what it is (the customer index for one customer's
# events, the partial index of unfinished events for failed ones) rather than one generic
# plan for all. Values only ever travel as parameters.
CLAUSES = {
    "statuses": "e.status = ANY(${}::text[])",
    "type_regex": "e.type ~ ${}",
    "customer": "e.customer_id = ${}",
    "since": "e.created >= ${}",
    "until": "e.created < ${}",
}
AFTER_CLAUSE = "(e.created, e.id) < (${}, ${})"

# Put failed events matching a filter back in line, as POST /api/events/{id}/retry does for one.
RETRY_EVENTS = "UPDATE stripe_events AS e SET status = 'pending', next_attempt_at = NULL WHERE e.status = 'failed'"


@dataclass(frozen=True)
class EventFilter:
    statuses: list[str] | None = None
    type_regex: str | None = None
    customer: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def where(self, first: int = 1) -> tuple[list[str], list[Any]]:
        """SQL conditions ($first, $first+1, ...) and their values, for the filters that are set."""
        conditions, values = [], []
        for name, clause in CLAUSES.items():
            value = getattr(self, name)
            if value is not None:
                conditions.append(clause.format(first + len(values)))
                values.append(value)
        return conditions, values


def type_regex(pattern: str | None) -> str | None:
    if pattern is None:
        return None
    try:
        return glob_to_regex(api_input.text(pattern, "type"))
    except ReplayRefused:
        raise BadInput(
            "type must be an event type or a glob of them, such as invoice.* or customer.subscription.*"
        ) from None


def _statuses(raw: str | None) -> list[str] | None:
    if not raw:
        return None
    statuses = [part.strip() for part in raw.split(",") if part.strip()]
    unknown = [status for status in statuses if status not in STATUSES]
    if unknown or not statuses:
        raise BadInput(f"status must be one or more of {', '.join(STATUSES)}, comma separated")
    return statuses


def _check_period(since: datetime | None, until: datetime | None) -> None:
    if since is not None and until is not None and since >= until:
        raise BadInput("since must be earlier than until")


def filter_from_query(request: Request) -> EventFilter:
    query = request.query_params
    found = EventFilter(
        statuses=_statuses(query.get("status")),
        type_regex=type_regex(query.get("type") or None),
        customer=api_input.query_text(request, "customer"),
        since=api_input.query_time(request, "since"),
        until=api_input.query_time(request, "until"),
    )
    _check_period(found.since, found.until)
    return found


def _listing(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "type": row["type"],
        "status": row["status"],
        "attempts": row["attempts"],
        "last_error": row["last_error"],
        "created": row["created"],
        "received_at": row["received_at"],
        "processed_at": row["processed_at"],
        "customer": row["customer_id"],
        "customer_name": row["customer_name"],
        "customer_email": row["customer_email"],
        "object_id": row["object_id"],
    }


async def list_events(request: Request) -> Response:
    selected = filter_from_query(request)
    limit = api_input.parse_limit(request, DEFAULT_LIMIT, MAX_LIMIT)
    after = request.query_params.get("after")
    cursor = api_input.decode_cursor(after) if after else None
    conditions, values = selected.where()
    if cursor is not None:
        conditions.append(AFTER_CLAUSE.format(len(values) + 1, len(values) + 2))
        values += list(cursor)
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    sql = f"{LIST_EVENTS} {where} ORDER BY e.created DESC, e.id DESC LIMIT ${len(values) + 1}"
    async with request.app.state.pool.acquire() as conn:
        rows = await conn.fetch(sql, *values, limit + 1)
    page = rows[:limit]
    more = len(rows) > limit
    return JSONResponse(
        {
            "events": [_listing(row) for row in page],
            "next": api_input.encode_cursor(page[-1]["created"], page[-1]["id"]) if more else None,
        }
    )


def filter_from_body(body: bytes) -> EventFilter:
    try:
        document = orjson.loads(body) if body.strip() else {}
    except orjson.JSONDecodeError:
        raise BadInput('body must be a JSON object such as {"type": "invoice.paid"}') from None
    if not isinstance(document, dict):
        raise BadInput('body must be a JSON object such as {"type": "invoice.paid"}')
    unknown = sorted(set(document) - set(RETRY_FIELDS))
    if unknown:
        raise BadInput(f"unknown field {unknown[0][:40]!r}; a retry filter takes {', '.join(RETRY_FIELDS)}")
    found = EventFilter(
        type_regex=type_regex(document.get("type")),
        customer=None if document.get("customer") is None else api_input.text(document["customer"], "customer"),
        since=None if document.get("since") is None else api_input.parse_time(document["since"], "since"),
        until=None if document.get("until") is None else api_input.parse_time(document["until"], "until"),
    )
    _check_period(found.since, found.until)
    return found


async def retry_events(request: Request) -> Response:
    """Re-enqueue every failed event that matches the filter body; answer how many."""
    state = request.app.state
    selected = filter_from_body(await read_body(request.scope, request.receive, MAX_RETRY_BODY_BYTES))
    conditions, values = selected.where()
    sql = " AND ".join([RETRY_EVENTS, *conditions]) + " RETURNING e.id"
    async with state.pool.acquire() as conn:
        ids = [row["id"] for row in await conn.fetch(sql, *values)]
    enqueued = True
    for start in range(0, len(ids), RETRY_JOB_SIZE):
        try:
            await queue.enqueue_events(state.redis, state.settings.queue_name, ids[start : start + RETRY_JOB_SIZE])
        except Exception as problem:  # noqa: BLE001 - they are pending: the worker's sweeper enqueues them
            log.warning("events_not_enqueued", count=len(ids) - start, error=type(problem).__name__)
            enqueued = False
            break
    log.info("events_retry_requested", count=len(ids))
    return JSONResponse({"retried": len(ids), "enqueued": enqueued}, status_code=202)


ROUTES: list[Route] = [
    Route("/api/events", list_events, methods=["GET"]),
    Route("/api/events/retry", retry_events, methods=["POST"]),
]
