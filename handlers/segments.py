"""Lifecycle segments: the eight rules in one place, and membership recomputed with its history.

Each segment is a SQL boolean over one row of per-customer facts (below). One statement
evaluates every segment for a list of customers (after an event, in its transaction) or for
all customers (a full refresh), diffs the result against `segment_memberships`, applies the
entries and exits, appends them to `segment_history`, and, when a segment webhook is
configured, writes them to the outbox. The clock is always a parameter (`now`), never SQL's
now(), so tests freeze and advance time and replay is deterministic.

Time-based segments change with no event (a trial ends, activity grows old). Each segment
names its `wakes`: the instants at which its answer may flip. The earliest one still ahead is
kept per customer in `segment_evaluations.review_at`, and the scheduled refresh
(app/worker/segment_jobs.py) re-evaluates just the customers that are due, instead of scanning
everyone every minute.

Concurrency: evaluations of single customers run under the per-customer lock of event
processing (stripeline.processing.engine.lock_customers) and share REFRESH_LOCK; a full refresh takes
REFRESH_LOCK alone. So one customer is never evaluated by two transactions at once, and
`segment_evaluations` (the diff's base) always agrees with `segment_memberships`.

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

from stripeline.model.context import ProcessingContext
from stripeline.model.locks import customer_lock_key
from stripeline.settings import Settings


@dataclass(frozen=True)
class Segment:
    key: str
    name: str
    # A SQL boolean over one row of FACTS (the columns are listed below).
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


def renumbered(previous_definitions: str | None) -> bool:
    """Whether stored segment bits mean other segments now: one was removed or moved.

    A segment appended at the end, or a changed rule, keeps every existing bit's meaning.
    """
    if previous_definitions is None:
        return True
    previous = [line.split("|", 1)[0] for line in previous_definitions.splitlines()]
    return previous != [s.key for s in SEGMENTS][: len(previous)]


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
    """FACTS for the customers listed in $4, or for every customer."""
    where = _IN_SCOPE if scoped else ""
    return f"""{_FACTS_COLUMNS}
    LEFT JOIN ({_SUBSCRIPTION_FACTS}{where} GROUP BY customer_id) AS s ON s.customer_id = c.id
    LEFT JOIN ({_ACTIVITY_FACTS}{where} GROUP BY customer_id) AS a ON a.customer_id = c.id
    {"WHERE c.id = ANY($4::text[])" if scoped else ""}
"""


def _segments_mask() -> str:
    return "\n         | ".join(f"CASE WHEN {s.rule} THEN {1 << i}::bigint ELSE 0 END" for i, s in enumerate(SEGMENTS))


def _segment_bits() -> str:
    return ", ".join(f"('{s.key}', {1 << i}::bigint)" for i, s in enumerate(SEGMENTS))


def _segment_keys() -> str:
    return "ARRAY[" + ", ".join(f"'{s.key}'" for s in SEGMENTS) + "]"


def _review_at() -> str:
    wakes = list(dict.fromkeys(w for s in SEGMENTS for w in s.wakes))
    if not wakes:
        return "NULL::timestamptz"
    # A wake exactly at `now` is kept: the rule flips just after it, so look again then.
    return "LEAST(" + ", ".join(f"CASE WHEN ({w}) >= now THEN ({w}) END" for w in wakes) + ")"


def _refresh_statement(scoped: bool) -> str:
    """The one statement that evaluates, diffs, applies and records every segment.

    The diff runs on one narrow row per customer (`segment_evaluations`: a bit per segment and
    the next review time); only customers whose bits changed are expanded into membership rows.
    """
    if scoped:
        scope = """
scope AS (
    SELECT DISTINCT ON (customer_id) customer_id, coalesce(cause, $2) AS cause
    FROM unnest($4::text[], $5::text[]) AS given(customer_id, cause)
    ORDER BY customer_id
),"""
        known = "SELECT * FROM segment_evaluations WHERE customer_id = ANY($4::text[])"
        cause_of = "(SELECT cause FROM scope WHERE scope.customer_id = changes.customer_id)"
        restore = ",\n       set_config('plan_cache_mode', $6, true) AS plan_cache_mode"
    else:
        scope, known, cause_of, restore = "", "SELECT * FROM segment_evaluations", "$2", ""
    return f"""
WITH {scope}
facts AS ({_facts(scoped)}),
evaluated AS (
    SELECT customer_id,
           {_segments_mask()} AS segments,
           {_review_at()} AS review_at
    FROM facts
),
differs AS (
    SELECT coalesce(e.customer_id, k.customer_id) AS customer_id,
           coalesce(e.segments, 0) AS segments,
           coalesce(k.segments, 0) AS was,
           e.review_at
    FROM evaluated AS e
    FULL JOIN ({known}) AS k ON k.customer_id = e.customer_id
    WHERE coalesce(e.segments, 0) <> coalesce(k.segments, 0) OR e.review_at IS DISTINCT FROM k.review_at
),
saved AS (
    INSERT INTO segment_evaluations (customer_id, segments, review_at)
    SELECT customer_id, segments, review_at FROM differs WHERE segments <> 0 OR review_at IS NOT NULL
    ON CONFLICT (customer_id) DO UPDATE SET segments = excluded.segments, review_at = excluded.review_at
),
forgotten AS (
    DELETE FROM segment_evaluations AS s USING differs AS d
    WHERE s.customer_id = d.customer_id AND d.segments = 0 AND d.review_at IS NULL
),
changed AS (
    SELECT d.customer_id, b.segment, (d.segments & b.bit) <> 0 AS member
    FROM differs AS d
    CROSS JOIN (VALUES {_segment_bits()}) AS b(segment, bit)
    WHERE ((d.segments # d.was) & b.bit) <> 0
),
entered AS (
    INSERT INTO segment_memberships (segment, customer_id, entered_at)
    SELECT segment, customer_id, $1 FROM changed WHERE member
    ON CONFLICT DO NOTHING
    RETURNING segment, customer_id
),
exited AS (
    -- The array makes the planner look the few leavers up by index instead of hashing every
    -- membership: it cannot estimate how few rows `changed` holds.
    DELETE FROM segment_memberships AS m
    WHERE m.customer_id = ANY (ARRAY(SELECT customer_id FROM changed WHERE NOT member))
      AND EXISTS (
          SELECT 1 FROM changed AS c
          WHERE NOT c.member AND c.segment = m.segment AND c.customer_id = m.customer_id
      )
    RETURNING m.segment, m.customer_id
),
changes AS (
    SELECT segment, customer_id, 'entered' AS change FROM entered
    UNION ALL
    SELECT segment, customer_id, 'exited' FROM exited
),
recorded AS (
    INSERT INTO segment_history (segment, customer_id, change, at, cause)
    SELECT segment, customer_id, change, $1, {cause_of} FROM changes
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
)
SELECT (SELECT count(*) FROM changes WHERE change = 'entered') AS entered,
       (SELECT count(*) FROM changes WHERE change = 'exited') AS exited{restore}
"""


REFRESH_CUSTOMERS = _refresh_statement(scoped=True)
REFRESH_ALL = _refresh_statement(scoped=False)

# Segments removed or moved: members of a segment no longer defined leave it, and every
# customer's bits are rebuilt from its memberships (the bit of a segment is its position in
# SEGMENTS), so that the full refresh that follows diffs against the truth.
RETIRE_UNDEFINED_SEGMENTS = f"""
WITH retired AS (
    DELETE FROM segment_memberships WHERE segment <> ALL ({_segment_keys()})
    RETURNING segment, customer_id
),
recorded AS (
    INSERT INTO segment_history (segment, customer_id, change, at, cause)
    SELECT segment, customer_id, 'exited', $1, $2 FROM retired
)
SELECT count(*) FROM retired
"""
CLEAR_EVALUATED_SEGMENTS = "UPDATE segment_evaluations SET segments = 0 WHERE segments <> 0"
REBUILD_EVALUATED_SEGMENTS = f"""
INSERT INTO segment_evaluations (customer_id, segments)
SELECT m.customer_id, bit_or(b.bit)
FROM segment_memberships AS m
JOIN (VALUES {_segment_bits()}) AS b(segment, bit) ON b.segment = m.segment
GROUP BY m.customer_id
ON CONFLICT (customer_id) DO UPDATE SET segments = excluded.segments
"""

DUE_FOR_REVIEW = """
SELECT customer_id FROM segment_evaluations
WHERE review_at <= $1
ORDER BY review_at
LIMIT $2
"""

# Skip customers an event is being applied to right now: that transaction re-evaluates them.
LOCK_IDLE_CUSTOMERS = f"""
SELECT customer_id FROM unnest($1::text[]) AS given(customer_id)
WHERE pg_try_advisory_xact_lock({customer_lock_key("customer_id")})
"""

# Evaluations of single customers (events, activity, reviews) share this lock; a full refresh
# takes it alone, so that it never diffs against a customer another transaction is changing.
REFRESH_LOCK = 0x7365676D656E7473  # "segments"
TAKE_REFRESH_LOCK = "SELECT pg_advisory_xact_lock($1)"

# Planning REFRESH_CUSTOMERS costs several times more than running it for one customer, and
# PostgreSQL would re-plan it on every call: its generic plan, costed for an unknown number of
# customers, looks dearer than a plan for one. So each evaluation forces the cached generic
# plan (good from 1 to 1000s of customers) and the statement itself restores the setting ($6).
BEGIN_EVALUATION = """
SELECT pg_advisory_xact_lock_shared($1),
       current_setting('plan_cache_mode') AS plan_cache_mode,
       set_config('plan_cache_mode', 'force_generic_plan', true)
"""

SEGMENTS_OF_CUSTOMER = "SELECT segment FROM segment_memberships WHERE customer_id = $1"

# Over every customer, merge joins in customer order beat hashing a million text keys, and
# the plan is too big for JIT compilation to pay for itself.
FULL_REFRESH_SETTINGS = (
    "SET LOCAL work_mem = '256MB'",
    "SET LOCAL jit = off",
    "SET LOCAL enable_hashagg = off",
    "SET LOCAL enable_hashjoin = off",
)


@dataclass(frozen=True)
class Changes:
    entered: int
    exited: int


def announces(settings: Settings) -> bool:
    """Segment changes go to the outbox only when a segment webhook URL is configured."""
    return settings.segment_webhook_url is not None


async def refresh_customers(conn: asyncpg.Connection, customer_ids: list[str], ctx: ProcessingContext) -> None:
    """Refresher: recompute the segments of the customers an event batch touched, in its transaction."""
    if ctx.rebuilding:
        # Mid-rebuild the model is partial: entries and exits now would be noise. The rebuild
        # ends with refresh_all, which records only what really changed.
        return
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
    """Re-evaluate every segment for these customers; changes are recorded with their cause.

    Runs in the caller's transaction (required: the locks and settings it takes are
    transaction-scoped). `causes` gives each customer's own cause, else `cause`.
    """
    if not customer_ids:
        return Changes(0, 0)
    causes = causes if causes is not None else [None] * len(customer_ids)
    plan_cache_mode = await conn.fetchval(BEGIN_EVALUATION, REFRESH_LOCK, column=1)
    row = await conn.fetchrow(
        REFRESH_CUSTOMERS, now, cause or REFRESH_CAUSE, announces(settings), list(customer_ids), causes, plan_cache_mode
    )
    return Changes(row["entered"], row["exited"])


async def refresh_all(
    conn: asyncpg.Connection,
    now: datetime,
    settings: Settings,
    cause: str = REFRESH_CAUSE,
    renumber: bool = False,
) -> Changes:
    """Re-evaluate every segment for every customer: one statement. Run it in a transaction.

    After a segment was removed or moved in SEGMENTS, pass `renumber`: members of removed
    segments leave them, and each customer's stored bits are first rebuilt from its
    memberships under the new numbering.
    """
    await conn.execute(TAKE_REFRESH_LOCK, REFRESH_LOCK)
    for setting in FULL_REFRESH_SETTINGS:
        await conn.execute(setting)
    retired = 0
    if renumber:
        retired = await conn.fetchval(RETIRE_UNDEFINED_SEGMENTS, now, cause)
        await conn.execute(CLEAR_EVALUATED_SEGMENTS)
        await conn.execute(REBUILD_EVALUATED_SEGMENTS)
    row = await conn.fetchrow(REFRESH_ALL, now, cause, announces(settings))
    return Changes(row["entered"], row["exited"] + retired)


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
