"""customer.deleted in both modes, and the guard that keeps late events from restoring data."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone

import pytest
import structlog
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from stripeline.handlers.deletion import DELETED_TAG
from stripeline.model.context import ProcessingContext
from stripeline.model.events import EVENT_COLUMNS, parse_event, record_from_row
from stripeline.processing.engine import apply_events, process_events
from stripeline.store.event_log import insert_events
from tests import registries
from tests.factories import event
from tests.personal_data import (
    DELETED_AT,
    T0,
    Person,
    charge,
    customer,
    deletion,
    deliver,
    find_everywhere,
    stream,
)

DELETED_AT_TIME = datetime.fromtimestamp(DELETED_AT, timezone.utc)
LIVE = ("trialing", "active", "past_due", "unpaid", "paused", "incomplete")


def in_mode(settings, mode):
    return dataclasses.replace(settings, deleted_customers=mode)


def arrivals(person: Person, arrival: str) -> list[list[dict]]:
    """Deliveries (each processed on its own) with the deletion first, in the middle, last or twice."""
    events = stream(person)
    gone = deletion(person)
    rest = [e for e in events if e["id"] != gone["id"]]
    if arrival == "first":
        return [[gone]] + [[e] for e in rest]
    if arrival == "middle":
        return [[e] for e in rest[:3]] + [[gone]] + [[e] for e in rest[3:]]
    if arrival == "last":
        return [[e] for e in rest] + [[gone]]
    if arrival == "twice":
        return [[e] for e in events] + [[gone]] + [[e] for e in rest[:2]] + [[gone]]
    if arrival == "one_batch":
        return [list(reversed(events))]
    raise AssertionError(arrival)


async def deliver_all(pool, settings, deliveries, client=None, person: Person | None = None, registry=None):
    """Deliver each group in turn; once the first is in, the user adds their data through the API
    (attributes, a tag, activity), as they would once the customer shows up."""
    for number, payloads in enumerate(deliveries):
        await deliver(pool, settings, payloads, registry)
        if number == 0 and person is not None:
            await add_user_data(client, person)


async def add_user_data(client, person: Person) -> None:
    """What users add to a customer themselves; nothing when it is not (or no longer) there."""
    customer_id = person.customer_id
    answers = [
        await client.put(f"/api/customers/{customer_id}/attributes", json={"plan_tier": "gold", "seats": 3}),
        await client.post(f"/api/customers/{customer_id}/tags", json={"tag": "vip"}),
        await client.post("/api/activity", json={"customer": customer_id, "at": "2025-10-12T08:00:00Z"}),
    ]
    assert {answer.status_code for answer in answers} <= {200, 201, 404}


async def assert_anonymized(conn, person: Person):
    for needle in person.needles():
        assert await find_everywhere(conn, needle) == [], needle
    row = await conn.fetchrow("SELECT * FROM customers WHERE id = $1", person.customer_id)
    assert row["deleted_in_stripe"] is True
    assert row["deleted_at"] == DELETED_AT_TIME
    assert (row["email"], row["name"], row["phone"], row["address"], row["metadata"]) == (None, None, None, None, {})
    live = await conn.fetchval(
        "SELECT count(*) FROM subscriptions WHERE customer_id = $1 AND status = ANY($2::text[])",
        person.customer_id, list(LIVE),
    )
    assert live == 0
    tags = await conn.fetchval("SELECT array_agg(tag ORDER BY tag) FROM customer_tags WHERE customer_id = $1",
                               person.customer_id)
    assert tags == [DELETED_TAG, "vip"]
    attributes = await conn.fetchval("SELECT attributes FROM customer_attributes WHERE customer_id = $1",
                                     person.customer_id)
    assert attributes == {"plan_tier": "gold", "seats": 3}


async def assert_deleted(conn, person: Person):
    for needle in person.needles():
        assert await find_everywhere(conn, needle) == [], needle
    assert await find_everywhere(conn, person.customer_id) == ["customer_tombstones.customer_id"]
    tombstone = await conn.fetchrow("SELECT * FROM customer_tombstones WHERE customer_id = $1", person.customer_id)
    assert tombstone["deleted_at"] == DELETED_AT_TIME


async def test_anonymized_customer_leaves_no_personal_data_in_any_table(pool, conn, settings, client):
    person = Person()
    events = stream(person)
    await deliver_all(pool, settings, [[e] for e in events[:-2]], client, person)
    assert await find_everywhere(conn, person.marker)  # the search does find what is there
    await deliver_all(pool, settings, [[e] for e in events[-2:]])
    await assert_anonymized(conn, person)
    stored = await conn.fetchval("SELECT count(*) FROM stripe_events WHERE customer_id = $1", person.customer_id)
    assert stored == len(stream(person))


@pytest.mark.parametrize("arrival", ["first", "middle", "last", "twice", "one_batch"])
async def test_anonymize_holds_whatever_order_the_deletion_arrives_in(pool, conn, settings, client, arrival):
    person = Person()
    await deliver_all(pool, settings, arrivals(person, arrival), client, person)
    await assert_anonymized(conn, person)


@pytest.mark.parametrize("arrival", ["first", "middle", "last", "twice", "one_batch"])
async def test_delete_leaves_only_the_tombstone_whatever_the_order(pool, conn, settings, client, arrival):
    person = Person()
    await deliver_all(pool, in_mode(settings, "delete"), arrivals(person, arrival), client, person)
    await assert_deleted(conn, person)


async def test_late_event_of_a_deleted_customer_is_dropped_in_delete_mode(pool, conn, settings):
    person = Person()
    delete = in_mode(settings, "delete")
    await deliver(pool, delete, [deletion(person)])
    late = event("customer.updated", customer(person), created=T0 + 60)
    outcome = await deliver(pool, delete, [late])
    assert outcome.failed == [] and outcome.retry == []
    assert await conn.fetchval("SELECT count(*) FROM stripe_events WHERE id = $1", late["id"]) == 0
    assert await conn.fetchval("SELECT count(*) FROM customers WHERE id = $1", person.customer_id) == 0
    await assert_deleted(conn, person)


async def test_late_event_of_an_anonymized_customer_is_stored_scrubbed(pool, conn, settings):
    person = Person()
    await deliver(pool, settings, [deletion(person)])
    late = event("customer.updated", customer(person), created=T0 + 60)
    await deliver(pool, settings, [late])
    payload = await conn.fetchval("SELECT payload FROM stripe_events WHERE id = $1", late["id"])
    assert payload["data"]["object"]["email"] is None
    assert payload["data"]["object"]["currency"] == "gbp"
    assert await find_everywhere(conn, person.marker) == []


async def test_a_new_customer_with_a_new_id_is_unaffected(pool, conn, settings, client):
    gone, newcomer = Person(), Person()
    await deliver_all(pool, settings, [[e] for e in stream(gone)], client, gone)
    await deliver_all(pool, settings, [[e] for e in stream(newcomer) if e["type"] != "customer.deleted"], client, newcomer)
    row = await conn.fetchrow("SELECT email, deleted_in_stripe FROM customers WHERE id = $1", newcomer.customer_id)
    assert row["email"] == newcomer.email and row["deleted_in_stripe"] is False
    first = await conn.fetchval("SELECT payload FROM stripe_events WHERE id = $1", f"evt_{newcomer.key}_2")
    assert first["data"]["object"]["email"] == newcomer.email
    assert await conn.fetchval("SELECT count(*) FROM customer_tombstones WHERE customer_id = $1",
                               newcomer.customer_id) == 0


async def replay(pool, settings) -> None:
    """Re-apply every stored event in Stripe order through the one processing path, as replay does."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(f"SELECT {EVENT_COLUMNS} FROM stripe_events ORDER BY created, id")
        ctx = ProcessingContext(settings=settings, now=datetime.now(timezone.utc), registry=registries.product())
        await apply_events(conn, [record_from_row(r) for r in rows], ctx)


async def test_replay_applies_a_newly_chosen_delete_mode_to_past_deletions(pool, conn, settings, client):
    person = Person()
    await deliver_all(pool, settings, [[e] for e in stream(person)], client, person)
    await assert_anonymized(conn, person)
    await replay(pool, in_mode(settings, "delete"))
    await assert_deleted(conn, person)


REBUILD = """
TRUNCATE customers, products, prices, subscriptions, subscription_items, invoices, payments, discounts,
         segment_memberships, segment_history
"""


async def test_replay_after_a_rebuild_anonymizes_the_rebuilt_rows_again(pool, conn, settings, client):
    person = Person()
    await deliver_all(pool, settings, [[e] for e in stream(person)], client, person)
    await conn.execute(REBUILD)
    await replay(pool, settings)
    await assert_anonymized(conn, person)


async def test_replay_of_a_deleted_customer_in_delete_mode_changes_nothing(pool, conn, settings, client):
    person = Person()
    delete = in_mode(settings, "delete")
    await deliver_all(pool, delete, [[e] for e in stream(person)], client, person)
    await replay(pool, delete)
    await replay(pool, settings)  # back to anonymize: what was deleted stays deleted
    await assert_deleted(conn, person)



@pytest.mark.parametrize("mode", ["anonymize", "delete"])
async def test_logs_carry_no_personal_data(pool, conn, settings, client, mode):
    person = Person()
    with structlog.testing.capture_logs() as logs:
        await deliver_all(pool, in_mode(settings, mode), arrivals(person, "middle"), client, person)
    assert any(line["event"] == "customer_deletion_applied" for line in logs)
    text = repr(logs)
    for needle in person.needles():
        assert needle not in text


def normalized(value, person: Person):
    text = repr(value)
    for original, placeholder in person.ids().items():
        text = text.replace(original, placeholder)
    return text


async def customer_state(conn, person: Person) -> str:
    """What a user can see of the customer, with its ids and personal values replaced by names."""
    cid = person.customer_id
    state = {
        "customer": await conn.fetchrow(
            "SELECT email, name, phone, description, address, metadata, deleted_in_stripe, deleted_at "
            "FROM customers WHERE id = $1", cid),
        "subscriptions": await conn.fetch("SELECT id, status, metadata FROM subscriptions WHERE customer_id = $1 "
                                          "ORDER BY id", cid),
        "tags": await conn.fetch("SELECT tag FROM customer_tags WHERE customer_id = $1 ORDER BY tag", cid),
        "attributes": await conn.fetchval("SELECT attributes FROM customer_attributes WHERE customer_id = $1", cid),
        "tombstone": await conn.fetchrow("SELECT deleted_at, event_id FROM customer_tombstones WHERE customer_id = $1",
                                         cid),
        "events": await conn.fetch("SELECT id, payload FROM stripe_events WHERE customer_id = $1 ORDER BY id", cid),
    }
    return normalized({k: [dict(r) for r in v] if isinstance(v, list) else (dict(v) if v else v)
                       for k, v in state.items()}, person)


@hypothesis_settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    mode=st.sampled_from(["anonymize", "delete"]),
    order=st.permutations(range(8)),
    repeats=st.lists(st.integers(0, 7), max_size=3),
)
async def test_any_order_and_repetition_ends_in_the_stripe_order_state(pool, conn, settings, client, mode, order, repeats):
    chosen = in_mode(settings, mode)
    in_order = Person()
    # The same person under another id: only the ids tell the two streams apart.
    shuffled = dataclasses.replace(in_order, key=Person().key)
    await deliver_all(pool, chosen, [[e] for e in stream(in_order)], client, in_order)
    events = stream(shuffled)
    await deliver_all(pool, chosen, [[events[i]] for i in list(order) + repeats], client, shuffled)
    assert await customer_state(conn, shuffled) == await customer_state(conn, in_order)


async def write_what_the_event_says(conn, event, ctx):
    """The worst handler the guard can meet: writes the event's object over the row, ignoring versions."""
    obj = event.object
    if obj["object"] == "customer":
        await conn.execute(
            "INSERT INTO customers (id, email, name, phone, address, metadata) VALUES ($1, $2, $3, $4, $5, $6) "
            "ON CONFLICT (id) DO UPDATE SET email = $2, name = $3, phone = $4, address = $5, metadata = $6, "
            "deleted_in_stripe = false, deleted_at = NULL",
            obj["id"], obj["email"], obj["name"], obj["phone"], obj["address"], obj["metadata"],
        )
    else:
        await conn.execute(
            "INSERT INTO subscriptions (id, customer_id, status, metadata) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (id) DO UPDATE SET status = $3, metadata = $4",
            obj["id"], obj["customer"], obj["status"], obj["metadata"],
        )


@pytest.mark.parametrize("mode", ["anonymize", "delete"])
@pytest.mark.parametrize("arrival", ["first", "middle", "twice"])
async def test_handlers_of_late_events_cannot_restore_data_or_revive_subscriptions(
    pool, conn, settings, client, mode, arrival
):
    careless = registries.replacing(dict.fromkeys(("customer.created", "customer.updated", "customer.subscription.created",
                                                   "customer.subscription.updated"), write_what_the_event_says))
    person = Person()
    await deliver_all(pool, in_mode(settings, mode), arrivals(person, arrival), client, person, careless)
    if mode == "anonymize":
        await assert_anonymized(conn, person)
        status = await conn.fetchval("SELECT status FROM subscriptions WHERE id = $1", person.subscription_id)
        assert status == "canceled"
    else:
        await assert_deleted(conn, person)


def mentions(person: Person) -> list[dict]:
    """Events of other objects that name the customer only indirectly, before its deletion."""
    dispute = {
        "id": f"dp_{person.key}", "object": "dispute", "amount": 7500, "currency": "gbp", "charge": f"ch_{person.key}",
        "evidence": {"customer_email_address": person.email, "customer_name": person.name,
                     "billing_address": person.line1, "uncategorized_text": None},
        "metadata": {}, "reason": "fraudulent", "status": "needs_response",
    }
    review = {"id": f"prv_{person.key}", "object": "review", "charge": charge(person), "ip_address": "203.0.113.9",
              "open": True, "reason": "rule"}
    return [
        event("charge.dispute.created", dispute, created=T0 + 3 * 86400, id=f"evt_{person.key}_d"),
        event("review.opened", review, created=T0 + 3 * 86400 + 1, id=f"evt_{person.key}_r"),
    ]


@pytest.mark.parametrize("mode", ["anonymize", "delete"])
async def test_events_naming_the_customer_indirectly_are_scrubbed_and_kept(pool, conn, settings, client, mode):
    person = Person()
    chosen = in_mode(settings, mode)
    others = mentions(person)
    await deliver_all(pool, chosen, [[e] for e in stream(person) if e["type"] != "customer.deleted"], client, person)
    await deliver_all(pool, chosen, [[e] for e in others])
    await deliver(pool, chosen, [deletion(person)])
    for needle in person.needles():
        assert await find_everywhere(conn, needle) == [], needle
    kept = await conn.fetch("SELECT id, payload FROM stripe_events WHERE id = ANY($1::text[]) ORDER BY id",
                            [e["id"] for e in others])
    assert len(kept) == 2
    assert kept[0]["payload"]["data"]["object"]["amount"] == 7500


def nested(depth: int, leaf: str) -> dict:
    value: dict = {"note": leaf}
    for _ in range(depth):
        value = {"next": value}
    return value


@pytest.mark.parametrize("mode", ["anonymize", "delete"])
async def test_an_unreadable_stored_event_never_blocks_its_customers_deletion(pool, conn, settings, client, mode):
    # Stored before ingest refused such payloads, or by an import: deeper than any Stripe object,
    # so deep that it cannot be written back as JSON.
    person = Person()
    chosen = in_mode(settings, mode)
    odd = event("customer.updated", {**customer(person), "test_clock": nested(300, person.email)}, created=T0 + 120)
    await deliver_all(pool, chosen, [[e] for e in stream(person)[:2]], client, person)
    async with pool.acquire() as conn_:
        # Ingest now refuses such depth (stripeline.model.events.MAX_DEPTH): store it as an older version did.
        shallow = parse_event(json.dumps({**odd, "data": {"object": customer(person)}}).encode())
        await insert_events(conn_, [dataclasses.replace(shallow, payload=odd, raw=json.dumps(odd).encode())])
    await process_events(pool, [odd["id"]], chosen, registry=registries.product())
    outcome = await deliver(pool, chosen, [deletion(person)])
    assert outcome.processed and not outcome.failed and not outcome.retry
    for needle in person.needles():
        assert await find_everywhere(conn, needle) == [], needle
    if mode == "anonymize":
        kept = await conn.fetchval("SELECT payload FROM stripe_events WHERE id = $1", odd["id"])
        assert kept["type"] == "customer.updated" and kept["data"]["object"]["id"] == person.customer_id
