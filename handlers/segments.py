"""Lifecycle segments: the eight rules in one place, and membership recomputed with its history.

Each segment is a SQL boolean over one row of per-customer facts (below). One statement
evaluates every segment for a list of customers (after an event, in its transaction) or for
all customers (a full refresh), diffs the result against `segment_memberships`, applies the
entries and exits, appends them to `segment_history`, and, when a segment webhook is
configured, writes them to the outbox. The clock is always a parameter (`now`), never SQL's
now(), so tests freeze and advance time and replay is deterministic.

Time-based segments change with no event (a trial ends, activity grows old). Each segment
names its `wakes`: the instants at which its answer may flip. The earliest future one is kept
per customer in `segment_reviews`, and the scheduled refresh re-evaluates just the customers
that are due, instead of scanning everyone every minute.

Deleted customers: a customer deleted in Stripe leaves `syncing_with_stripe` and every
segment that promises a live relation (current and slipping trials, customers, slipping
customers, past due), even if a stale subscription row still says `active`; Stripe cancels a
deleted customer's subscriptions, and so does our deletion policy. It keeps what its history
says: `churned_customers` and `expired_trials`. A customer whose row is removed (deletion
mode `delete`) leaves every segment.

The statements are assembled once, at import, from these module constants and the segment
definitions (keys checked to be plain identifiers); no value from outside ever enters SQL text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from app.processing import ProcessingContext
from app.settings import Settings


@dataclass(frozen=True)
class Segment:
    key: str
    name: str
    # A SQL boolean over one row of facts (columns listed at FACTS).
    rule: str
    # SQL timestamps over the same row at which the rule's answer may change with no event.
    wakes: tuple[str, ...] = ()


# "More than 2 days" is measured in hours: with timestamptz, '2 days' means calendar days in
# the session's time zone and would stretch or shrink across a daylight-saving change.
SEGMENTS: tuple[Segment, ...] = (
    Segment("syncing_with_stripe", "Syncing with Stripe", "NOT deleted"),
    Segment("current_trials", "Current Trials", "in_trial AND NOT deleted", wakes=("next_trial_end",)),
    Segment(
        "slipping_trials",
        "Slipping Trials",
        "in_trial AND NOT deleted AND last_activity_at < now - interval '48 hours'",
        wakes=("next_trial_end", "last_activity_at + interval '48 hours'"),
    ),
    Segment(
        "slipping_customers",
        "Slipping Customers",
        "paying AND NOT deleted AND last_activity_at < now - interval '360 hours'",
        wakes=("last_activity_at + interval '360 hours'",),
    ),
    Segment("expired_trials", "Expired Trials", "trial_ended AND NOT paying", wakes=("next_trial_end",)),
    Segment("customers", "Customers", "paying AND NOT deleted"),
    Segment("churned_customers", "Churned Customers", "has_subscriptions AND NOT live AND lapsed"),
    Segment("past_due", "Past Due Subscriptions", "past_due AND NOT deleted"),
)

BY_KEY: dict[str, Segment] = {segment.key: segment for segment in SEGMENTS}

for _segment in SEGMENTS:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", _segment.key):
        raise ValueError(f"segment key {_segment.key!r} must be a plain identifier")

# What a full refresh must be re-run for: a new, removed or changed definition.
DEFINITIONS = "\n".join(f"{s.key}|{s.rule}|{','.join(s.wakes)}" for s in SEGMENTS)

# Cause recorded for changes made by the scheduled refresh and by a full refresh.
REFRESH_CAUSE = "refresh"

# --- The statement, in pieces. $1 is the clock, $2 the default cause, $3 whether to write
# --- the outbox; the per-customer form adds $4 (customer ids) and $5 (their causes).

# FACTS: one row per customer, the only columns a rule or a wake may read:
#   customer_id, now, deleted, has_subscriptions, in_trial (a `trialing` subscription whose
#   trial_end is in the future), paying (`active` or `past_due`), past_due, live (`trialing`,
#   `active` or `past_due`), lapsed (`canceled`, `incomplete_expired` or `unpaid`),
#   trial_ended (a trial_end not in the future), next_trial_end, last_activity_at (latest
#   activity, else the customer's Stripe creation time).
_SUBSCRIPTION_FACTS = """
    SELECT customer_id,
           bool_or(status = 'trialing' AND trial_end > $1) AS in_trial,
           bool_or(status IN ('active', 'past_due')) AS paying,
           bool_or(status = 'past_due') AS past_due,
           bool_or(status IN ('trialing', 'active', 'past_due')) AS live,
           bool_or(status IN ('canceled', 'incomplete_expired', 'unpaid')) AS lapsed,
           bool_or(trial_end <= $1) AS trial_ended,
           min(trial_end) FILTER (WHERE trial_end > $1) AS next_trial_end
    FROM subscriptions
"""

_ACTIVITY_FACTS = """
    SELECT customer_id, max(at) AS last_activity_at
    FROM customer_activity
"""

_FACTS_COLUMNS = """
    SELECT c.id AS customer_id,
           $1::timestamptz AS now,
           c.deleted_in_stripe AS deleted,
           s.customer_id IS NOT NULL AS has_subscriptions,
           coalesce(s.in_trial, false) AS in_trial,
           coalesce(s.paying, false) AS paying,
           coalesce(s.past_due, false) AS past_due,
           coalesce(s.live, false) AS live,
           coalesce(s.lapsed, false) AS lapsed,
           coalesce(s.trial_ended, false) AS trial_ended,
           s.next_trial_end,
           coalesce(a.last_activity_at, c.created_at) AS last_activity_at
    FROM customers AS c
"""

_IN_SCOPE = " WHERE customer_id = ANY($4::text[])"


def _facts(scoped: bool) -> str:
    where = _IN_SCOPE if scoped else ""
    return (
        _FACTS_COLUMNS
        + "    LEFT JOIN ("
        + _SUBSCRIPTION_FACTS
        + where
        + " GROUP BY customer_id) AS s ON s.customer_id = c.id\n"
        + "    LEFT JOIN ("
        + _ACTIVITY_FACTS
        + where
        + " GROUP BY customer_id) AS a ON a.customer_id = c.id\n"
        + ("    WHERE c.id = ANY($4::text[])\n" if scoped else "")
    )


def _membership_values() -> str:
    return ",\n        ".join(f"('{s.key}', {s.rule})" for s in SEGMENTS)


def _review_at() -> str:
    wakes = list(dict.fromkeys(w for s in SEGMENTS for w in s.wakes))
    if not wakes:
        return "NULL::timestamptz"
    # A wake exactly at `now` is kept: the rule flips just after it, so look again then.
    return "LEAST(" + ", ".join(f"CASE WHEN ({w}) >= now THEN ({w}) END" for w in wakes) + ")"


def _refresh_statement(scoped: bool) -> str:
    """The one statement that evaluates, diffs, applies and records every segment."""
    if scoped:
        scope = """
scope AS (
    SELECT DISTINCT ON (customer_id) customer_id, coalesce(cause, $2) AS cause
    FROM unnest($4::text[], $5::text[]) AS given(customer_id, cause)
    ORDER BY customer_id
),"""
        mine = "m.customer_id = ANY($4::text[]) AND "
        cause_of = "(SELECT cause FROM scope WHERE scope.customer_id = changed.customer_id)"
    else:
        scope, mine, cause_of = "", "", "$2"
    return f"""
WITH {scope}
facts AS ({_facts(scoped)}),
wanted AS (
    SELECT m.segment, f.customer_id
    FROM facts AS f
    CROSS JOIN LATERAL (VALUES
        {_membership_values()}
    ) AS m(segment, member)
    WHERE m.member
),
entered AS (
    INSERT INTO segment_memberships (segment, customer_id, entered_at)
    SELECT w.segment, w.customer_id, $1 FROM wanted AS w
    WHERE NOT EXISTS (
        SELECT 1 FROM segment_memberships AS m WHERE m.segment = w.segment AND m.customer_id = w.customer_id
    )
    ON CONFLICT DO NOTHING
    RETURNING segment, customer_id
),
exited AS (
    DELETE FROM segment_memberships AS m
    WHERE {mine}NOT EXISTS (
        SELECT 1 FROM wanted AS w WHERE w.segment = m.segment AND w.customer_id = m.customer_id
    )
    RETURNING segment, customer_id
),
changed AS (
    SELECT segment, customer_id, 'entered' AS change FROM entered
    UNION ALL
    SELECT segment, customer_id, 'exited' AS change FROM exited
),
recorded AS (
    INSERT INTO segment_history (segment, customer_id, change, at, cause)
    SELECT segment, customer_id, change, $1, {cause_of} FROM changed
    RETURNING id, segment, customer_id, change, at, cause
),
announced AS (
    INSERT INTO outbox (kind, payload, created_at, next_attempt_at)
    SELECT 'segment_webhook',
           jsonb_build_object(
               'id', 'segchg_' || r.id,
               'object', 'event',
               'type', 'segment.' || r.change,
               'created', floor(extract(epoch FROM r.at))::bigint,
               'data', jsonb_build_object(
                   'segment', r.segment,
                   'customer', r.customer_id,
                   'change', r.change,
                   'at', to_char(r.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                   'cause', r.cause)),
           $1, $1
    FROM recorded AS r
    WHERE $3::boolean
),
reviews AS (
    SELECT customer_id, {_review_at()} AS review_at FROM facts
),
rescheduled AS (
    INSERT INTO segment_reviews (customer_id, review_at)
    SELECT r.customer_id, r.review_at
    FROM reviews AS r LEFT JOIN segment_reviews AS old ON old.customer_id = r.customer_id
    WHERE r.review_at IS NOT NULL AND old.review_at IS DISTINCT FROM r.review_at
    ON CONFLICT (customer_id) DO UPDATE SET review_at = excluded.review_at
),
unscheduled AS (
    DELETE FROM segment_reviews AS m
    WHERE {mine}NOT EXISTS (
        SELECT 1 FROM reviews AS r WHERE r.customer_id = m.customer_id AND r.review_at IS NOT NULL
    )
)
SELECT (SELECT count(*) FROM entered) AS entered, (SELECT count(*) FROM exited) AS exited
"""


REFRESH_CUSTOMERS = _refresh_statement(scoped=True)
REFRESH_ALL = _refresh_statement(scoped=False)

# What the rules say right now, without writing anything: for checks and tests.
EVALUATE_CUSTOMERS = f"""
WITH facts AS ({_facts(scoped=True)})
SELECT m.segment, f.customer_id
FROM facts AS f
CROSS JOIN LATERAL (VALUES
    {_membership_values()}
) AS m(segment, member)
WHERE m.member
ORDER BY f.customer_id, m.segment
"""

DUE_FOR_REVIEW = """
SELECT customer_id FROM segment_reviews WHERE review_at <= $1 ORDER BY review_at LIMIT $2
"""

# Skip customers an event is being applied to right now: that transaction re-evaluates them.
LOCK_IDLE_CUSTOMERS = """
SELECT customer_id FROM unnest($1::text[]) AS given(customer_id)
WHERE pg_try_advisory_xact_lock(hashtextextended(customer_id, 0))
"""

SEGMENTS_OF_CUSTOMER = "SELECT segment FROM segment_memberships WHERE customer_id = $1"

# Hash joins over every customer want more memory than a typical default work_mem (4 MB).
FULL_REFRESH_WORK_MEM = "SET LOCAL work_mem = '256MB'"


@dataclass(frozen=True)
class Changes:
    entered: int
    exited: int


def announces(settings: Settings) -> bool:
    """Segment changes go to the outbox only when a segment webhook URL is configured."""
    return settings.segment_webhook_url is not None


async def refresh_customers(conn: asyncpg.Connection, customer_ids: list[str], ctx: ProcessingContext) -> None:
    """Refresher: recompute the segments of the customers an event batch touched, in its transaction."""
    causes = [ctx.causes.get(c) for c in customer_ids]
    await evaluate(conn, customer_ids, ctx.now, ctx.settings, causes, ctx.cause)


async def evaluate(
    conn: asyncpg.Connection,
    customer_ids: list[str],
    now: datetime,
    settings: Settings,
    causes: list[str | None] | None = None,
    cause: str | None = None,
) -> Changes:
    """Re-evaluate every segment for these customers; changes are recorded with their cause."""
    if not customer_ids:
        return Changes(0, 0)
    causes = causes if causes is not None else [None] * len(customer_ids)
    row = await conn.fetchrow(
        REFRESH_CUSTOMERS, now, cause or REFRESH_CAUSE, announces(settings), list(customer_ids), causes
    )
    return Changes(row["entered"], row["exited"])


async def refresh_all(conn: asyncpg.Connection, now: datetime, settings: Settings, cause: str = REFRESH_CAUSE) -> Changes:
    """Re-evaluate every segment for every customer: one statement. Run it in a transaction."""
    await conn.execute(FULL_REFRESH_WORK_MEM)
    row = await conn.fetchrow(REFRESH_ALL, now, cause, announces(settings))
    return Changes(row["entered"], row["exited"])


async def due_for_review(conn: asyncpg.Connection, now: datetime, limit: int) -> list[str]:
    """Customers whose time-based segments may have changed by `now`, earliest first."""
    return [row["customer_id"] for row in await conn.fetch(DUE_FOR_REVIEW, now, limit)]


async def lock_idle_customers(conn: asyncpg.Connection, customer_ids: list[str]) -> list[str]:
    """Take the per-customer lock of those no other transaction holds; return them."""
    return [row["customer_id"] for row in await conn.fetch(LOCK_IDLE_CUSTOMERS, customer_ids)]


async def segments_of(conn: asyncpg.Connection, customer_id: str) -> list[str]:
    """The keys of the segments a customer is in, in definition order (for GET /api/customers/{id})."""
    found = {row["segment"] for row in await conn.fetch(SEGMENTS_OF_CUSTOMER, customer_id)}
    return [s.key for s in SEGMENTS if s.key in found]
