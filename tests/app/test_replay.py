"""`stripeline replay`: stored events re-applied in Stripe order, in batches, through the worker's path.

Tests that compare whole derived tables use the product's registry (the `registry` fixture);
tests that assert what a handler wrote use the stand-ins (`doubles()`). Each hands its registry
to what it runs.
"""

from __future__ import annotations

import asyncio
import fnmatch
import re
import signal
import time
from datetime import datetime, timezone

import asyncpg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from stripeline.commands.progress import Progress, Tally
from stripeline.model.context import Registry
from stripeline.model.events import event_from_payload
from stripeline.processing import replay as replay_module
from stripeline.processing.engine import process_events
from stripeline.processing.replay import ReplayRefused, Selection, glob_to_regex, replay
from stripeline.settings import Settings
from stripeline.store import event_log
from stripeline.store.db import connect, create_pool
from stripeline.store.event_log import insert_events
from tests import registries
from tests.app.replay_helpers import (
    billing_model,
    command,
    derived_state,
    doubles,
    generated_history,
    stripeline,
    stripeline_process,
    summary_lines,
    with_handlers,
)
from tests.factories import event, new_id, price_object, subscription_object


async def store(pool, payloads) -> list:
    records = [event_from_payload(p) for p in payloads]
    async with pool.acquire() as conn:
        await insert_events(conn, records)
    return sorted(records, key=lambda r: (r.created, r.id))


async def process_live(pool, settings, records, registry) -> None:
    """What the worker does when events arrive one by one in Stripe order."""
    for record in records:
        await process_events(pool, [record.id], settings, registry=registry)


async def statuses(conn) -> dict[str, str]:
    return {r["id"]: r["status"] for r in await conn.fetch("SELECT id, status FROM stripe_events")}


class Crash(BaseException):
    """Stands for the process dying mid-replay: not an event failure, nothing catches it."""


def crashing_at(event_id: str, handlers: dict) -> dict:
    """The same handlers, but the process 'dies' when it reaches `event_id`."""

    def wrap(handler):
        async def run(conn, record, ctx):
            if record.id == event_id:
                raise Crash()
            await handler(conn, record, ctx)

        return run

    return {kind: wrap(handler) for kind, handler in handlers.items()}


# --- equality with live processing --------------------------------------------------------


@pytest.mark.parametrize("batch_size", [7, 1000])
async def test_rebuild_in_batches_reproduces_one_at_a_time_processing(pool, conn, settings, registry, batch_size):
    records = await store(pool, generated_history(seed=batch_size, customers=40))
    await process_live(pool, settings, records, registry)
    live = await derived_state(conn)
    live_statuses = await statuses(conn)
    assert live["customers"] and live["invoices"]
    # The rebuild refreshes MRR and last payment once at its end rather than after each batch.
    billed = "SELECT id, mrr, last_payment_id FROM customers WHERE mrr > 0 OR last_payment_id IS NOT NULL ORDER BY id"
    live_billing = await conn.fetch(billed)
    assert live_billing

    tally = await replay(pool, settings, rebuild=True, batch_size=batch_size, registry=registry)

    assert await conn.fetch(billed) == live_billing
    assert await derived_state(conn) == live
    assert await statuses(conn) == live_statuses
    ignored = sum(1 for status in live_statuses.values() if status == "ignored")
    assert (tally.applied, tally.skipped, tally.failed) == (len(records) - ignored, ignored, 0)
    assert await event_log.rebuild_status(conn) is None


async def test_rebuild_records_no_segment_entries_or_exits_when_nothing_changed(pool, conn, settings, registry):
    records = await store(pool, generated_history(seed=11, customers=30))
    await process_live(pool, settings, records, registry)
    history = await conn.fetch("SELECT segment, customer_id, change, at FROM segment_history ORDER BY id")
    members = await conn.fetch("SELECT segment, customer_id FROM segment_memberships ORDER BY 1, 2")
    assert history and members

    await replay(pool, settings, rebuild=True, batch_size=50, registry=registry)

    assert await conn.fetch("SELECT segment, customer_id, change, at FROM segment_history ORDER BY id") == history
    assert await conn.fetch("SELECT segment, customer_id FROM segment_memberships ORDER BY 1, 2") == members


async def test_the_order_sensitive_stand_in_sees_every_event_once_in_stripe_order(pool, conn, settings):
    records = await store(pool, generated_history(seed=2, customers=10))

    await replay(pool, settings, rebuild=True, batch_size=5, registry=doubles())

    for invoice_id, _, description in (await billing_model(conn))["invoices"]:
        expected = [r.id for r in records if r.object["id"] == invoice_id]  # records are in Stripe order
        assert description == " ".join(expected)


# Each example truncates the event log and stores fresh ids: the shared fixtures carry nothing over.
@hypothesis_settings(deadline=None, max_examples=6, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch_size=st.integers(1, 40), failing=st.sets(st.integers(0, 59), max_size=6))
async def test_failures_are_isolated_without_changing_what_the_rest_produces(
    pool, conn, settings, batch_size, failing
):
    await conn.execute("TRUNCATE stripe_events")
    records = await store(pool, generated_history(seed=batch_size, customers=4))
    bad = {records[i].id for i in failing if i < len(records)}
    originals = doubles().handlers

    def failing_on_bad(handler):
        async def run(conn, record, ctx):
            if record.id in bad:
                raise ValueError("bad event")
            await handler(conn, record, ctx)

        return run

    failing = with_handlers(doubles(), {kind: failing_on_bad(h) for kind, h in originals.items()})
    await replay(pool, settings, rebuild=True, batch_size=1, registry=failing)  # one event per transaction: the reference
    reference = await derived_state(conn)

    tally = await replay(pool, settings, rebuild=True, batch_size=batch_size, registry=failing)

    assert await derived_state(conn) == reference
    handled_bad = {r.id for r in records if r.id in bad and r.type in originals}
    assert tally.failed == len(handled_bad)
    failed = {r["id"] for r in await conn.fetch("SELECT id FROM stripe_events WHERE status = 'failed'")}
    assert failed == handled_bad


# --- rebuild: what survives, crashes, concurrency ----------------------------------------------


async def test_rebuild_drops_state_no_event_supports_and_keeps_what_users_wrote(pool, conn, settings, registry):
    records = await store(pool, generated_history(seed=1, customers=5))
    await process_live(pool, settings, records, registry)
    customer = records[0].customer_id
    await conn.execute("INSERT INTO customers (id, email) VALUES ('cus_orphan', 'x@example.com')")
    await conn.execute("INSERT INTO customer_attributes VALUES ($1, $2)", customer, {"plan": "pro"})
    await conn.execute("INSERT INTO customer_tags (customer_id, tag) VALUES ($1, 'vip')", customer)
    await conn.execute("INSERT INTO customer_activity (customer_id, at) VALUES ($1, now())", customer)

    await replay(pool, settings, rebuild=True, registry=registry)

    assert await conn.fetchval("SELECT count(*) FROM customers WHERE id = 'cus_orphan'") == 0
    assert await conn.fetchval("SELECT count(*) FROM customers WHERE id = $1", customer) == 1
    assert await conn.fetchval("SELECT attributes FROM customer_attributes WHERE customer_id = $1", customer) == {
        "plan": "pro"
    }
    assert await conn.fetchval("SELECT tag FROM customer_tags WHERE customer_id = $1", customer) == "vip"
    assert await conn.fetchval("SELECT count(*) FROM customer_activity WHERE customer_id = $1", customer) == 1



async def test_crash_midway_through_a_rebuild_resumes_after_the_last_committed_batch(
    pool, conn, settings, registry, client
):
    records = await store(pool, generated_history(seed=3, customers=20))
    await process_live(pool, settings, records, registry)
    live = await derived_state(conn)
    handled = [r for r in records if r.type in registry.handlers]
    crashing = with_handlers(registry, crashing_at(handled[len(handled) // 2].id, registry.handlers))

    with pytest.raises(Crash):
        await replay(pool, settings, rebuild=True, batch_size=10, registry=crashing)

    marker = await event_log.rebuild_status(conn)
    assert marker is not None and 0 < marker["events_done"] < len(records)
    assert await derived_state(conn) != live
    sync = (await client.get("/api/sync")).json()
    assert sync["status"] == "lagging"
    assert sync["rebuild"]["events_done"] == marker["events_done"]

    tally = await replay(pool, settings, batch_size=10, progress=Progress("replay"), registry=registry)

    assert await derived_state(conn) == live
    assert tally.applied + tally.skipped == len(records) - marker["events_done"]
    assert await event_log.rebuild_status(conn) is None
    assert (await client.get("/api/sync")).json()["status"] == "healthy"


async def test_a_rebuild_batch_commits_asynchronously_with_its_marker_and_nothing_else_does(pool, conn, settings):
    records = await store(pool, generated_history(seed=5, customers=3))
    await conn.execute("INSERT INTO replay_rebuilds (through_received_at, events_total, lane_after_created, lane_after_id)"
                       " VALUES (now(), $1, '{NULL,NULL}', '{NULL,NULL}')", len(records))
    async with conn.transaction():
        assert await conn.fetchval("SELECT current_setting('synchronous_commit')") == "on"
        await replay_module._advancing(1)(conn, records[:3])
        # The batch's own transaction, and only it, skips the wait for its WAL flush.
        assert await conn.fetchval("SELECT current_setting('synchronous_commit')") == "off"
    assert await conn.fetchval("SELECT current_setting('synchronous_commit')") == "on"
    marker = await conn.fetchrow("SELECT events_done, lane_after_id FROM replay_rebuilds")
    assert (marker["events_done"], marker["lane_after_id"]) == (3, [None, records[2].id])

    await conn.execute("DELETE FROM replay_rebuilds")
    await replay(pool, settings, rebuild=True, batch_size=5, registry=registries.product())
    for _ in range(8):  # every connection of the pool (max_size 8): the setting never outlives a batch
        async with pool.acquire() as other:
            assert await other.fetchval("SELECT current_setting('synchronous_commit')") == "on"


async def test_resumed_rebuild_applies_each_event_exactly_once(pool, conn, settings):
    records = await store(pool, generated_history(seed=3, customers=20))
    stand_ins = doubles()
    handled = [r for r in records if r.type in stand_ins.handlers]
    with pytest.raises(Crash):
        crashing = with_handlers(stand_ins, crashing_at(handled[len(handled) // 3].id, stand_ins.handlers))
        await replay(pool, settings, rebuild=True, batch_size=10, registry=crashing)

    await replay(pool, settings, registry=stand_ins)

    # The order-sensitive stand-in appends each invoice event's id: no repeats, Stripe order.
    for invoice_id, _, description in (await billing_model(conn))["invoices"]:
        assert description == " ".join(r.id for r in records if r.object["id"] == invoice_id)


async def resume_applies_the_rest_once(pool, conn, settings, registry, records, applied, live) -> None:
    """The next replay finishes the interrupted rebuild: each event not yet applied, once, and
    the model ends as the live one."""
    tally = await replay(pool, settings, batch_size=10, registry=registry)
    assert tally.applied + tally.skipped == len(records) - len(applied)
    assert await derived_state(conn) == live
    assert await event_log.rebuild_status(conn) is None


async def behind_the_lane_cursors(conn, records) -> list:
    """The records behind their lane's cursor in the pending rebuild (lanes as PostgreSQL computes them)."""
    marker = await conn.fetchrow("SELECT lane_after_created, lane_after_id FROM replay_rebuilds")
    lanes = len(marker["lane_after_id"])
    lane_of = {row["id"]: row["lane"] for row in await conn.fetch(
        f"SELECT id, {replay_module.LANE_OF_EVENT.format(lanes='$1::int')} AS lane FROM stripe_events", lanes)}
    cursors = [(created or replay_module.EPOCH, event_id or "")
               for created, event_id in zip(marker["lane_after_created"], marker["lane_after_id"])]
    return [r for r in records if (r.created, r.id) <= cursors[lane_of[r.id]]]


async def test_a_crash_leaves_each_lane_at_its_last_committed_batch_and_the_resume_finishes(
    pool, conn, settings, registry
):
    records = await store(pool, generated_history(seed=7, customers=30))
    await process_live(pool, settings, records, registry)
    live = await derived_state(conn)
    handled = [r for r in records if r.type in registry.handlers]
    crashing = with_handlers(registry, crashing_at(handled[2 * len(handled) // 3].id, registry.handlers))

    with pytest.raises(Crash):
        await replay(pool, settings, rebuild=True, batch_size=10, registry=crashing)

    marker = await conn.fetchrow("SELECT lane_after_created, lane_after_id, events_done FROM replay_rebuilds")
    lanes = len(marker["lane_after_id"])
    assert lanes == replay_module.REBUILD_LANES > 1 and None not in marker["lane_after_id"]
    # Each lane's cursor is its last committed event; its customers' events up to it are applied.
    behind = await behind_the_lane_cursors(conn, records)
    assert marker["events_done"] == len(behind) < len(records)

    await resume_applies_the_rest_once(pool, conn, settings, registry, records, behind, live)


async def test_a_rebuild_started_before_lanes_resumes_on_its_one_cursor(pool, conn, settings, registry):
    records = await store(pool, generated_history(seed=8, customers=15))
    await process_live(pool, settings, records, registry)
    live = await derived_state(conn)
    # As an older version leaves an interrupted rebuild: tables wiped, the events before a time
    # applied in Stripe order, its one cursor on the last of them (no lanes).
    await conn.execute(replay_module.WIPE_DERIVED)
    until = records[len(records) // 2].created
    await replay(pool, settings, Selection(until=until), registry=registry)
    applied = [r for r in records if r.created < until]
    await conn.execute(
        "INSERT INTO replay_rebuilds (through_received_at, after_created, after_id, events_done, events_total)"
        " VALUES (now(), $1, $2, $3, $4)", applied[-1].created, applied[-1].id, len(applied), len(records))

    await resume_applies_the_rest_once(pool, conn, settings, registry, records, applied, live)


async def test_failure_while_wiping_leaves_the_old_state(pool, conn, settings, registry):
    records = await store(pool, generated_history(seed=4, customers=5))
    await process_live(pool, settings, records, registry)
    before = await derived_state(conn)
    await conn.execute(
        """
        CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE 'injected'; END $$;
        CREATE TRIGGER refuse BEFORE TRUNCATE ON discounts FOR EACH STATEMENT EXECUTE FUNCTION refuse();
        """
    )
    with pytest.raises(asyncpg.RaiseError, match="injected"):
        await replay(pool, settings, rebuild=True, registry=registry)
    assert await derived_state(conn) == before
    assert await event_log.rebuild_status(conn) is None


async def test_replay_runs_beside_the_live_worker_and_ends_where_a_quiet_rebuild_does(
    pool, conn, settings, registry
):
    old = await store(pool, generated_history(seed=8, customers=30))
    await process_live(pool, settings, old, registry)
    # A second wave arrives while the rebuild runs: later changes to the same subscriptions.
    wave = [
        event(r.type, dict(r.object, status="active"), created=int(r.created.timestamp()) + 3600)
        for r in old
        if r.type == "customer.subscription.updated"
    ]
    arrived = []

    async def worker() -> None:
        for payload in wave:
            arrived.extend(await store(pool, [payload]))
            await process_events(pool, [payload["id"]], settings, registry=registry)
            await asyncio.sleep(0)

    tally, _ = await asyncio.gather(replay(pool, settings, rebuild=True, batch_size=20, registry=registry), worker())

    assert tally.failed == 0
    assert await conn.fetchval("SELECT count(*) FROM stripe_events WHERE status NOT IN ('processed', 'ignored')") == 0
    latest = {}
    for record in sorted([*old, *arrived], key=lambda r: (r.created, r.id)):
        if record.type.startswith("customer.subscription."):
            latest[record.object["id"]] = record.object["status"]
    assert {r["id"]: r["status"] for r in await conn.fetch("SELECT id, status FROM subscriptions")} == latest
    concurrent = await derived_state(conn)
    await replay(pool, settings, rebuild=True, registry=registry)
    assert concurrent == await derived_state(conn)


async def test_a_clean_stop_keeps_committed_batches_and_the_rerun_finishes(pool, conn, settings, registry):
    records = await store(pool, generated_history(seed=9, customers=10))
    await process_live(pool, settings, records, registry)
    live = await derived_state(conn)
    stop = asyncio.Event()
    original = registry.handlers["customer.created"]

    async def ctrl_c_on_first_customer(conn, record, ctx):
        stop.set()
        await original(conn, record, ctx)

    stopping = with_handlers(registry, {"customer.created": ctrl_c_on_first_customer})
    first = await replay(pool, settings, rebuild=True, batch_size=10, stop=stop, registry=stopping)
    assert first.interrupted and first.exit_code() == 130
    assert (await event_log.rebuild_status(conn))["events_done"] == first.applied + first.skipped

    second = await replay(pool, settings, rebuild=True, batch_size=10, registry=registry)
    assert not second.interrupted
    assert first.applied + first.skipped + second.applied + second.skipped == len(records)
    assert await derived_state(conn) == live


# --- statuses -----------------------------------------------------------------------------


async def test_failing_event_is_marked_failed_and_the_replay_goes_on(pool, conn, settings, registry):
    records = await store(pool, generated_history(seed=5, customers=10))
    await process_live(pool, settings, records, registry)
    bad = next(r for r in records if r.type == "customer.subscription.updated")
    original = registry.handlers["customer.subscription.updated"]

    async def fails_on_bad(conn, record, ctx):
        if record.id == bad.id:
            raise ValueError("handler bug")
        await original(conn, record, ctx)

    buggy = with_handlers(registry, {"customer.subscription.updated": fails_on_bad})
    tally = await replay(pool, settings, batch_size=50, registry=buggy)

    row = await conn.fetchrow("SELECT status, attempts, last_error FROM stripe_events WHERE id = $1", bad.id)
    assert (row["status"], row["attempts"], row["last_error"]) == ("failed", 1, "ValueError: handler bug")
    assert tally.failed == 1 and tally.applied + tally.skipped == len(records) - 1
    assert tally.exit_code() == 1
    assert await conn.fetchval("SELECT count(*) FROM stripe_events WHERE status = 'failed'") == 1

    # The handler is fixed: the next replay applies the event and clears the failure.
    tally = await replay(pool, settings, Selection(type_pattern="customer.subscription.*"), registry=registry)
    assert tally.failed == 0
    assert await conn.fetchval("SELECT status FROM stripe_events WHERE id = $1", bad.id) == "processed"


async def test_replay_leaves_pending_events_to_the_worker(pool, conn, settings, registry):
    await store(pool, generated_history(seed=6, customers=3))
    tally = await replay(pool, settings, registry=registry)
    assert tally.applied > 0
    assert set((await statuses(conn)).values()) == {"pending"}


async def test_filters_are_refused_while_a_rebuild_is_pending_or_with_rebuild(pool, settings):
    with pytest.raises(ReplayRefused, match="takes no filters"):
        await replay(pool, settings, Selection(customer="cus_1"), rebuild=True, registry=registries.product())
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO replay_rebuilds (through_received_at, events_total) VALUES (now(), 0)")
    with pytest.raises(ReplayRefused, match="interrupted rebuild"):
        await replay(pool, settings, Selection(customer="cus_1"), registry=registries.product())


# --- filters --------------------------------------------------------------------------------


def _at(seconds: int) -> datetime:
    return datetime.fromtimestamp(1_700_000_000 + seconds, timezone.utc)


KINDS = ["customer.updated", "invoice.paid", "invoice.payment_failed", "customer.subscription.trial_will_end"]


@pytest.fixture
async def recorded(conn):
    """Handlers that only append the event id to a table, so a test sees what was applied, in order:
    (their registry, what was applied since the last call)."""
    await conn.execute("CREATE TABLE applied (seq bigserial PRIMARY KEY, event_id text NOT NULL)")

    async def record(conn, record, ctx):
        await conn.execute("INSERT INTO applied (event_id) VALUES ($1)", record.id)

    async def applied() -> list[str]:
        ids = [r["event_id"] for r in await conn.fetch("SELECT event_id FROM applied ORDER BY seq")]
        await conn.execute("TRUNCATE applied")
        return ids

    return Registry(handlers={kind: record for kind in KINDS}), applied


async def test_each_filter_selects_exactly_the_events_it_names(pool, settings, recorded):
    recording, applied = recorded
    customers = [new_id("cus"), new_id("cus")]
    payloads = []
    for n in range(40):
        customer, kind = customers[n % 2], KINDS[n % 4]
        obj = {"id": customer if kind == "customer.updated" else new_id("obj"), "object": "x", "customer": customer}
        payloads.append(event(kind, obj, created=1_700_000_000 + n // 3))
    records = await store(pool, payloads)

    cases = [
        (Selection(), lambda r: True),
        (Selection(since=_at(5)), lambda r: r.created >= _at(5)),
        (Selection(until=_at(5)), lambda r: r.created < _at(5)),
        (Selection(since=_at(3), until=_at(9)), lambda r: _at(3) <= r.created < _at(9)),
        (Selection(type_pattern="invoice.*"), lambda r: r.type.startswith("invoice.")),
        (Selection(type_pattern="*.paid"), lambda r: r.type == "invoice.paid"),
        (Selection(type_pattern="customer.?pdated"), lambda r: r.type == "customer.updated"),
        (Selection(type_pattern="customer.subscription.trial_will_end"), lambda r: "trial" in r.type),
        (Selection(type_pattern="invoice.pa[!y]*"), lambda r: r.type == "invoice.paid"),
        (Selection(customer=customers[1]), lambda r: r.customer_id == customers[1]),
        (
            Selection(customer=customers[0], type_pattern="invoice.*", since=_at(2)),
            lambda r: r.customer_id == customers[0] and r.type.startswith("invoice.") and r.created >= _at(2),
        ),
    ]
    for selection, keep in cases:
        tally = await replay(pool, settings, selection, batch_size=4, registry=recording)
        expected = [r.id for r in records if keep(r)]
        assert await applied() == expected, selection
        assert tally.applied == len(expected)


@hypothesis_settings(deadline=None, max_examples=200)
@given(st.text(alphabet="ab.*?_", min_size=1, max_size=8), st.text(alphabet="ab._", min_size=1, max_size=8))
def test_type_glob_matches_like_a_shell_glob(pattern, event_type):
    assert bool(re.fullmatch(glob_to_regex(pattern), event_type)) == fnmatch.fnmatchcase(event_type, pattern)


async def test_postgres_reads_the_glob_the_same_way(conn):
    for pattern, event_type, expected in [
        ("invoice.*", "invoice.paid", True),
        ("invoice.*", "invoicexpaid", False),
        ("customer.subscription.*", "customer.subscription.trial_will_end", True),
        ("*_failed", "invoice.payment_failed", True),
        ("invoice.pa[!i]d", "invoice.paid", False),
        ("charge.?", "charge.x", True),
    ]:
        assert await conn.fetchval("SELECT $1 ~ $2", event_type, glob_to_regex(pattern)) is expected


# --- the command -------------------------------------------------------------------------------


def test_bad_time_or_glob_ends_with_one_clear_line_and_exit_2(capsys):
    settings = Settings(database_url="postgresql://nobody@127.0.0.1:1/none")
    for argv, words in [
        (["replay", "--since", "yesterday"], "--since must be an ISO 8601 time"),
        (["replay", "--until", "2024-13-01"], "--until must be an ISO 8601 time"),
        (["replay", "--type", "invoice.{paid}"], "is not a glob of event types"),
        (["replay", "--type", "invoice.[paid"], "is not a glob of event types"),
        (["replay", "--since", "2024-02-01", "--until", "2024-01-01"], "earlier than --until"),
        (["replay", "--rebuild", "--customer", "cus_1"], "takes no filters"),
        (["replay", "--batch-size", "0"], "--batch-size must be between 1 and 2000"),
        (["replay", "--batch-size", "5000"], "--batch-size must be between 1 and 2000"),
    ]:
        assert command(argv, settings) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("stripeline replay: ") and words in err[0], err


def test_the_installed_command_refuses_a_bad_time_in_one_line():
    done = stripeline("replay", "--since", "last tuesday", env={"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"})
    assert done.returncode == 2
    assert done.stderr.decode().strip() == (
        "stripeline replay: --since must be an ISO 8601 time such as 2024-05-01 or 2024-05-01T12:00:00Z, got 'last tuesday'"
    )


def test_replay_command_prints_one_summary_line_and_exits_nonzero_on_failure(db_url, capsys):
    # A status this release does not know: the subscriptions table's CHECK refuses it.
    customer = new_id("cus")
    odd = subscription_object(customer, [(price_object(), 1)], status="pending_activation")
    payloads = [
        event("customer.subscription.updated", odd),
        event("balance.available", {"object": "balance"}),
    ]

    async def seed():
        pool = await create_pool(db_url, max_size=2)
        await store(pool, payloads)
        await pool.close()

    asyncio.run(seed())
    assert command(["replay", "--since", "2000-01-01T00:00:00Z"], Settings(database_url=db_url)) == 1
    out = capsys.readouterr()
    [summary] = [line for line in out.out.splitlines() if line.startswith("replay:")]
    assert summary.startswith("replay: 0 applied, 1 skipped, 1 failed in ")
    assert "CheckViolationError" in out.err


def test_ctrl_c_stops_the_installed_command_cleanly_and_a_rerun_finishes(db_url):
    async def seed() -> int:
        pool = await create_pool(db_url, max_size=2)
        records = await store(pool, generated_history(seed=22, customers=120))
        await pool.close()
        return len(records)

    async def rebuilt_so_far() -> int | None:
        conn = await connect(db_url)
        try:
            return await conn.fetchval("SELECT events_done FROM replay_rebuilds")
        finally:
            await conn.close()

    total = asyncio.run(seed())
    running = stripeline_process("replay", "--rebuild", "--batch-size", "3", env={"DATABASE_URL": db_url})
    deadline = time.monotonic() + 20
    while not asyncio.run(rebuilt_so_far()) and time.monotonic() < deadline:
        time.sleep(0.05)
    running.send_signal(signal.SIGINT)
    out, err = running.communicate(timeout=30)

    assert running.returncode == 130, err
    [summary] = summary_lines(out)
    assert summary.endswith("(interrupted: run it again to continue)")
    done = asyncio.run(rebuilt_so_far())
    assert 0 < done < total

    rerun = stripeline("replay", env={"DATABASE_URL": db_url})
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming the rebuild" in rerun.stderr.decode()
    assert asyncio.run(rebuilt_so_far()) is None


def test_the_installed_command_replays_and_summarises(db_url):
    async def seed():
        pool = await create_pool(db_url, max_size=2)
        await store(pool, generated_history(seed=21, customers=3))
        await pool.close()

    asyncio.run(seed())
    done = stripeline("replay", "--type", "customer.*", env={"DATABASE_URL": db_url})
    assert done.returncode == 0, done.stderr
    [line] = summary_lines(done.stdout)
    assert re.fullmatch(r"replay: \d+ applied, \d+ skipped, 0 failed in [\d.]+ s", line)


def test_tally_exit_codes():
    assert Tally().exit_code() == 0
    assert Tally(failed=1).exit_code() == 1
    assert Tally(interrupted=True).exit_code() == 130
