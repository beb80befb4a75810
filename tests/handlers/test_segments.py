"""Segment rules at their edges, time moving customers between segments, and the history."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from stripeline import handlers
from stripeline.handlers import segments
from stripeline.model.context import ProcessingContext
from stripeline.worker.segment_jobs import refresh_segments
from tests import registries
from tests.segment_support import (
    NOW,
    add_activity,
    add_customer,
    add_subscription,
    evaluate,
    history_of,
    members_of,
    set_subscription,
)

DAY = timedelta(days=1)
MICROSECOND = timedelta(microseconds=1)
SYNCING = "syncing_with_stripe"


class Clock:
    """A frozen clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def job_context(pool, settings, clock: Clock) -> dict:
    """The refresh job's context, with no minimum period between runs."""
    return {"pool": pool, "settings": replace(settings, segment_refresh_seconds=0), "clock": clock}


def test_segments_are_the_contracts_eight_in_order():
    assert [(s.key, s.name) for s in segments.SEGMENTS] == [
        ("syncing_with_stripe", "Syncing with Stripe"),
        ("current_trials", "Current Trials"),
        ("slipping_trials", "Slipping Trials"),
        ("slipping_customers", "Slipping Customers"),
        ("expired_trials", "Expired Trials"),
        ("customers", "Customers"),
        ("churned_customers", "Churned Customers"),
        ("past_due", "Past Due Subscriptions"),
    ]


def test_segments_are_recomputed_last_after_every_event_batch():
    assert handlers.REFRESHERS[-1] is segments.refresh_customers


# Each case: subscriptions as (status, trial_end relative to now or None), last activity
# relative to now (None: none recorded; the customer was created 1 day ago), expected segments.
RULE_CASES = {
    "no subscriptions": ([], None, {SYNCING}),
    "trial ending in a second": ([("trialing", timedelta(seconds=1))], None, {SYNCING, "current_trials"}),
    "trial ending exactly now has expired": ([("trialing", timedelta(0))], None, {SYNCING, "expired_trials"}),
    "trialing without a trial end": ([("trialing", None)], None, {SYNCING}),
    "trial with activity exactly 2 days ago is not slipping": (
        [("trialing", 3 * DAY)],
        -2 * DAY,
        {SYNCING, "current_trials"},
    ),
    "trial with activity just over 2 days ago is slipping": (
        [("trialing", 3 * DAY)],
        -2 * DAY - MICROSECOND,
        {SYNCING, "current_trials", "slipping_trials"},
    ),
    "active with activity exactly 15 days ago is not slipping": ([("active", None)], -15 * DAY, {SYNCING, "customers"}),
    "active with activity just over 15 days ago is slipping": (
        [("active", None)],
        -15 * DAY - MICROSECOND,
        {SYNCING, "customers", "slipping_customers"},
    ),
    "past due is a customer and past due": ([("past_due", None)], None, {SYNCING, "customers", "past_due"}),
    "active and canceled subscriptions: a customer, not churned": (
        [("active", None), ("canceled", None)],
        None,
        {SYNCING, "customers"},
    ),
    "trialing plus canceled: a current trial, not churned": (
        [("trialing", 5 * DAY), ("canceled", None)],
        None,
        {SYNCING, "current_trials"},
    ),
    "canceled alone is churned": ([("canceled", None)], None, {SYNCING, "churned_customers"}),
    "unpaid alone is churned": ([("unpaid", None)], None, {SYNCING, "churned_customers"}),
    "incomplete_expired alone is churned": ([("incomplete_expired", None)], None, {SYNCING, "churned_customers"}),
    "incomplete alone is in no lifecycle segment": ([("incomplete", None)], None, {SYNCING}),
    "paused alone is in no lifecycle segment": ([("paused", None)], None, {SYNCING}),
    "ended trial then canceled: expired and churned": (
        [("canceled", -3 * DAY)],
        None,
        {SYNCING, "expired_trials", "churned_customers"},
    ),
    "ended trial now active: a customer, not expired": ([("active", -3 * DAY)], None, {SYNCING, "customers"}),
    "ended trial now past due: not expired": ([("past_due", -3 * DAY)], None, {SYNCING, "customers", "past_due"}),
    "ended trial plus a new trial: current and expired": (
        [("incomplete_expired", -3 * DAY), ("trialing", 3 * DAY)],
        None,
        {SYNCING, "current_trials", "expired_trials"},
    ),
}


@pytest.mark.parametrize("case", RULE_CASES, ids=list(RULE_CASES))
async def test_rule_edges(conn, settings, case):
    subscriptions, activity, expected = RULE_CASES[case]
    customer = await add_customer(conn, created_at=NOW - DAY)
    for status, trial_end in subscriptions:
        await add_subscription(conn, customer, status, trial_end=None if trial_end is None else NOW + trial_end)
    if activity is not None:
        await add_activity(conn, customer, NOW + activity)
    await evaluate(conn, [customer], NOW, settings)
    assert await members_of(conn, customer) == expected


async def test_last_activity_falls_back_to_stripe_creation_time(conn, settings):
    old = await add_customer(conn, created_at=NOW - 16 * DAY)
    new = await add_customer(conn, created_at=NOW - 14 * DAY)
    for customer in (old, new):
        await add_subscription(conn, customer, "active")
    await evaluate(conn, [old, new], NOW, settings)
    assert "slipping_customers" in await members_of(conn, old)
    assert "slipping_customers" not in await members_of(conn, new)


async def test_latest_of_several_activities_counts(conn, settings):
    customer = await add_customer(conn, created_at=NOW - 30 * DAY)
    await add_subscription(conn, customer, "trialing", trial_end=NOW + 5 * DAY)
    await add_activity(conn, customer, NOW - 10 * DAY)
    await add_activity(conn, customer, NOW - DAY)
    await evaluate(conn, [customer], NOW, settings)
    assert "slipping_trials" not in await members_of(conn, customer)


async def test_deleted_customer_keeps_only_what_its_history_says(conn, settings):
    churned = await add_customer(conn, deleted=True)
    await add_subscription(conn, churned, "canceled", trial_end=NOW - 10 * DAY)
    # A stale row still saying active must not keep a deleted customer among live customers.
    stale = await add_customer(conn, deleted=True, created_at=NOW - 40 * DAY)
    await add_subscription(conn, stale, "past_due")
    await add_subscription(conn, stale, "trialing", trial_end=NOW + DAY)
    await evaluate(conn, [churned, stale], NOW, settings)
    assert await members_of(conn, churned) == {"expired_trials", "churned_customers"}
    assert await members_of(conn, stale) == set()


async def test_customer_deleted_in_stripe_leaves_syncing_with_the_event_as_cause(conn, settings):
    customer = await add_customer(conn)
    await add_subscription(conn, customer, "active")
    await evaluate(conn, [customer], NOW, settings, cause="evt_created")
    await conn.execute("UPDATE customers SET deleted_in_stripe = true WHERE id = $1", customer)
    await conn.execute("UPDATE subscriptions SET status = 'canceled' WHERE customer_id = $1", customer)
    await evaluate(conn, [customer], NOW + DAY, settings, cause="evt_deleted")
    assert await members_of(conn, customer) == {"churned_customers"}
    assert sorted(h for h in await history_of(conn, customer) if h[3] == "evt_deleted") == sorted(
        [
            (SYNCING, "exited", NOW + DAY, "evt_deleted"),
            ("customers", "exited", NOW + DAY, "evt_deleted"),
            ("churned_customers", "entered", NOW + DAY, "evt_deleted"),
        ]
    )


async def test_removed_customer_row_leaves_every_segment(conn, settings):
    customer = await add_customer(conn)
    await add_subscription(conn, customer, "past_due")
    await evaluate(conn, [customer], NOW, settings)
    await conn.execute("DELETE FROM subscriptions WHERE customer_id = $1", customer)
    await conn.execute("DELETE FROM customers WHERE id = $1", customer)
    changes = await evaluate(conn, [customer], NOW, settings)
    assert changes == segments.Changes(entered=0, exited=3)
    assert await members_of(conn, customer) == set()
    assert await conn.fetchval("SELECT count(*) FROM segment_evaluations WHERE customer_id = $1", customer) == 0


async def test_unknown_customer_is_in_no_segment(conn, settings):
    assert await evaluate(conn, ["cus_never_seen"], NOW, settings) == segments.Changes(0, 0)
    assert await members_of(conn, "cus_never_seen") == set()


async def test_recompute_with_nothing_changed_records_nothing(conn, settings):
    customer = await add_customer(conn)
    await add_subscription(conn, customer, "active")
    await evaluate(conn, [customer], NOW, settings)
    before = await history_of(conn, customer)
    assert await evaluate(conn, [customer], NOW + timedelta(minutes=1), settings) == segments.Changes(0, 0)
    assert await history_of(conn, customer) == before


async def test_each_customer_of_a_batch_gets_its_own_event_as_cause(conn, settings):
    first, second = await add_customer(conn), await add_customer(conn)
    ctx = ProcessingContext(settings=settings, now=NOW, registry=registries.product(), cause="evt_last",
                            causes={first: "evt_first"})
    async with conn.transaction():
        await segments.refresh_customers(conn, [first, second], ctx)
    assert await history_of(conn, first) == [(SYNCING, "entered", NOW, "evt_first")]
    assert await history_of(conn, second) == [(SYNCING, "entered", NOW, "evt_last")]


async def test_recompute_leaves_the_plan_cache_setting_as_it_found_it(conn, settings):
    customer = await add_customer(conn)
    async with conn.transaction():
        await segments.evaluate(conn, [customer], NOW, settings)
        assert await conn.fetchval("SELECT current_setting('plan_cache_mode')") == "auto"


async def test_segment_changes_reach_the_outbox_only_when_a_webhook_is_configured(conn, settings):
    quiet = await add_customer(conn)
    await evaluate(conn, [quiet], NOW, settings)
    assert await conn.fetchval("SELECT count(*) FROM outbox") == 0

    announced = await add_customer(conn)
    await add_subscription(conn, announced, "past_due")
    await evaluate(conn, [announced], NOW, replace(settings, segment_webhook_url="http://127.0.0.1:9/hook"), "evt_pd")
    payloads = [row["payload"] for row in await conn.fetch("SELECT payload FROM outbox ORDER BY id")]
    assert {p["data"]["segment"] for p in payloads} == {SYNCING, "customers", "past_due"}
    assert all(p["type"] == "segment.entered" and p["id"].startswith("segchg_") for p in payloads)
    assert payloads[0]["data"] | {"segment": None} == {
        "segment": None,
        "customer": announced,
        "change": "entered",
        "at": "2024-03-01T12:00:00.000000Z",
        "cause": "evt_pd",
    }


# --- Time moves -------------------------------------------------------------------------


async def test_trial_end_moves_a_customer_from_current_to_expired_trials(pool, conn, settings):
    clock = Clock(NOW)
    ctx = job_context(pool, settings, clock)
    customer = await add_customer(conn, created_at=NOW)
    await add_subscription(conn, customer, "trialing", trial_end=NOW + timedelta(hours=1))
    await evaluate(conn, [customer], NOW, settings, cause="evt_trial")
    await refresh_segments(ctx)  # first run: applies the definitions to everyone

    clock.now = NOW + timedelta(minutes=59)
    await refresh_segments(ctx)
    assert await members_of(conn, customer) == {SYNCING, "current_trials"}

    clock.now = NOW + timedelta(hours=1)
    result = await refresh_segments(ctx)
    assert result["entered"] == 1 and result["exited"] == 1
    assert await members_of(conn, customer) == {SYNCING, "expired_trials"}
    assert set(await history_of(conn, customer)) == {
        (SYNCING, "entered", NOW, "evt_trial"),
        ("current_trials", "entered", NOW, "evt_trial"),
        ("current_trials", "exited", clock.now, "refresh"),
        ("expired_trials", "entered", clock.now, "refresh"),
    }


async def test_silence_makes_a_trial_slip_and_activity_brings_it_back(pool, conn, settings):
    clock = Clock(NOW)
    ctx = job_context(pool, settings, clock)
    customer = await add_customer(conn, created_at=NOW)
    await add_subscription(conn, customer, "trialing", trial_end=NOW + 14 * DAY)
    await evaluate(conn, [customer], NOW, settings)
    await refresh_segments(ctx)

    clock.now = NOW + 2 * DAY  # exactly two days: not yet
    await refresh_segments(ctx)
    assert "slipping_trials" not in await members_of(conn, customer)

    clock.now = NOW + 2 * DAY + timedelta(seconds=1)
    await refresh_segments(ctx)
    assert "slipping_trials" in await members_of(conn, customer)

    await add_activity(conn, customer, clock.now)
    await evaluate(conn, [customer], clock.now, settings, cause="activity")
    assert "slipping_trials" not in await members_of(conn, customer)
    assert (await history_of(conn, customer))[-1] == ("slipping_trials", "exited", clock.now, "activity")


async def test_paying_customer_slips_after_fifteen_silent_days(pool, conn, settings):
    clock = Clock(NOW)
    ctx = job_context(pool, settings, clock)
    customer = await add_customer(conn, created_at=NOW - 30 * DAY)
    await add_subscription(conn, customer, "active")
    await add_activity(conn, customer, NOW)
    await evaluate(conn, [customer], NOW, settings)
    await refresh_segments(ctx)
    for days, slipping in ((14, False), (15, False), (16, True)):
        clock.now = NOW + days * DAY
        await refresh_segments(ctx)
        assert ("slipping_customers" in await members_of(conn, customer)) is slipping, days


async def test_scheduled_refresh_runs_at_most_once_per_period(pool, conn, settings):
    clock = Clock(NOW)
    ctx = {"pool": pool, "settings": replace(settings, segment_refresh_seconds=60), "clock": clock}
    customer = await add_customer(conn)
    await add_subscription(conn, customer, "trialing", trial_end=NOW + timedelta(seconds=30))
    await evaluate(conn, [customer], NOW, settings)
    await refresh_segments(ctx)
    clock.now = NOW + timedelta(seconds=45)
    assert await refresh_segments(ctx) == {"skipped": 1}
    assert "current_trials" in await members_of(conn, customer)
    clock.now = NOW + timedelta(seconds=60)
    assert (await refresh_segments(ctx))["entered"] == 1
    assert "expired_trials" in await members_of(conn, customer)


async def test_scheduled_refresh_leaves_customers_an_event_is_changing(pool, conn, settings):
    clock = Clock(NOW)
    ctx = job_context(pool, settings, clock)
    customer = await add_customer(conn)
    await add_subscription(conn, customer, "trialing", trial_end=NOW + DAY)
    await evaluate(conn, [customer], NOW, settings)
    await refresh_segments(ctx)
    clock.now = NOW + 2 * DAY
    async with pool.acquire() as event_conn, event_conn.transaction():
        await event_conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", customer)
        assert (await refresh_segments(ctx))["reviewed"] == 0
    clock.now += timedelta(seconds=5)
    assert (await refresh_segments(ctx))["reviewed"] == 1
    assert "expired_trials" in await members_of(conn, customer)


async def test_new_segment_definitions_trigger_one_full_refresh(pool, conn, settings):
    clock = Clock(NOW)
    ctx = job_context(pool, settings, clock)
    never_evaluated = await add_customer(conn)
    await add_subscription(conn, never_evaluated, "unpaid")
    await conn.execute(
        "INSERT INTO segment_memberships VALUES ('retired_segment', $1, $2)", never_evaluated, NOW - DAY
    )
    await conn.execute("UPDATE segment_refresh_state SET definitions = 'an older set of segments'")
    assert await refresh_segments(ctx) == {"entered": 2, "exited": 1}
    assert await members_of(conn, never_evaluated) == {SYNCING, "churned_customers"}
    assert ("retired_segment", "exited", NOW, "refresh") in await history_of(conn, never_evaluated)
    assert await conn.fetchval("SELECT definitions FROM segment_refresh_state") == segments.DEFINITIONS


def test_only_a_removed_or_moved_segment_renumbers_the_stored_bits():
    current = segments.DEFINITIONS.splitlines()
    assert not segments.renumbered(segments.DEFINITIONS)
    assert not segments.renumbered("\n".join(current[:-1]))  # a segment appended
    assert not segments.renumbered("\n".join([*current[:-1], "past_due|an older rule|"]))  # a rule changed
    assert segments.renumbered("\n".join([current[1], current[0], *current[2:]]))  # two swapped
    assert segments.renumbered("\n".join([*current, "vips|true|"]))  # one removed
    assert segments.renumbered(None)


async def test_refresh_recovers_when_its_state_row_was_emptied(pool, conn, settings):
    customer = await add_customer(conn)
    await conn.execute("DELETE FROM segment_refresh_state")
    await refresh_segments(job_context(pool, settings, Clock(NOW)))
    assert await members_of(conn, customer) == {SYNCING}


async def test_full_refresh_after_a_bit_renumbering_records_only_real_changes(conn, settings):
    customer = await add_customer(conn)
    await add_subscription(conn, customer, "past_due")
    await evaluate(conn, [customer], NOW, settings)
    # As if the stored bits came from an older numbering of the segments.
    await conn.execute("UPDATE segment_evaluations SET segments = 1 WHERE customer_id = $1", customer)
    async with conn.transaction():
        changes = await segments.refresh_all(conn, NOW, settings, renumber=True)
    assert changes == segments.Changes(0, 0)
    assert await members_of(conn, customer) == {SYNCING, "customers", "past_due"}


# --- Property: incremental and scheduled refreshes agree with the rules from scratch ------

STATUSES = ["incomplete", "incomplete_expired", "trialing", "active", "past_due", "canceled", "unpaid", "paused"]


@dataclass
class Model:
    """What the test wrote, and the contract's rules evaluated over it in Python."""

    created_at: dict[str, datetime] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)
    subscriptions: dict[str, dict[str, tuple[str, datetime | None]]] = field(default_factory=dict)
    activity: dict[str, list[datetime]] = field(default_factory=dict)

    def last_activity(self, customer: str) -> datetime:
        return max(self.activity.get(customer, []), default=self.created_at[customer])

    def wakes(self, customer: str, now: datetime) -> list[datetime]:
        last = self.last_activity(customer)
        ends = [end for _, end in self.subscriptions[customer].values() if end is not None]
        return [t for t in (*ends, last + 2 * DAY, last + 15 * DAY) if t > now]

    def expected(self, customer: str, now: datetime) -> set[str]:
        if customer in self.removed:
            return set()
        subscriptions = list(self.subscriptions[customer].values())
        statuses = {status for status, _ in subscriptions}
        deleted = customer in self.deleted
        in_trial = any(status == "trialing" and end is not None and end > now for status, end in subscriptions)
        paying = bool(statuses & {"active", "past_due"})
        quiet_since = now - self.last_activity(customer)
        rules = {
            SYNCING: not deleted,
            "current_trials": in_trial and not deleted,
            "slipping_trials": in_trial and not deleted and quiet_since > 2 * DAY,
            "slipping_customers": paying and not deleted and quiet_since > 15 * DAY,
            "expired_trials": any(end is not None and end <= now for _, end in subscriptions) and not paying,
            "customers": paying and not deleted,
            "churned_customers": bool(subscriptions)
            and not statuses & {"trialing", "active", "past_due"}
            and bool(statuses & {"canceled", "incomplete_expired", "unpaid"}),
            "past_due": "past_due" in statuses and not deleted,
        }
        return {key for key, member in rules.items() if member}


hours = st.integers(min_value=-24 * 5, max_value=24 * 5).map(lambda h: timedelta(hours=h))
customer_index = st.integers(0, 1)
# Trials and paid plans come up more often than the rarer statuses, and trials mostly end ahead.
status = st.sampled_from(["trialing"] * 4 + ["active"] * 2 + STATUSES)
trial_end = st.one_of(st.none(), hours, st.integers(1, 24 * 5).map(lambda h: timedelta(hours=h)))
subscription_change = st.tuples(st.just("subscription"), customer_index, st.integers(0, 1), status, trial_end)
# Activity mostly recent, so that the 2-day boundary comes up as often as the 15-day one.
activity_age = st.one_of(st.integers(-72, 0), st.integers(-24 * 20, 0)).map(lambda h: timedelta(hours=h))
activity = st.tuples(st.just("activity"), customer_index, activity_age)
advance = st.tuples(st.just("advance"), st.integers(1, 24 * 20).map(lambda m: timedelta(minutes=m * 37)))
# Straight onto an instant where a rule may flip: a trial end, activity 2 or 15 days old.
advance_to_boundary = st.tuples(st.just("advance_to_boundary"), st.integers(0, 5))
deletion = st.tuples(st.sampled_from(["delete", "remove"]), customer_index)
# Repeated strategies weigh the mix towards changes and time, away from deletions.
operation = st.one_of(
    subscription_change, subscription_change, subscription_change, activity, advance, advance_to_boundary,
    advance_to_boundary, advance_to_boundary, deletion,
)


@hypothesis_settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    created_days_ago=st.lists(st.sampled_from([0, 1, 2, 14, 16, 30]), min_size=2, max_size=2),
    operations=st.lists(operation, min_size=4, max_size=25),
)
# A trial that slips exactly when its customer's creation is 2 days old, then expires.
@example(
    created_days_ago=[0, 30],
    operations=[
        ("subscription", 0, 0, "trialing", timedelta(hours=72)),
        ("advance_to_boundary", 0),
        ("advance", timedelta(seconds=1)),
        ("advance_to_boundary", 0),
    ],
)
async def test_live_membership_always_equals_the_rules_from_scratch(pool, settings, created_days_ago, operations):
    tag = uuid.uuid4().hex[:10]
    customers = [f"cus_{tag}_{i}" for i in range(2)]
    model = Model()
    clock = Clock(NOW)
    ctx = job_context(pool, settings, clock)
    async with pool.acquire() as conn:
        for customer, days in zip(customers, created_days_ago):
            model.created_at[customer] = clock.now - days * DAY
            model.subscriptions[customer] = {}
            await add_customer(conn, customer, created_at=model.created_at[customer])
        await evaluate(conn, customers, clock.now, settings)
        await refresh_segments(ctx)

        for step, op in enumerate(operations):
            kind, *args = op
            touched = None
            if kind in ("subscription", "activity", "delete", "remove") and customers[args[0]] in model.removed:
                continue
            if kind == "subscription":
                index, slot, status, trial_end = args
                customer = touched = customers[index]
                end = None if trial_end is None else clock.now + trial_end
                subscription = f"sub_{tag}_{index}_{slot}"
                if subscription in model.subscriptions[customer]:
                    await set_subscription(conn, subscription, status, end)
                else:
                    await add_subscription(conn, customer, status, trial_end=end, subscription_id=subscription)
                model.subscriptions[customer][subscription] = (status, end)
            elif kind == "activity":
                customer = touched = customers[args[0]]
                at = clock.now + args[1]
                if at not in model.activity.get(customer, []):
                    await add_activity(conn, customer, at)
                    model.activity.setdefault(customer, []).append(at)
            elif kind == "delete":
                touched = customers[args[0]]
                await conn.execute("UPDATE customers SET deleted_in_stripe = true WHERE id = $1", touched)
                model.deleted.add(touched)
            elif kind == "remove":
                touched = customers[args[0]]
                await conn.execute("DELETE FROM subscriptions WHERE customer_id = $1", touched)
                await conn.execute("DELETE FROM customers WHERE id = $1", touched)
                model.removed.add(touched)
            elif kind == "advance":
                clock.now += args[0]
            elif kind == "advance_to_boundary":
                wakes = sorted(w for c in customers if c not in model.removed for w in model.wakes(c, clock.now))
                if wakes:
                    clock.now = wakes[min(args[0], len(wakes) - 1)]
            if touched:
                await evaluate(conn, [touched], clock.now, settings, cause=f"evt_{tag}_{step}")
            else:
                await refresh_segments(ctx)
            for customer in customers:
                assert await members_of(conn, customer) == model.expected(customer, clock.now), (step, op, customer)

        # The history replays to the live membership: entries and exits alternate.
        for customer in customers:
            replayed: set[str] = set()
            for segment, change, _, _ in await history_of(conn, customer):
                assert (segment in replayed) == (change == "exited"), (customer, segment, change)
                (replayed.discard if change == "exited" else replayed.add)(segment)
            assert replayed == await members_of(conn, customer)
