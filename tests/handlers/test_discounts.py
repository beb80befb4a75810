"""customer.discount.*, and discounts inside customers and subscriptions."""

from __future__ import annotations

import pytest

from tests import factories as f
from tests.handlers.billing_support import apply, row

T = 1_700_000_000


@pytest.mark.parametrize("coupon_in_source", [False, True], ids=["coupon", "source_coupon"])
async def test_discount_created_and_deleted_with_either_coupon_shape(conn, settings, coupon_in_source):
    customer_id = f.new_id("cus")
    coupon = f.coupon_object(percent_off=20, duration="repeating")
    discount = f.discount_object(customer_id, coupon, subscription=f.new_id("sub"), start=T,
                                 coupon_in_source=coupon_in_source)
    ctx = await apply(conn, settings, [f.event("customer.discount.created", discount, created=T)])
    stored = await row(conn, "discounts", discount["id"])
    assert ctx.touched == {customer_id}
    assert stored["coupon"]["percent_off"] == 20 and stored["coupon"]["duration"] == "repeating"
    assert (stored["subscription_id"], stored["deleted"]) == (discount["subscription"], False)
    await apply(conn, settings, [f.event("customer.discount.deleted", discount, created=T + 9)])
    assert (await row(conn, "discounts", discount["id"]))["deleted"] is True


async def test_a_deleted_discount_is_not_revived_by_an_older_or_later_event(conn, settings):
    discount = f.discount_object(f.new_id("cus"), f.coupon_object(amount_off=500, currency="usd"), start=T)
    await apply(conn, settings, [f.event("customer.discount.deleted", discount, created=T + 9)])
    await apply(conn, settings, [f.event("customer.discount.created", discount, created=T)])
    await apply(conn, settings, [f.event("customer.discount.updated", discount, created=T + 20,
                                         previous_attributes={"end": None})])
    assert (await row(conn, "discounts", discount["id"]))["deleted"] is True


async def test_an_old_shape_subscription_carries_its_discount_and_coupon(conn, settings):
    customer_id = f.new_id("cus")
    coupon = f.coupon_object(percent_off=50)
    discount = f.discount_object(customer_id, coupon, start=T)
    sub = f.subscription_object(customer_id, [(f.price_object(), 1)], discount=discount, created=T,
                                api_version=f.OLD_API_VERSION)
    discount["subscription"] = sub["id"]
    await apply(conn, settings, [f.event("customer.subscription.created", sub, created=T, api_version=f.OLD_API_VERSION)])
    stored = await row(conn, "discounts", discount["id"])
    assert (stored["subscription_id"], stored["coupon"]["percent_off"], stored["event_rank"]) == (sub["id"], 50, 0)
    assert (await row(conn, "subscriptions", sub["id"]))["discount_ids"] == [discount["id"]]


async def test_replaying_a_discount_twice_changes_nothing(conn, settings):
    discount = f.discount_object(f.new_id("cus"), f.coupon_object(percent_off=10), start=T)
    payload = f.event("customer.discount.created", discount, created=T)
    await apply(conn, settings, [payload])
    first = await row(conn, "discounts", discount["id"])
    await apply(conn, settings, [payload, payload])
    assert await row(conn, "discounts", discount["id"]) == first
