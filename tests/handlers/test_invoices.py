"""invoice.*: subscription link and paid amount in both shapes, status only forward, deletion."""

from __future__ import annotations

import copy
import itertools

import pytest

from stripeline.model.events import event_from_payload
from stripeline.processing.engine import process_events
from stripeline.store.event_log import insert_events
from tests import factories as f
from tests import registries
from tests.handlers.billing_support import apply, row

T = 1_700_000_000
SHAPES = [f.OLD_API_VERSION, f.NEW_API_VERSION]


def _lifecycle(api_version, customer_id=None, invoice_id=None):
    """created (draft), finalized (open), paid + payment_succeeded: Stripe's first-invoice burst."""
    customer_id = customer_id or f.new_id("cus")
    sub_id = f.new_id("sub")
    draft = f.invoice_object(customer_id, subscription=sub_id, id=invoice_id, amount_due=2900, created=T,
                             api_version=api_version)
    opened, _ = f.changed(draft, status="open", number="INV-7",
                          status_transitions={**draft["status_transitions"], "finalized_at": T})
    paid, _ = f.changed(opened, status="paid", amount_paid=2900, amount_remaining=0,
                        status_transitions={**opened["status_transitions"], "paid_at": T})
    return sub_id, [
        f.event("invoice.created", draft, created=T, api_version=api_version),
        f.event("invoice.finalized", opened, created=T, api_version=api_version),
        f.event("invoice.paid", paid, created=T, api_version=api_version),
        f.event("invoice.payment_succeeded", paid, created=T, api_version=api_version),
    ]


@pytest.mark.parametrize("api_version", SHAPES)
async def test_paid_invoice_links_its_subscription_in_either_shape(conn, settings, api_version):
    sub_id, events = _lifecycle(api_version)
    ctx = await apply(conn, settings, events)
    invoice = events[0]["data"]["object"]
    stored = await row(conn, "invoices", invoice["id"])
    assert ctx.touched == {invoice["customer"]}
    assert (stored["subscription_id"], stored["status"], stored["number"]) == (sub_id, "paid", "INV-7")
    assert (stored["amount_paid"], stored["paid_at"].timestamp()) == (2900, T)
    assert stored["description"] == "1 × Pro (at $10.00 / month)"


async def test_paid_amount_and_time_come_from_the_invoice_payments_when_the_invoice_lacks_them(conn, settings):
    customer_id = f.new_id("cus")
    payment = f.invoice_payment_object("in_placeholder", amount=1200, paid_at=T + 7)
    invoice = f.invoice_object(customer_id, status="paid", amount_due=1200, payments=[payment],
                               api_version=f.NEW_API_VERSION)
    payment["invoice"] = invoice["id"]
    del invoice["amount_paid"]
    invoice["status_transitions"]["paid_at"] = None
    await apply(conn, settings, [f.event("invoice.paid", invoice, created=T + 8)])
    stored = await row(conn, "invoices", invoice["id"])
    assert (stored["amount_paid"], stored["paid_at"].timestamp()) == (1200, T + 7)
    assert (await row(conn, "payments", payment["id"]))["invoice_id"] == invoice["id"]


@pytest.mark.parametrize("api_version", SHAPES)
async def test_status_never_moves_backward_whatever_the_arrival_order(conn, settings, api_version):
    _, template = _lifecycle(api_version)
    for order in itertools.permutations(range(4)):
        invoice_id = f.new_id("in")
        events = [_renamed(e, invoice_id) for e in template]
        for index in order:
            await apply(conn, settings, [events[index]])
        stored = await row(conn, "invoices", invoice_id)
        assert (stored["status"], stored["amount_paid"]) == ("paid", 2900), order


def _renamed(payload, invoice_id):
    event = copy.deepcopy(payload)
    event["id"] = f"{payload['id']}_{invoice_id}"
    event["data"]["object"]["id"] = invoice_id
    return event


async def test_a_late_older_event_leaves_a_paid_invoice_paid(conn, settings):
    _, events = _lifecycle(f.NEW_API_VERSION)
    stale_open = copy.deepcopy(events[1])
    stale_open["created"] = T - 100
    await apply(conn, settings, events[2:3])
    await apply(conn, settings, [stale_open])
    assert (await row(conn, "invoices", events[0]["data"]["object"]["id"]))["status"] == "paid"


async def test_payment_failed_and_its_update_in_one_second_keep_the_attempt(conn, settings):
    customer_id = f.new_id("cus")
    opened = f.invoice_object(customer_id, status="open", created=T)
    failed, previous = f.changed(opened, attempt_count=1, attempted=True, next_payment_attempt=T + 86400)
    events = [f.event("invoice.finalized", opened, created=T, id="evt_c"),
              f.event("invoice.payment_failed", failed, created=T, id="evt_a"),
              f.event("invoice.updated", failed, created=T, previous_attributes=previous, id="evt_b")]
    for order in itertools.permutations(events):
        invoice_id = f.new_id("in")
        for payload in order:
            await apply(conn, settings, [_renamed(payload, invoice_id)])
        stored = await row(conn, "invoices", invoice_id)
        assert (stored["attempt_count"], stored["next_payment_attempt"].timestamp()) == (1, T + 86400)


async def test_a_deleted_draft_stays_deleted_for_older_and_later_events(conn, settings):
    customer_id = f.new_id("cus")
    draft = f.invoice_object(customer_id, created=T)
    await apply(conn, settings, [f.event("invoice.deleted", draft, created=T + 10)])
    edited, previous = f.changed(draft, description="late edit")
    await apply(conn, settings, [f.event("invoice.updated", edited, created=T + 5, previous_attributes=previous)])
    await apply(conn, settings, [f.event("invoice.created", draft, created=T)])
    await apply(conn, settings, [f.event("invoice.updated", edited, created=T + 30, previous_attributes=previous)])
    stored = await row(conn, "invoices", draft["id"])
    assert stored["deleted"] is True and stored["description"] != "late edit"


async def test_replaying_invoice_events_twice_changes_nothing(conn, settings):
    _, events = _lifecycle(f.OLD_API_VERSION)
    await apply(conn, settings, events)
    first = await row(conn, "invoices", events[0]["data"]["object"]["id"])
    await apply(conn, settings, events + events)
    assert await row(conn, "invoices", events[0]["data"]["object"]["id"]) == first


async def test_upcoming_invoice_is_ignored_and_never_stored_as_an_invoice(pool, conn, settings):
    upcoming = f.invoice_object(f.new_id("cus"), status="draft")
    del upcoming["id"]
    record = event_from_payload(f.event("invoice.upcoming", upcoming))
    await insert_events(conn, [record])
    outcome = await process_events(pool, [record.id], settings, registry=registries.product())
    assert outcome.ignored == [record.id]
    assert await conn.fetchval("SELECT count(*) FROM invoices") == 0
