"""customer.created / customer.updated, and a customer row once Stripe deleted the customer."""

from __future__ import annotations

import copy
import itertools

import pytest

from tests import factories as f
from tests.handlers.billing_support import apply, row

T = 1_700_000_000
SHAPES = [f.OLD_API_VERSION, f.NEW_API_VERSION]


@pytest.mark.parametrize("api_version", SHAPES)
async def test_created_customer_has_every_field_encharge_maps(conn, settings, api_version):
    customer = f.customer_object(email="ada@example.com", name="Ada", phone="+15550100", description="VIP",
                                 address=f.address(line2="Apt 4"), currency="eur", created=T, delinquent=True,
                                 metadata={"plan": "gold"}, api_version=api_version)
    payload = f.event("customer.created", customer, created=T, api_version=api_version)
    ctx = await apply(conn, settings, [payload])
    stored = await row(conn, "customers", customer["id"])
    assert ctx.touched == {customer["id"]}
    assert (stored["email"], stored["name"], stored["phone"], stored["description"]) == (
        "ada@example.com", "Ada", "+15550100", "VIP")
    assert stored["address"] == f.address(line2="Apt 4")
    assert (stored["currency"], stored["delinquent"], stored["metadata"]) == ("eur", True, {"plan": "gold"})
    assert stored["created_at"].timestamp() == T
    assert (stored["event_id"], stored["deleted_in_stripe"]) == (payload["id"], False)


async def test_newer_update_replaces_the_customer_and_an_older_one_changes_nothing(conn, settings):
    customer = f.customer_object(email="old@example.com", created=T)
    newer, previous = f.changed(customer, email="new@example.com")
    older, older_previous = f.changed(customer, email="stale@example.com")
    await apply(conn, settings, [f.event("customer.created", customer, created=T)])
    await apply(conn, settings, [f.event("customer.updated", newer, created=T + 10, previous_attributes=previous)])
    await apply(conn, settings, [f.event("customer.updated", older, created=T + 5, previous_attributes=older_previous)])
    assert (await row(conn, "customers", customer["id"]))["email"] == "new@example.com"


async def test_replaying_customer_events_twice_changes_nothing(conn, settings):
    customer = f.customer_object(created=T)
    updated, previous = f.changed(customer, name="Renamed")
    events = [f.event("customer.created", customer, created=T),
              f.event("customer.updated", updated, created=T + 1, previous_attributes=previous)]
    await apply(conn, settings, events)
    first = await row(conn, "customers", customer["id"])
    await apply(conn, settings, events + events)
    again = await row(conn, "customers", customer["id"])
    assert {k: v for k, v in again.items() if k != "last_synced_at"} == {
        k: v for k, v in first.items() if k != "last_synced_at"}
    assert again["last_synced_at"] == first["last_synced_at"]  # not even rewritten


async def test_same_second_updates_end_on_the_last_one_in_every_arrival_order(conn, settings):
    base = f.customer_object(email="a@example.com", created=T)
    second, p1 = f.changed(base, email="b@example.com")
    third, p2 = f.changed(second, name="Bee")
    fourth, p3 = f.changed(third, metadata={"crm": "42"})
    # Ids chosen so that id order is the reverse of Stripe's order.
    events = [
        f.event("customer.created", base, created=T, id="evt_z"),
        f.event("customer.updated", second, created=T, previous_attributes=p1, id="evt_c"),
        f.event("customer.updated", third, created=T, previous_attributes=p2, id="evt_b"),
        f.event("customer.updated", fourth, created=T, previous_attributes=p3, id="evt_a"),
    ]
    for order in itertools.islice(itertools.permutations(events), 0, None, 5):
        customer = f.customer_object(created=T)
        renamed = [_for_customer(e, customer["id"]) for e in order]
        for payload in renamed:
            await apply(conn, settings, [payload])
        stored = await row(conn, "customers", customer["id"])
        assert (stored["email"], stored["name"], stored["metadata"]) == ("b@example.com", "Bee", {"crm": "42"})


def _for_customer(payload, customer_id):
    """The same event for another customer (fresh ids, same evidence)."""
    renamed = copy.deepcopy(payload)
    renamed["id"] = f"{payload['id']}_{customer_id}"
    renamed["data"]["object"]["id"] = customer_id
    return renamed


@pytest.mark.parametrize("whole", [True, False], ids=["whole_customer", "id_only"])
async def test_a_customer_deleted_in_stripe_stays_deleted_and_anonymous_whatever_updates_follow(conn, settings, whole):
    customer = f.customer_object(email="gone@example.com", currency="usd", created=T)
    await apply(conn, settings, [f.event("customer.created", customer, created=T)])
    deleted_obj = customer if whole else f.deleted_customer_object(customer["id"])
    deletion = f.event("customer.deleted", deleted_obj, created=T + 10)
    await apply(conn, settings, [deletion])
    await apply(conn, settings, [deletion])  # delivered twice
    for created in (T + 5, T + 10, T + 20):
        changed, previous = f.changed(customer, email=f"back{created}@example.com", currency="eur")
        await apply(conn, settings, [f.event("customer.updated", changed, created=created, previous_attributes=previous)])
    stored = await row(conn, "customers", customer["id"])
    assert (stored["deleted_in_stripe"], stored["email"], stored["name"]) == (True, None, None)
    assert stored["deleted_at"].timestamp() == T + 10
    # Non-personal fields follow the newest event, as for any customer.
    assert stored["currency"] == "eur"


async def test_a_customer_first_known_by_its_deletion_is_kept_without_personal_data(conn, settings):
    customer = f.customer_object(email="never@example.com", currency="usd", created=T)
    await apply(conn, settings, [f.event("customer.deleted", customer, created=T + 3)])
    await apply(conn, settings, [f.event("customer.created", customer, created=T)])
    stored = await row(conn, "customers", customer["id"])
    assert (stored["deleted_in_stripe"], stored["email"], stored["currency"]) == (True, None, "usd")
    assert stored["created_at"].timestamp() == T
