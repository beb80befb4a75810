"""The billing refresh: MRR as the contract defines it, and the last payment."""

from __future__ import annotations

import pytest

from tests import factories as f
from tests.handlers.billing_support import apply, row

T = 1_700_000_000


async def _subscribe(conn, settings, items, *, status="active", currency="usd", discount=None,
                     api_version=f.NEW_API_VERSION, customer_currency="usd"):
    customer = f.customer_object(currency=customer_currency, created=T)
    sub = f.subscription_object(customer["id"], items, status=status, currency=currency, created=T,
                                discount=discount, api_version=api_version)
    events = [f.event("customer.created", customer, created=T),
              f.event("customer.subscription.created", sub, created=T, api_version=api_version)]
    await apply(conn, settings, events)
    return customer, sub


async def _mrr(conn, customer_id):
    return (await row(conn, "customers", customer_id))["mrr"]


@pytest.mark.parametrize(
    ("interval", "count", "amount", "quantity", "expected"),
    [
        ("month", 1, 1000, 3, 3000),
        ("year", 1, 12000, 1, 1000),
        ("week", 1, 700, 1, 3033),  # 700 x 52 / 12 = 3033.33
        ("day", 1, 100, 1, 3042),  # 100 x 365 / 12 = 3041.67
        ("month", 3, 2999, 2, 1999),  # 5998 / 3 = 1999.33
        ("year", 2, 24000, 1, 1000),
    ],
)
async def test_mrr_normalises_every_interval_to_a_month(conn, settings, interval, count, amount, quantity, expected):
    price = f.price_object(unit_amount=amount, interval=interval, interval_count=count)
    customer, sub = await _subscribe(conn, settings, [(price, quantity)])
    assert await _mrr(conn, customer["id"]) == expected
    assert (await row(conn, "subscriptions", sub["id"]))["mrr"] == expected


@pytest.mark.parametrize(("status", "counted"), [("active", True), ("past_due", True), ("trialing", False),
                                                 ("canceled", False), ("paused", False), ("unpaid", False)])
async def test_only_active_and_past_due_subscriptions_count(conn, settings, status, counted):
    customer, sub = await _subscribe(conn, settings, [(f.price_object(unit_amount=5000), 1)], status=status)
    assert await _mrr(conn, customer["id"]) == (5000 if counted else 0)
    assert (await row(conn, "subscriptions", sub["id"]))["mrr"] == 5000  # its own amount, whatever its status


async def test_several_subscriptions_and_items_add_up_and_metered_items_count_zero(conn, settings):
    monthly = f.price_object(unit_amount=1000)
    yearly = f.price_object(unit_amount=6000, interval="year")
    metered = f.price_object(unit_amount=5, usage_type="metered")
    customer, _ = await _subscribe(conn, settings, [(monthly, 2), (yearly, 1), (metered, None)])
    second = f.subscription_object(customer["id"], [(f.price_object(unit_amount=300), 1)], created=T)
    await apply(conn, settings, [f.event("customer.subscription.created", second, created=T)])
    assert await _mrr(conn, customer["id"]) == 2000 + 500 + 300


async def test_percent_discount_from_an_old_shape_subscription_lowers_mrr(conn, settings):
    customer_id = f.new_id("cus")
    discount = f.discount_object(customer_id, f.coupon_object(percent_off=25))
    customer = f.customer_object(customer_id, currency="usd")
    sub = f.subscription_object(customer_id, [(f.price_object(unit_amount=1000), 1)], discount=discount,
                                api_version=f.OLD_API_VERSION)
    await apply(conn, settings, [f.event("customer.created", customer),
                                 f.event("customer.subscription.created", sub, api_version=f.OLD_API_VERSION)])
    assert await _mrr(conn, customer_id) == 750


async def test_amount_off_discount_from_basil_events_is_normalised_per_month(conn, settings):
    yearly = f.price_object(unit_amount=12000, interval="year")
    customer, sub = await _subscribe(conn, settings, [(yearly, 1)])
    discount = f.discount_object(customer["id"], f.coupon_object(amount_off=1200, currency="usd"),
                                 subscription=sub["id"], start=T + 1)
    named, previous = f.changed(sub, discounts=[discount["id"]])
    await apply(conn, settings, [f.event("customer.discount.created", discount, created=T + 1),
                                 f.event("customer.subscription.updated", named, created=T + 1,
                                         previous_attributes=previous)])
    assert await _mrr(conn, customer["id"]) == 1000 - 100
    await apply(conn, settings, [f.event("customer.discount.deleted", discount, created=T + 2)])
    assert await _mrr(conn, customer["id"]) == 1000


async def test_mrr_counts_only_the_customer_s_currency(conn, settings):
    customer, _ = await _subscribe(conn, settings, [(f.price_object(unit_amount=1000, currency="eur"), 1)],
                                   currency="eur", customer_currency="usd")
    assert await _mrr(conn, customer["id"]) == 0


async def test_mrr_follows_a_trial_ending_and_a_cancellation(conn, settings):
    customer, sub = await _subscribe(conn, settings, [(f.price_object(unit_amount=800), 1)], status="trialing")
    assert await _mrr(conn, customer["id"]) == 0
    active, previous = f.changed(sub, status="active")
    await apply(conn, settings, [f.event("customer.subscription.updated", active, created=T + 1,
                                         previous_attributes=previous)])
    assert await _mrr(conn, customer["id"]) == 800
    canceled, _ = f.changed(active, status="canceled")
    await apply(conn, settings, [f.event("customer.subscription.deleted", canceled, created=T + 2)])
    assert await _mrr(conn, customer["id"]) == 0


async def test_last_payment_is_the_latest_paid_invoice_or_charge(conn, settings):
    customer = f.customer_object(currency="usd", created=T)
    invoice = f.invoice_object(customer["id"], status="paid", amount_due=2900, amount_paid=2900, paid_at=T + 10,
                               description="March")
    charge = f.charge_object(customer["id"], amount=500, created=T + 20, description="Setup fee")
    await apply(conn, settings, [f.event("customer.created", customer, created=T),
                                 f.event("invoice.paid", invoice, created=T + 10)])
    stored = await row(conn, "customers", customer["id"])
    assert (stored["last_payment_amount"], stored["last_payment_description"], stored["last_payment_at"].timestamp()) == (
        2900, "March", T + 10)
    await apply(conn, settings, [f.event("charge.succeeded", charge, created=T + 20)])
    stored = await row(conn, "customers", customer["id"])
    assert (stored["last_payment_id"], stored["last_payment_amount"], stored["last_payment_currency"]) == (
        charge["id"], 500, "usd")
    failed = f.charge_object(customer["id"], amount=9999, status="failed", created=T + 30)
    await apply(conn, settings, [f.event("charge.failed", failed, created=T + 30)])
    assert (await row(conn, "customers", customer["id"]))["last_payment_id"] == charge["id"]
