"""price.*, plan.*, product.*: the catalog, from its own events and from subscriptions."""

from __future__ import annotations

from tests import factories as f
from tests.handlers.billing_support import apply, row

T = 1_700_000_000


async def test_price_created_updated_and_deleted(conn, settings):
    price = f.price_object(unit_amount=2500, interval="week", interval_count=2, nickname="Biweekly", created=T)
    renamed, previous = f.changed(price, nickname="Fortnightly")
    await apply(conn, settings, [f.event("price.created", price, created=T)])
    await apply(conn, settings, [f.event("price.updated", renamed, created=T + 1, previous_attributes=previous)])
    stored = await row(conn, "prices", price["id"])
    assert (stored["unit_amount"], stored["interval"], stored["interval_count"], stored["nickname"]) == (
        2500, "week", 2, "Fortnightly")
    await apply(conn, settings, [f.event("price.deleted", renamed, created=T + 2)])
    assert (await row(conn, "prices", price["id"]))["deleted"] is True


async def test_a_deleted_price_stays_deleted_when_a_subscription_still_shows_it(conn, settings):
    price = f.price_object(created=T)
    await apply(conn, settings, [f.event("price.deleted", price, created=T)])
    sub = f.subscription_object(f.new_id("cus"), [(price, 1)], created=T + 60)
    await apply(conn, settings, [f.event("customer.subscription.updated", sub, created=T + 60,
                                         previous_attributes={"metadata": {}})])
    assert (await row(conn, "prices", price["id"]))["deleted"] is True


async def test_plan_events_are_stored_as_the_price_of_the_same_id(conn, settings):
    plan = f.plan_object(amount=9900, interval="year", nickname="Annual", created=T)
    await apply(conn, settings, [f.event("plan.created", plan, created=T, api_version=f.OLD_API_VERSION)])
    stored = await row(conn, "prices", plan["id"])
    assert (stored["unit_amount"], stored["interval"], stored["type"], stored["nickname"]) == (9900, "year", "recurring", "Annual")
    await apply(conn, settings, [f.event("plan.deleted", plan, created=T + 1, api_version=f.OLD_API_VERSION)])
    assert (await row(conn, "prices", plan["id"]))["deleted"] is True


async def test_product_created_updated_deleted_and_an_older_update_changes_nothing(conn, settings):
    product = f.product_object(name="Starter", created=T)
    renamed, previous = f.changed(product, name="Starter+")
    stale, stale_previous = f.changed(product, name="Old name")
    await apply(conn, settings, [f.event("product.created", product, created=T)])
    await apply(conn, settings, [f.event("product.updated", renamed, created=T + 10, previous_attributes=previous)])
    await apply(conn, settings, [f.event("product.updated", stale, created=T + 5, previous_attributes=stale_previous)])
    assert (await row(conn, "products", product["id"]))["name"] == "Starter+"
    await apply(conn, settings, [f.event("product.deleted", renamed, created=T + 20)])
    await apply(conn, settings, [f.event("product.updated", stale, created=T + 30, previous_attributes=stale_previous)])
    assert (await row(conn, "products", product["id"]))["deleted"] is True


async def test_same_second_created_and_updated_price_ends_updated_in_either_order(conn, settings):
    for reverse in (False, True):
        price = f.price_object(nickname="v1", created=T)
        renamed, previous = f.changed(price, nickname="v2")
        events = [f.event("price.created", price, created=T, id="evt_z" + price["id"]),
                  f.event("price.updated", renamed, created=T, previous_attributes=previous, id="evt_a" + price["id"])]
        for payload in events[::-1] if reverse else events:
            await apply(conn, settings, [payload])
        assert (await row(conn, "prices", price["id"]))["nickname"] == "v2"


async def test_an_expanded_product_inside_a_price_is_stored(conn, settings):
    product = f.product_object(name="Embedded")
    price = f.price_object(product=product)
    await apply(conn, settings, [f.event("price.created", price)])
    assert (await row(conn, "products", product["id"]))["name"] == "Embedded"
    assert (await row(conn, "prices", price["id"]))["product_id"] == product["id"]


async def test_replaying_catalog_events_twice_changes_nothing(conn, settings):
    price = f.price_object(created=T)
    events = [f.event("price.created", price, created=T), f.event("product.created", f.product_object(), created=T)]
    await apply(conn, settings, events)
    first = await row(conn, "prices", price["id"])
    await apply(conn, settings, events)
    assert await row(conn, "prices", price["id"]) == first
