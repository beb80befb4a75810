"""The /api routes: bearer-token auth, sync health and the event store.

Routes about customers and segments live in their own modules and are gathered here.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from functools import wraps

from starlette.requests import Request
from starlette.responses import Response

from stripeline.http.api_input import check_request, is_digits
from stripeline.http.responses import JSONResponse, error, iso
from stripeline.logging import log
from stripeline.store import event_log, queue

Endpoint = Callable[[Request], Awaitable[Response]]

# Pending work older than this makes the sync "lagging".
LAGGING_AFTER_SECONDS = 60




def authorized(endpoint: Endpoint, accepts: frozenset[str] | None = None) -> Endpoint:
    """Require `Authorization: Bearer $STRIPELINE_API_TOKEN`, and check the request's parameters.

    Ids in the path and values in the query are checked (api_input.check_request), and with
    `accepts` (the query parameters the route takes, as its OpenAPI description lists them) an
    unknown parameter is refused, as Stripe's API does: a typo such as `?stauts=failed` must not
    quietly list everything. Errors are mapped to answers by stripeline.http.responses, for the whole app.
    """

    @wraps(endpoint)
    async def guarded(request: Request) -> Response:
        token = request.app.state.settings.api_token
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # Both sides as UTF-8 bytes: compare_digest refuses non-ASCII str, and an odd header
        # must be a 401, not an error.
        if not token or scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            return error(401, "missing or wrong bearer token")
        check_request(request, accepts)
        return await endpoint(request)

    return guarded


CUSTOMERS_IN_SYNC = "SELECT count(*) FROM customers WHERE NOT deleted_in_stripe"


async def sync_health(request: Request) -> Response:
    async with request.app.state.pool.acquire() as conn:
        counts = await event_log.count_by_status(conn)
        summary = await conn.fetchrow(event_log.SYNC_SUMMARY)
        customers = await conn.fetchval(CUSTOMERS_IN_SYNC)
        rebuild = await event_log.rebuild_status(conn)
    oldest = summary["oldest_pending_at"]
    age = round((summary["now"] - oldest).total_seconds(), 3) if oldest else None
    if counts["failed"]:
        status = "failing"
    elif rebuild is not None or (age is not None and age > LAGGING_AFTER_SECONDS):
        # A rebuild emptied the billing model and is refilling it: the model is behind the log.
        # The contract's three statuses stay; the `rebuild` key says why and how far along.
        status = "lagging"
    else:
        status = "healthy"
    return JSONResponse(
        {
            "status": status,
            "events": {"received": sum(counts.values()), **counts},
            "oldest_pending_age_seconds": age,
            "last_event_at": iso(summary["last_event_at"]),
            "customers_in_sync": customers,
            "rebuild": None if rebuild is None else {**rebuild, "started_at": iso(rebuild["started_at"])},
        }
    )


# Received, processed and failed (attempts) per minute, every minute of the window, zeros
# included; the triggers of sql/0012 keep the per-minute deltas.
SYNC_HISTORY = """
SELECT m.minute AS at,
       coalesce(sum(d.received), 0)::bigint AS received,
       coalesce(sum(d.processed), 0)::bigint AS processed,
       coalesce(sum(d.failed), 0)::bigint AS failed
FROM generate_series(date_trunc('minute', now()) - make_interval(mins => $1 - 1), date_trunc('minute', now()),
                     interval '1 minute') AS m(minute)
LEFT JOIN stripe_event_minutes AS d ON d.minute = m.minute
GROUP BY m.minute
ORDER BY m.minute
"""
DEFAULT_HISTORY_MINUTES = 180
# sql/0012's deltas are kept two days (app/worker/metrics.py prunes older ones).
MAX_HISTORY_MINUTES = 2880


async def sync_history(request: Request) -> Response:
    """Events received, processed and failed per minute over the last `minutes`, oldest first."""
    raw = request.query_params.get("minutes")
    if raw is not None and (not is_digits(raw) or not 1 <= int(raw) <= MAX_HISTORY_MINUTES):
        return error(400, f"minutes must be a whole number from 1 to {MAX_HISTORY_MINUTES}")
    minutes = int(raw) if raw is not None else DEFAULT_HISTORY_MINUTES
    async with request.app.state.pool.acquire() as conn:
        rows = await conn.fetch(SYNC_HISTORY, minutes)
    return JSONResponse({"interval_seconds": 60, "history": [dict(row) for row in rows]})


async def get_event(request: Request) -> Response:
    async with request.app.state.pool.acquire() as conn:
        row = await conn.fetchrow(event_log.GET_EVENT, request.path_params["event_id"])
    if row is None:
        return error(404, "no such event")
    return JSONResponse(dict(row))


async def retry_event(request: Request) -> Response:
    state = request.app.state
    event_id = request.path_params["event_id"]
    async with state.pool.acquire() as conn:
        reset = await conn.fetchval(event_log.RESET_FOR_RETRY, event_id)
        if reset is None:
            status = await conn.fetchval("SELECT status FROM stripe_events WHERE id = $1", event_id)
    if reset is None:
        if status is None:
            return error(404, "no such event")
        return error(409, f"event is {status}, only a failed event can be retried")
    try:
        await queue.enqueue_events(state.redis, state.settings.queue_name, [event_id], job_id=f"retry:{event_id}:api")
    except Exception as problem:  # noqa: BLE001 - the sweeper will enqueue it
        log.warning("event_not_enqueued", event_id=event_id, error=type(problem).__name__)
    log.info("event_retry_requested", event_id=event_id)
    return JSONResponse({"id": event_id, "status": "pending"}, status_code=202)
