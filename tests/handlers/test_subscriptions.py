"""customer.subscription.*: the subscription, its items, and the catalog inside them."""

from __future__ import annotations

import copy
import itertools

import pytest

from tests import factories as f
from tests.handlers.billing_support import ITEMS_OF, apply, row

T = 1_700_000_000
SHAPES = [f.OLD_API_VERSION, f.NEW_API_VERSION]


def _new_subscription(api_version, *, status="active", quantity=2, **kwargs):
    customer = f.customer_object(created=T)
    product = f.product_object(name="Team")
    price = f.price_object(product=product["id"], unit_amount=1500, nickname="Team monthly")
    sub = f.subscription_object(customer["id"], [(price, quantity)], status=status, created=T,
                                period=(T, T + 2_592_000), api_version=api_version, **kwargs)
    return customer, product, price, sub


@pytest.mark.parametrize("api_version", SHAPES)
async def test_created_subscription_stores_items_prices_and_the_period_of_either_shape(conn, settings, api_version):
    customer, product, price, sub = _new_subscription(api_version, status="trialing", trial_start=T,
                                                      trial_end=T + 14 * 86400)
    ctx = await apply(conn, settings, [f.event("customer.subscription.created", sub, created=T,
                                               api_version=api_version)])
    stored = await row(conn, "subscriptions", sub["id"])
    assert ctx.touched == {customer["id"]}
    assert (stored["customer_id"], stored["status"], stored["currency"]) == (customer["id"], "trialing", "usd")
    assert stored["trial_end"].timestamp() == T + 14 * 86400
    # before basil on the subscription, from basil on each item: the same period either way
    assert (stored["current_period_start"].timestamp(), stored["current_period_end"].timestamp()) == (
        T, T + 2_592_000)
    items = await conn.fetch(ITEMS_OF, sub["id"])
    assert [(i["price_id"], i["product_id"], i["quantity"]) for i in items] == [(price["id"], product["id"], 2)]
    stored_price = await row(conn, "prices", price["id"])
    assert (stored_price["unit_amount"], stored_price["interval"], stored_price["nickname"], stored_price["event_rank"]) == (
        1500, "month", "Team monthly", 0)
    assert (await row(conn, "customers", customer["id"]))["event_created"].year == 1  # a placeholder


async def test_an_item_with_only_a_legacy_plan_reads_the_plan_as_its_price(conn, settings):
    customer = f.customer_object()
    plan = f.plan_object(amount=4900, interval="year", nickname="Gold yearly")
    sub = f.subscription_object(customer["id"], [(plan, 1)], api_version=f.OLD_API_VERSION, legacy_plan_only=True)
    await apply(conn, settings, [f.event("customer.subscription.created", sub, api_version=f.OLD_API_VERSION)])
    [item] = await conn.fetch(ITEMS_OF, sub["id"])
    price = await row(conn, "prices", plan["id"])
    assert item["price_id"] == plan["id"]
    assert (price["unit_amount"], price["interval"], price["type"], price["nickname"]) == (
        4900, "year", "recurring", "Gold yearly")


@pytest.mark.parametrize("api_version", SHAPES)
async def test_updated_items_replace_the_old_ones_only_when_the_update_wins(conn, settings, api_version):
    customer, product, price, sub = _new_subscription(api_version)
    other = f.price_object(unit_amount=500)
    both = f.subscription_object(customer["id"], [(price, 3), (other, 1)], id=sub["id"], created=T,
                                 api_version=api_version)
    only_other = f.subscription_object(customer["id"], [(other, 4)], id=sub["id"], created=T,
                                       item_ids=[both["items"]["data"][1]["id"]], api_version=api_version)
    await apply(conn, settings, [f.event("customer.subscription.created", sub, created=T)])
    await apply(conn, settings, [f.event("customer.subscription.updated", only_other, created=T + 20,
                                         previous_attributes={"items": both["items"]})])
    await apply(conn, settings, [f.event("customer.subscription.updated", both, created=T + 10,
                                         previous_attributes={"items": sub["items"]})])
    items = await conn.fetch(ITEMS_OF, sub["id"])
    assert [(i["price_id"], i["quantity"]) for i in items] == [(other["id"], 4)]


async def test_deleted_subscription_is_canceled_and_an_older_update_does_not_revive_it(conn, settings):
    customer, product, price, sub = _new_subscription(f.NEW_API_VERSION)
    canceled, _ = f.changed(sub, status="canceled", canceled_at=T + 50, ended_at=T + 50)
    await apply(conn, settings, [f.event("customer.subscription.created", sub, created=T)])
    await apply(conn, settings, [f.event("customer.subscription.deleted", canceled, created=T + 50)])
    late, previous = f.changed(sub, quantity=9)
    await apply(conn, settings, [f.event("customer.subscription.updated", late, created=T + 30,
                                         previous_attributes=previous)])
    stored = await row(conn, "subscriptions", sub["id"])
    assert (stored["status"], stored["ended_at"].timestamp()) == ("canceled", T + 50)


async def test_replaying_subscription_events_twice_changes_nothing(conn, settings):
    customer, product, price, sub = _new_subscription(f.OLD_API_VERSION)
    active, previous = f.changed(sub, status="active", cancel_at_period_end=True)
    events = [f.event("customer.subscription.created", sub, created=T),
              f.event("customer.subscription.updated", active, created=T + 1, previous_attributes=previous)]
    await apply(conn, settings, events)
    first = await row(conn, "subscriptions", sub["id"])
    await apply(conn, settings, events)
    await apply(conn, settings, list(reversed(events)))
    assert await row(conn, "subscriptions", sub["id"]) == first


@pytest.mark.parametrize("api_version", SHAPES)
async def test_a_burst_in_one_second_ends_in_its_last_state_in_every_arrival_order(conn, settings, api_version):
    customer, product, price, template = _new_subscription(api_version, status="incomplete")
    for order in itertools.permutations(range(4)):
        sub = copy.deepcopy(template)
        sub["id"] = f.new_id("sub")
        active, p1 = f.changed(sub, status="active")
        flagged, p2 = f.changed(active, cancel_at_period_end=True, cancel_at=T + 2_592_000)
        tagged, p3 = f.changed(flagged, metadata={"seats": "10"})
        events = [
            f.event("customer.subscription.created", sub, created=T, id=f"evt_4{sub['id']}"),
            f.event("customer.subscription.updated", active, created=T, previous_attributes=p1, id=f"evt_3{sub['id']}"),
            f.event("customer.subscription.updated", flagged, created=T, previous_attributes=p2, id=f"evt_2{sub['id']}"),
            f.event("customer.subscription.updated", tagged, created=T, previous_attributes=p3, id=f"evt_1{sub['id']}"),
        ]
        for index in order:
            await apply(conn, settings, [events[index]])
        stored = await row(conn, "subscriptions", sub["id"])
        assert (stored["status"], stored["cancel_at_period_end"], stored["metadata"]) == ("active", True, {"seats": "10"})


async def test_canceled_is_final_within_its_second(conn, settings):
    customer, product, price, sub = _new_subscription(f.NEW_API_VERSION)
    canceled, previous = f.changed(sub, status="canceled", canceled_at=T + 5)
    # An update that Stripe made before the cancellation, with a larger id and no evidence.
    renamed, renamed_previous = f.changed(sub, metadata={"note": "x"})
    events = [f.event("customer.subscription.updated", canceled, created=T + 5, previous_attributes=previous,
                      id="evt_a"),
              f.event("customer.subscription.updated", renamed, created=T + 5, previous_attributes=renamed_previous,
                      id="evt_b")]
    for order in (events, events[::-1]):
        for payload in order:
            await apply(conn, settings, [payload])
        assert (await row(conn, "subscriptions", sub["id"]))["status"] == "canceled"


async def test_a_price_s_own_event_beats_its_copy_inside_a_subscription_of_the_same_second(conn, settings):
    customer, product, price, sub = _new_subscription(f.NEW_API_VERSION)
    renamed, previous = f.changed(price, nickname="Renamed")
    await apply(conn, settings, [f.event("price.updated", renamed, created=T, previous_attributes=previous)])
    await apply(conn, settings, [f.event("customer.subscription.created", sub, created=T)])
    assert (await row(conn, "prices", price["id"]))["nickname"] == "Renamed"
    later = f.event("customer.subscription.updated", sub, created=T + 1, previous_attributes={"metadata": {}})
    await apply(conn, settings, [later])
    assert (await row(conn, "prices", price["id"]))["nickname"] == "Team monthly"  # a newer copy is newer
