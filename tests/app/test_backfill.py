"""`stripeline backfill` against a local fake Stripe: listing, backoff, resume, snapshot order."""

from __future__ import annotations

import dataclasses
import re
import time

import pytest

from stripeline.commands.backfill import BackfillCounts, BackfillError, Backoff, backfill, stripe_client
from stripeline.model.events import event_from_payload
from stripeline.processing.engine import process_events
from stripeline.processing.replay import replay
from stripeline.processing.runs import Tally
from stripeline.store.event_log import insert_events
from tests import fake_stripe, registries
from tests.app.replay_helpers import derived_state, stripeline, summary_lines
from tests.factories import event as webhook_event
from tests.fake_stripe import API_KEY, FakeStripe

# These tests assert contract fields only, through the product's handlers.

DAY = 86400


@pytest.fixture
def fake():
    server = FakeStripe().start()
    yield server
    server.stop()


@pytest.fixture
def stripe_settings(settings, fake):
    return dataclasses.replace(settings, stripe_api_key=API_KEY, stripe_api_base=fake.url)


def populate(fake: FakeStripe, customers: int) -> dict[str, list]:
    """An account with history: products, prices, customers with a subscription and an invoice each."""
    now = int(time.time())
    product = fake.add("products", fake_stripe.product())
    price = fake.add("prices", fake_stripe.price(product["id"]))
    account = {"customers": [], "subscriptions": [], "recent_events": [], "old_events": []}
    for n in range(customers):
        customer = fake.add("customers", fake_stripe.customer(created=now - 400 * DAY + n))
        status = "canceled" if n % 5 == 0 else "active"
        sub = fake.add("subscriptions", fake_stripe.subscription(customer["id"], price, status=status))
        fake.add("invoices", fake_stripe.invoice(customer["id"], sub["id"]))
        account["customers"].append(customer)
        account["subscriptions"].append(sub)
    for n in range(min(3, customers)):
        recent = fake.add("events", fake_stripe.event("customer.updated", account["customers"][n], now - DAY - n))
        old = fake.add("events", fake_stripe.event("customer.updated", account["customers"][n], now - 31 * DAY))
        account["recent_events"].append(recent)
        account["old_events"].append(old)
    return account


async def run(pool, settings, *, backoff=Backoff(first=0.01, cap=0.05, attempts=4), **kwargs):
    tally, counts = Tally(), BackfillCounts()
    await backfill(pool, settings, stripe_client(settings), tally, counts, backoff=backoff,
                   registry=registries.product(), **kwargs)
    return tally, counts


async def test_backfill_lists_everything_stores_it_as_events_and_processes_it(pool, conn, stripe_settings, fake):
    account = populate(fake, customers=230)

    tally, counts = await run(pool, stripe_settings)

    assert await conn.fetchval("SELECT count(*) FROM customers") == 230
    statuses = {r["status"] for r in await conn.fetch("SELECT status FROM subscriptions")}
    assert statuses == {"active", "canceled"}  # every status, not Stripe's default listing
    assert await conn.fetchval("SELECT count(*) FROM subscriptions") == 230
    assert counts.listed == 2 + 230 * 3 + 3 and counts.stored == counts.listed
    assert tally.failed == 0 and not tally.interrupted
    assert await conn.fetchval("SELECT count(*) FROM stripe_events WHERE status = 'pending'") == 0

    recent = {e["id"] for e in account["recent_events"]}
    old = {e["id"] for e in account["old_events"]}
    stored = {r["id"] for r in await conn.fetch("SELECT id FROM stripe_events WHERE id NOT LIKE 'evt_backfill_%'")}
    assert stored == recent and not stored & old

    cursor = await conn.fetchrow("SELECT snapshot_at FROM backfill_cursors WHERE resource = 'customers'")
    customer = account["customers"][0]
    synthetic = await conn.fetchrow(
        "SELECT id, type, created FROM stripe_events WHERE object_id = $1 AND id LIKE 'evt_backfill_%'", customer["id"]
    )
    assert synthetic["type"] == "customer.updated"
    assert synthetic["created"] == cursor["snapshot_at"]
    assert synthetic["id"] == f"evt_backfill_{customer['id']}_{int(cursor['snapshot_at'].timestamp())}"

    assert len(fake.requests_to("customers")) == 3  # 100 + 100 + 30
    assert all(r.params["limit"] == "100" for r in fake.requests)
    assert all(r.params["status"] == "all" for r in fake.requests_to("subscriptions"))
    since = int(fake.requests_to("events")[0].params["created[gte]"])
    assert abs(since - (time.time() - 30 * DAY)) < 60
    assert await conn.fetchval("SELECT finished_at IS NOT NULL FROM backfill_runs") is True


async def test_backfill_backs_off_on_429_and_retries_a_dropped_connection(pool, conn, stripe_settings, fake):
    populate(fake, customers=120)
    fake.fail("customers", 429, times=2, retry_after="3")
    fake.fail("prices", 429, times=1)
    fake.fail("subscriptions", None, times=1, skip=1)
    waits = []

    async def sleep(seconds):
        waits.append(seconds)

    backoff = Backoff(first=0.5, cap=10, attempts=4)
    tally, counts = await run(pool, stripe_settings, backoff=backoff, sleep=sleep)

    assert [r.answered for r in fake.requests_to("customers")] == [429, 429, 200, 200]
    assert [r.answered for r in fake.requests_to("prices")] == [429, 200]
    assert [r.answered for r in fake.requests_to("subscriptions")] == [200, None, 200]
    # The repeated request asks for the same page again.
    subscription_pages = fake.requests_to("subscriptions")
    assert subscription_pages[1].params == subscription_pages[2].params
    # Retry-After is honoured (customers); without it, the first backoff step with jitter.
    assert len(waits) == 4 and waits.count(3.0) == 2
    assert all(0.25 <= w <= 0.5 for w in waits if w != 3.0)
    assert await conn.fetchval("SELECT count(*) FROM customers") == 120
    assert tally.failed == 0


async def test_interrupted_backfill_resumes_after_the_last_stored_page(pool, conn, stripe_settings, fake):
    account = populate(fake, customers=250)
    fake.fail("customers", 500, times=10, skip=1)

    with pytest.raises(BackfillError, match="run it again to resume"):
        await run(pool, stripe_settings)

    cursor = await conn.fetchrow(
        "SELECT starting_after, listed, finished_at FROM backfill_cursors WHERE resource = 'customers'"
    )
    newest_first = sorted(account["customers"], key=lambda c: (c["created"], c["id"]), reverse=True)
    assert (cursor["listed"], cursor["starting_after"], cursor["finished_at"]) == (100, newest_first[99]["id"], None)

    fake.clear_faults()
    fake.requests.clear()
    tally, counts = await run(pool, stripe_settings)

    assert fake.requests_to("products") == [] and fake.requests_to("prices") == []
    assert fake.requests_to("customers")[0].params["starting_after"] == newest_first[99]["id"]
    assert counts.listed == 150 + 250 * 2 + 3
    assert await conn.fetchval("SELECT count(*) FROM customers") == 250
    synthetic = "SELECT count(*) FROM stripe_events WHERE type = 'customer.updated' AND id LIKE 'evt_backfill_%'"
    assert await conn.fetchval(synthetic) == 250
    assert await conn.fetchval("SELECT count(*) FROM stripe_events WHERE status = 'pending'") == 0


async def test_a_key_without_read_access_to_a_resource_is_named(pool, conn, stripe_settings, fake):
    populate(fake, customers=3)
    fake.fail("invoices", 403)

    with pytest.raises(BackfillError, match="may not read invoices"):
        await run(pool, stripe_settings)
    # What was listed before stays, and the run is there to resume.
    assert await conn.fetchval("SELECT count(*) FROM backfill_cursors WHERE finished_at IS NOT NULL") == 4


async def store_and_process(pool, settings, payload) -> None:
    record = event_from_payload(payload)
    async with pool.acquire() as conn:
        await insert_events(conn, [record])
    await process_events(pool, [record.id], settings, registry=registries.product())


async def test_a_listing_never_overwrites_a_newer_webhook_but_updates_an_older_one(pool, conn, stripe_settings, fake):
    now = int(time.time())
    newer = fake.add("customers", fake_stripe.customer(email="listing-newer@example.com"))
    older = fake.add("customers", fake_stripe.customer(email="listing-older@example.com"))
    later = webhook_event("customer.updated", dict(newer, email="webhook@example.com"), created=now + 600)
    earlier = webhook_event("customer.updated", dict(older, email="old@example.com"), created=now - 600)
    await store_and_process(pool, stripe_settings, later)
    await store_and_process(pool, stripe_settings, earlier)

    await run(pool, stripe_settings)

    emails = {r["id"]: r["email"] for r in await conn.fetch("SELECT id, email FROM customers")}
    assert emails == {newer["id"]: "webhook@example.com", older["id"]: "listing-older@example.com"}


async def test_only_new_skips_history_and_records_the_start(pool, conn, stripe_settings, fake):
    account = populate(fake, customers=5)
    future = fake.add("events", fake_stripe.event("customer.updated", account["customers"][0], int(time.time()) + 5))

    tally, counts = await run(pool, stripe_settings, only_new=True)

    assert {r.resource for r in fake.requests} == {"events"}
    run_row = await conn.fetchrow("SELECT only_new, events_since, started_at FROM backfill_runs")
    assert run_row["only_new"] is True
    assert int(fake.requests_to("events")[0].params["created[gte]"]) == int(run_row["events_since"].timestamp())
    assert abs(run_row["events_since"] - run_row["started_at"]).total_seconds() < 1
    assert [r["id"] for r in await conn.fetch("SELECT id FROM stripe_events")] == [future["id"]]
    assert await conn.fetchval("SELECT count(*) FROM customers") == 1


async def test_replay_rebuild_reproduces_the_backfilled_state(pool, conn, stripe_settings, fake):
    populate(fake, customers=40)
    await run(pool, stripe_settings)
    backfilled = await derived_state(conn)

    await replay(pool, stripe_settings, rebuild=True, registry=registries.product())

    assert await derived_state(conn) == backfilled


def test_backfill_command_needs_an_api_key_and_prints_a_summary(db_url, fake):
    populate(fake, customers=3)
    done = stripeline("backfill", env={"DATABASE_URL": db_url})
    assert done.returncode == 2
    assert done.stderr.decode().strip() == "stripeline: STRIPE_API_KEY is required but not set"

    done = stripeline("backfill", env={"DATABASE_URL": db_url, "STRIPE_API_KEY": API_KEY, "STRIPE_API_BASE": fake.url})
    assert done.returncode == 0, done.stderr
    [summary] = summary_lines(done.stdout)
    pattern = r"backfill: 14 listed, 14 stored, 0 malformed, \d+ applied, \d+ skipped, 0 failed in [\d.]+ s"
    assert re.fullmatch(pattern, summary)


def test_backfill_command_names_a_refused_key(db_url, fake):
    env = {"DATABASE_URL": db_url, "STRIPE_API_KEY": "rk_test_wrong", "STRIPE_API_BASE": fake.url}
    done = stripeline("backfill", env=env)
    assert done.returncode == 1
    assert "stripeline backfill: Stripe did not accept STRIPE_API_KEY (401): check the key" in done.stderr.decode()
