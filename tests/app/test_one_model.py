"""One model, whichever way it was built: live, replay, rebuild and import agree, deletions included.

The yardstick is what a user sees through the API (tests/observed.py), compared with the
in-order live delivery of each event once.
"""

from __future__ import annotations

import dataclasses

from app.events import event_from_payload, insert_events
from app.processing import process_events
from app.replay import replay
from tests import factories as f
from tests.observed import differing, observed

T0 = 1_700_000_000


def smallest_case(key: str) -> tuple[str, list[dict], list[dict]]:
    """(customer id, its events before the deletion, the deletion): the issue's smallest case."""
    customer_id = f"cus_small_{key}"
    price = f.price_object(f"price_small_{key}", product=f"prod_small_{key}", unit_amount=2500, created=T0)
    customer = f.customer_object(customer_id, email=f"ada.{key}@example.org", name="Ada", currency="usd", created=T0)
    subscription = f.subscription_object(customer_id, [(price, 2)], id=f"sub_small_{key}", created=T0 + 60,
                                         item_ids=[f"si_small_{key}"])
    invoice = f.invoice_object(customer_id, subscription=subscription["id"], id=f"in_small_{key}", status="paid",
                               amount_due=5000, amount_paid=5000, created=T0 + 60, paid_at=T0 + 61,
                               finalized_at=T0 + 60, number=f"N-{key}")
    before = [
        f.event("customer.created", customer, created=T0, id=f"evt_small_{key}_1"),
        f.event("customer.subscription.created", subscription, created=T0 + 60, id=f"evt_small_{key}_2"),
        f.event("invoice.paid", invoice, created=T0 + 61, id=f"evt_small_{key}_3"),
    ]
    deletion = f.event("customer.deleted", customer, created=T0 + 86400, id=f"evt_small_{key}_4")
    return customer_id, before, [deletion]


async def deliver_each(pool, settings, payloads) -> None:
    """Live delivery: each event stored as ingest stores it, then processed as the worker does."""
    for payload in payloads:
        record = event_from_payload(payload)
        async with pool.acquire() as conn:
            new = await insert_events(conn, [record])
        if new:
            await process_events(pool, [record.id], settings)


async def add_user_data(client, customer_id: str) -> None:
    assert (await client.put(f"/api/customers/{customer_id}/attributes", json={"plan_tier": "gold"})).status_code == 200
    assert (await client.post(f"/api/customers/{customer_id}/tags", json={"tag": "vip"})).status_code == 201


async def test_a_rebuild_keeps_the_history_of_a_customer_deleted_in_stripe(pool, settings, client):
    customer_id, before, deletion = smallest_case("rebuild")
    await deliver_each(pool, settings, before)
    await add_user_data(client, customer_id)
    await deliver_each(pool, settings, deletion)
    live = await observed(client, [customer_id])
    seen = live["customers"][customer_id]["customer"]
    assert [s["status"] for s in seen["subscriptions"]] == ["canceled"]
    assert seen["last_payment"]["amount"] == 5000
    assert "churned_customers" in seen["segments"]

    await replay(pool, settings, rebuild=True)

    assert differing(await observed(client, [customer_id]), live) == []


async def test_a_deletion_processed_first_keeps_the_earlier_events_of_its_customer(pool, settings, client):
    in_order, before, deletion = smallest_case("inorder")
    await deliver_each(pool, settings, before + deletion)
    first, before_first, deletion_first = smallest_case("first")
    await deliver_each(pool, settings, deletion_first + before_first)

    got = (await observed(client, [first]))["customers"][first]
    want = (await observed(client, [in_order]))["customers"][in_order]
    assert repr(got).replace("first", "X") == repr(want).replace("inorder", "X")


async def test_import_of_a_stream_with_a_deletion_gives_the_live_answer(pool, settings, client):
    customer_id, before, deletion = smallest_case("import")
    await deliver_each(pool, settings, before + deletion)
    live = await observed(client, [customer_id])
    await replay(pool, dataclasses.replace(settings), rebuild=True)
    assert differing(await observed(client, [customer_id]), live) == []
