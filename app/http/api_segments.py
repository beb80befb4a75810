"""/api/segments (counts, members, history) and /api/activity (product activity).

Endpoints here are wrapped by `api.authorized`; their input is checked by app.api_input and
refused with BadInput, which stripeline.http.responses answers 400 with a message that says what to fix.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stripeline.clock import utc_now
from stripeline.handlers import segments
from stripeline.http import api_input
from stripeline.http.api_input import parse_time
from stripeline.http.body import read_body
from stripeline.http.metrics import COUNT_MEMBERS
from stripeline.http.responses import BadInput, JSONResponse, error, iso
from stripeline.processing.engine import lock_customers

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_BATCH = 1000
# A full batch of activity (MAX_BATCH items, each an id or an email and a time).
ACTIVITY_MAX_BYTES = 1024 * 1024
# Activity "in the future" beyond this much clock skew is a mistake on the caller's side.
FUTURE_TOLERANCE = timedelta(minutes=5)
ACTIVITY_CAUSE = "activity"
ACTIVITY_FIELDS = ("customer", "email", "at")
BEGINNING = datetime(1, 1, 1, tzinfo=timezone.utc)

# Keyset pagination: a page starts after the last customer id of the previous one, so members
# who join or leave meanwhile never shift, repeat or hide the others.
SEGMENT_MEMBERS = """
SELECT customer_id FROM segment_memberships
WHERE segment = $1 AND customer_id > $2
ORDER BY customer_id
LIMIT $3
"""

# The same page with each member's name, email, MRR and the time it entered the segment.
SEGMENT_MEMBERS_EXPANDED = """
SELECT m.customer_id, m.entered_at, c.name, c.email, c.mrr, c.currency, c.deleted_in_stripe
FROM segment_memberships AS m
LEFT JOIN customers AS c ON c.id = m.customer_id
WHERE m.segment = $1 AND m.customer_id > $2
ORDER BY m.customer_id
LIMIT $3
"""
EXPANSIONS = ("customer",)

HISTORY_CURSOR = "SELECT at FROM segment_history WHERE id = $1 AND segment = $2"

SEGMENT_HISTORY = """
SELECT id, customer_id, change, at, cause FROM segment_history
WHERE segment = $1 AND at >= $2 AND (at, id) > ($3, $4)
ORDER BY at, id
LIMIT $5
"""

CUSTOMERS_BY_ID = "SELECT id FROM customers WHERE id = ANY ($1::text[])"
CUSTOMERS_BY_EMAIL = """
SELECT id, lower(email) AS email FROM customers
WHERE lower(email) = ANY ($1::text[]) AND email IS NOT NULL
"""

RECORD_ACTIVITY = """
WITH recorded AS (
    INSERT INTO customer_activity (customer_id, at)
    SELECT customer_id, at FROM unnest($1::text[], $2::timestamptz[]) AS given(customer_id, at)
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM recorded
"""


def parse_limit(request: Request) -> int:
    return api_input.parse_limit(request, DEFAULT_LIMIT, MAX_LIMIT)


def _segment(request: Request) -> segments.Segment | None:
    return segments.BY_KEY.get(request.path_params["key"])


async def list_segments(request: Request) -> Response:
    async with request.app.state.pool.acquire() as conn:
        counts = {row["segment"]: row["members"] for row in await conn.fetch(COUNT_MEMBERS)}
    return JSONResponse([{"key": s.key, "name": s.name, "count": counts.get(s.key, 0)} for s in segments.SEGMENTS])


async def segment_customers(request: Request) -> Response:
    segment = _segment(request)
    if segment is None:
        return error(404, "no such segment")
    limit = parse_limit(request)
    after = request.query_params.get("after") or ""
    if after:
        after = api_input.text(after, "after")
    expand = request.query_params.get("expand")
    if expand is not None and expand not in EXPANSIONS:
        raise BadInput("expand must be customer (or left out for bare ids)")
    async with request.app.state.pool.acquire() as conn:
        rows = await conn.fetch(SEGMENT_MEMBERS_EXPANDED if expand else SEGMENT_MEMBERS, segment.key, after, limit + 1)
    page = rows[:limit]
    more = len(rows) > limit
    if expand:
        customers: list[Any] = [
            {
                "id": row["customer_id"],
                "name": row["name"],
                "email": row["email"],
                "mrr": row["mrr"],
                "currency": row["currency"],
                "deleted_in_stripe": row["deleted_in_stripe"],
                "entered_at": row["entered_at"],
            }
            for row in page
        ]
    else:
        customers = [row["customer_id"] for row in page]
    return JSONResponse(
        {"segment": segment.key, "customers": customers, "next": page[-1]["customer_id"] if more else None}
    )


async def segment_history(request: Request) -> Response:
    """Entries and exits, oldest first, from `since`; paginated by `after` (the `next` cursor)."""
    segment = _segment(request)
    if segment is None:
        return error(404, "no such segment")
    query = request.query_params
    limit = parse_limit(request)
    since = parse_time(query["since"], "since") if query.get("since") else BEGINNING
    after = query.get("after")
    if after is not None and not api_input.is_digits(after):
        raise BadInput("after must be the `next` cursor of a previous page")
    async with request.app.state.pool.acquire() as conn:
        cursor = (BEGINNING, 0)
        if after is not None:
            at = await conn.fetchval(HISTORY_CURSOR, int(after), segment.key)
            if at is None:
                return error(400, "after must be the `next` cursor of a previous page")
            cursor = (at, int(after))
        rows = await conn.fetch(SEGMENT_HISTORY, segment.key, since, *cursor, limit + 1)
    page = rows[:limit]
    return JSONResponse(
        {
            "segment": segment.key,
            "history": [
                {"customer": row["customer_id"], "change": row["change"], "at": iso(row["at"]), "cause": row["cause"]}
                for row in page
            ],
            "next": str(page[-1]["id"]) if len(rows) > limit else None,
        }
    )


def parse_activity(body: bytes, now: datetime) -> list[tuple[str, str, datetime]]:
    """(field, customer id or lowercased email, at) for each item of a POST /api/activity body."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadInput("body must be JSON: an object or a list of objects") from None
    single = isinstance(document, dict)
    items = [document] if single else document
    if not isinstance(items, list) or not items:
        raise BadInput("body must be an object or a non-empty list of objects")
    if len(items) > MAX_BATCH:
        raise BadInput(f"at most {MAX_BATCH} items per request")
    parsed = []
    for index, item in enumerate(items):
        where = "" if single else f"item {index}: "
        try:
            parsed.append(_activity_item(item, now))
        except BadInput as problem:
            raise BadInput(f"{where}{problem}") from None
    return parsed


def _activity_item(item: Any, now: datetime) -> tuple[str, str, datetime]:
    if not isinstance(item, dict):
        raise BadInput('must be an object like {"customer": "cus_...", "at": "2024-01-31T12:00:00Z"}')
    unknown = sorted(set(item) - set(ACTIVITY_FIELDS))
    if unknown:
        raise BadInput(f"unknown field {unknown[0][:40]!r}; expected customer or email, and at")
    if ("customer" in item) == ("email" in item):
        raise BadInput("give exactly one of customer (a Stripe customer id) or email")
    field = "customer" if "customer" in item else "email"
    value = api_input.text(item[field], field)
    at = now if item.get("at") is None else parse_time(item["at"], "at")
    if at > now + FUTURE_TOLERANCE:
        raise BadInput("at is in the future")
    return field, value.lower() if field == "email" else value, at


async def record_activity(request: Request) -> Response:
    """Record product activity and recompute the customers' segments in the same transaction."""
    state = request.app.state
    now = utc_now()
    body = await read_body(request.scope, request.receive, ACTIVITY_MAX_BYTES)
    items = parse_activity(body, now)
    single = len(items) == 1
    async with state.pool.acquire() as conn, conn.transaction():
        ids = {row["id"] for row in await conn.fetch(CUSTOMERS_BY_ID, [v for f, v, _ in items if f == "customer"])}
        by_email: dict[str, list[str]] = {}
        for row in await conn.fetch(CUSTOMERS_BY_EMAIL, [v for f, v, _ in items if f == "email"]):
            by_email.setdefault(row["email"], []).append(row["id"])
        customer_ids, times = [], []
        for index, (field, value, at) in enumerate(items):
            matched = ([value] if value in ids else []) if field == "customer" else by_email.get(value, [])
            if not matched:
                where = "" if single else f"item {index}: "
                what = f"customer {value}" if field == "customer" else "customer with that email"
                return error(404, f"{where}no {what}")
            customer_ids += matched
            times += [at] * len(matched)
        touched = sorted(set(customer_ids))
        await lock_customers(conn, touched)
        recorded = await conn.fetchval(RECORD_ACTIVITY, customer_ids, times)
        await segments.evaluate(conn, touched, now, state.settings, cause=ACTIVITY_CAUSE)
    return JSONResponse({"recorded": recorded, "duplicates": len(customer_ids) - recorded, "customers": touched})


ROUTES: list[Route] = [
    Route("/api/segments", list_segments),
    Route("/api/segments/{key}/customers", segment_customers),
    Route("/api/segments/{key}/history", segment_history),
    Route("/api/activity", record_activity, methods=["POST"]),
]
