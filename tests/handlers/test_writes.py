"""The write buffer as a whole: any order, any repeats, any batches, any concurrency, one state."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random

import asyncpg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from stripeline.model.events import event_from_payload
from stripeline.processing.engine import process_events
from stripeline.store.event_log import insert_events
from tests import factories as f
from tests import registries
from tests.handlers.billing_support import apply, apply_each, model_state, row
from tests.handlers.truth import mismatches
from tests.simulation import generate


async def _state_of(conn, account):
    return await model_state(conn, account.customers, account.prices, account.products)


async def _rolled_back(conn, work):
    """Run `work()` in a transaction that is rolled back; return what it returned."""
    transaction = conn.transaction()
    await transaction.start()
    try:
        return await work()
    finally:
        await transaction.rollback()


def _deliveries(events, rnd: random.Random):
    """Every event once or more (up to 3 times), shuffled."""
    deliveries = [e for e in events for _ in range(rnd.choice((1, 1, 2, 3)))]
    rnd.shuffle(deliveries)
    return deliveries


def _batches(deliveries, rnd: random.Random):
    batches, start = [], 0
    while start < len(deliveries):
        size = rnd.choice((1, 2, 3, 5, 8, 20, 60))
        batches.append(deliveries[start : start + size])
        start += size
    return batches


@hypothesis_settings(
    # 20 real-sized streams here; the one-model properties (tests/app/test_one_model.py) walk the
    # same ground through every path. STRIPELINE_PROPERTY_EXAMPLES asks for more, for a long run.
    max_examples=int(os.environ.get("STRIPELINE_PROPERTY_EXAMPLES", "0")) * 10 or 20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**32 - 1),
    actions=st.integers(4, 60),
    new_second=st.sampled_from((0.05, 0.2, 0.5)),
    rnd=st.randoms(use_true_random=False),
)
async def test_any_order_repeats_and_batching_end_in_the_stripe_order_state(conn, settings, seed, actions, new_second,
                                                                            rnd):
    account = generate(seed, actions, new_second=new_second)

    async def in_stripe_order():
        await apply_each(conn, settings, account.events)
        return await _state_of(conn, account)

    async def shuffled():
        for batch in _batches(_deliveries(account.events, rnd), rnd):
            await apply(conn, settings, batch)
        return await _state_of(conn, account)

    expected = await _rolled_back(conn, in_stripe_order)
    assert mismatches(account, expected) == []
    assert await _rolled_back(conn, shuffled) == expected


async def test_two_workers_on_one_customers_stream_reach_the_same_state_without_deadlock(pool, conn, settings):
    account = generate(7, 80, new_second=0.1, max_customers=1)
    expected = await _rolled_back(conn, lambda: _in_order(conn, settings, account))
    records = [event_from_payload(e) for e in account.events]
    await insert_events(conn, records)
    ids = [r.id for r in records]
    random.Random(3).shuffle(ids)

    async def worker(share):
        for start in range(0, len(share), 7):
            outcome = await process_events(pool, share[start : start + 7], settings, registry=registries.product())
            assert not outcome.failed and not outcome.retry

    await asyncio.wait_for(asyncio.gather(worker(ids[0::2]), worker(ids[1::2])), timeout=60)
    assert await conn.fetchval("SELECT count(*) FROM stripe_events WHERE status = 'pending'") == 0
    assert await _state_of(conn, account) == expected


async def test_two_workers_on_many_customers_with_overlapping_batches_never_deadlock(pool, conn, settings):
    account = generate(8, 120, new_second=0.2, max_customers=6)
    expected = await _rolled_back(conn, lambda: _in_order(conn, settings, account))
    records = [event_from_payload(e) for e in account.events]
    await insert_events(conn, records)
    ids = [r.id for r in records]
    rnd = random.Random(5)

    async def worker(share):
        for start in range(0, len(share), 30):
            outcome = await process_events(pool, share[start : start + 30], settings,
                                           registry=registries.product())
            assert not outcome.failed and not outcome.retry

    shares = [rnd.sample(ids, len(ids)) for _ in range(2)]  # both workers see every event
    await asyncio.wait_for(asyncio.gather(*(worker(share) for share in shares)), timeout=60)
    assert await _state_of(conn, account) == expected


async def _in_order(conn, settings, account):
    await apply_each(conn, settings, account.events)
    return await _state_of(conn, account)


async def test_a_batch_holding_a_whole_burst_writes_the_same_rows_as_one_event_at_a_time(conn, settings):
    account = generate(11, 30, new_second=0.05)
    one_by_one = await _rolled_back(conn, lambda: _in_order(conn, settings, account))

    async def together():
        await apply(conn, settings, account.events)
        return await _state_of(conn, account)

    assert await _rolled_back(conn, together) == one_by_one


async def test_placeholder_customer_is_replaced_by_the_real_customer_whenever_it_arrives(conn, settings):
    t = 1_700_000_000
    customer = f.customer_object(email="late@example.com", created=t)
    price = f.price_object()
    subscription = f.subscription_object(customer["id"], [(price, 1)], created=t + 5)
    await apply(conn, settings, [f.event("customer.subscription.created", subscription, created=t + 5)])
    placeholder = await row(conn, "customers", customer["id"])
    assert placeholder["email"] is None and placeholder["event_id"] is None
    await apply(conn, settings, [f.event("customer.created", customer, created=t)])
    assert (await row(conn, "customers", customer["id"]))["email"] == "late@example.com"


@pytest.mark.parametrize("mode", ["anonymize", "delete"])
async def test_rows_of_a_customer_deleted_before_its_events_follow_the_deletion_policy(conn, settings, mode):
    settings = dataclasses.replace(settings, deleted_customers=mode)
    customer = f.customer_object()
    subscription = f.subscription_object(customer["id"], [(f.price_object(), 1)], created=1_700_000_100)
    invoice = f.invoice_object(customer["id"], subscription=subscription["id"], created=1_700_000_100)
    await apply(conn, settings, [f.event("customer.deleted", customer, created=1_700_000_500)])
    await apply(
        conn,
        settings,
        [
            f.event("customer.updated", customer, created=1_700_000_050),
            f.event("customer.subscription.updated", subscription, created=1_700_000_100),
            f.event("invoice.created", invoice, created=1_700_000_100),
            f.event("charge.succeeded", f.charge_object(customer["id"]), created=1_700_000_100),
        ],
    )
    kept = mode == "anonymize"
    stored = await row(conn, "customers", customer["id"])
    assert (stored is not None) == kept
    assert ((await row(conn, "subscriptions", subscription["id"])) or {}).get("status") == ("canceled" if kept else None)
    assert ((await row(conn, "invoices", invoice["id"])) is not None) == kept
    assert await conn.fetchval("SELECT count(*) FROM payments WHERE customer_id = $1", customer["id"]) == int(kept)
    if kept:
        assert (stored["email"], stored["deleted_in_stripe"]) == (None, True)


async def test_flushing_twice_writes_once(conn, settings):
    customer = f.customer_object()
    payload = f.event("customer.created", customer)
    ctx = await apply(conn, settings, [payload, payload])
    assert ctx.writes.rows_flushed == 1
    await apply(conn, settings, [payload])
    assert (await row(conn, "customers", customer["id"]))["event_id"] == payload["id"]


async def test_two_batches_each_deleting_a_customer_midway_never_deadlock_on_shared_prices(pool, conn, settings):
    """A deletion writes its batch's rows so far (its search of stored payments must see them).
    Were shared catalog rows written then too, batch A would hold price 1 and batch B price 2,
    each then waiting for the other's in its last flush: a deadlock, found after a second of
    `deadlock_timeout`, and the victim batch run again. Here both batches pause right after
    their deletions until the other got there too, the worst interleaving, and each runs once."""
    t = 1_700_000_000
    prices = [f.price_object(), f.price_object()]
    batches = []
    for first, then in ((0, 1), (1, 0)):
        deleted, kept = f.new_id("cus"), f.new_id("cus")
        batches.append([
            f.event("customer.subscription.created", f.subscription_object(deleted, [(prices[first], 1)]), created=t),
            f.event("customer.deleted", f.deleted_customer_object(deleted), created=t + 1),
            f.event("test.pause", {"id": f.new_id("obj"), "object": "pause", "customer": kept}, created=t + 2),
            f.event("customer.subscription.created", f.subscription_object(kept, [(prices[then], 1)]), created=t + 3),
        ])
    records = [[event_from_payload(e) for e in batch] for batch in batches]
    await insert_events(conn, [r for batch in records for r in batch])
    paused, both_paused = [], asyncio.Event()

    async def pause(conn, record, ctx):
        paused.append(record.id)
        if len(paused) == len(batches):
            both_paused.set()
        await asyncio.wait_for(both_paused.wait(), 10)

    registry = dataclasses.replace(registries.product(),
                                   handlers={**registries.product().handlers, "test.pause": pause})
    outcomes = await asyncio.gather(*(process_events(pool, [r.id for r in batch], settings, registry=registry)
                                      for batch in records))

    assert all(len(outcome.processed) == 4 and not outcome.failed and not outcome.retry for outcome in outcomes)
    assert sorted(paused) == sorted(batch[2].id for batch in records)  # neither batch ran twice
    assert await conn.fetchval("SELECT count(*) FROM prices WHERE id = ANY($1::text[])",
                               [p["id"] for p in prices]) == 2


async def test_a_batch_repeating_a_known_price_leaves_its_row_unlocked_for_concurrent_batches(pool, conn, settings):
    """A batch that only repeats what a price row holds (a duplicate, a late event, a replay)
    must not lock it: another worker's batch (or another lane's) would wait for this one's
    commit to write its own copy. A newer version is written, and locked, as before."""
    price = f.price_object()
    first = f.event("customer.subscription.created", f.subscription_object(f.new_id("cus"), [(price, 1)]))
    await apply(conn, settings, [first])
    newer = f.event("customer.subscription.updated", f.subscription_object(f.new_id("cus"), [(price, 2)]),
                    created=first["created"] + 60)

    async with pool.acquire() as other:
        for payload, locks in ((first, False), (newer, True)):
            transaction = conn.transaction()
            await transaction.start()
            try:
                await apply(conn, settings, [payload])  # a batch holding its transaction open
                await other.execute("SET lock_timeout = '100ms'")
                try:
                    await other.execute("SELECT FROM prices WHERE id = $1 FOR UPDATE", price["id"])
                    locked = False
                except asyncpg.LockNotAvailableError:
                    locked = True
                assert locked == locks, payload["type"]
            finally:
                await transaction.rollback()
