"""GET /api/customers/{id} and /api/customers/{id}/events, as a user of the API sees them."""

from __future__ import annotations

from tests import factories as f
from tests.handlers.billing_support import apply

T = 1_700_000_000


def _iso(timestamp: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat().replace("+00:00", "Z")


async def _customer_with_history(conn, settings, api_version=f.NEW_API_VERSION):
    customer = f.customer_object(email="ada@example.com", name="Ada", phone="+15550100", currency="usd",
                                 address=f.address(), created=T, api_version=api_version)
    product = f.product_object(name="Team", created=T)
    price = f.price_object(product=product["id"], unit_amount=1200, interval="month", nickname="Team monthly")
    trialing = f.subscription_object(customer["id"], [(price, 2)], status="trialing", created=T + 1,
                                     trial_start=T + 1, trial_end=T + 100, period=(T + 1, T + 100),
                                     api_version=api_version)
    active, previous = f.changed(trialing, status="active")
    invoice = f.invoice_object(customer["id"], subscription=trialing["id"], status="paid", amount_due=2400,
                               amount_paid=2400, paid_at=T + 100, created=T + 100, description="First month",
                               api_version=api_version)
    charge = f.charge_object(customer["id"], amount=2400, created=T + 100, invoice=invoice["id"],
                             api_version=api_version)
    events = [
        f.event("customer.created", customer, created=T, api_version=api_version),
        f.event("product.created", product, created=T),
        f.event("customer.subscription.created", trialing, created=T + 1, api_version=api_version),
        f.event("invoice.created", {**invoice, "status": "draft"}, created=T + 100, api_version=api_version),
        f.event("charge.succeeded", charge, created=T + 100, api_version=api_version),
        f.event("invoice.paid", invoice, created=T + 100, api_version=api_version),
        f.event("invoice.payment_succeeded", invoice, created=T + 100, api_version=api_version),
        f.event("customer.subscription.updated", active, created=T + 100, previous_attributes=previous,
                api_version=api_version),
    ]
    await apply(conn, settings, events)
    return customer, product, price, trialing, invoice, charge


async def test_customer_answer_has_every_contract_field_with_subscriptions(client, conn, settings):
    customer, product, price, sub, invoice, _ = await _customer_with_history(conn, settings)
    answer = await client.get(f"/api/customers/{customer['id']}")
    assert answer.status_code == 200
    body = answer.json()
    for key in ("id", "email", "name", "phone", "description", "address", "delinquent", "currency", "mrr",
                "created_at", "deleted_in_stripe", "last_activity_at", "last_synced_at", "last_payment",
                "subscriptions", "segments", "tags", "attributes"):
        assert key in body, key
    assert (body["email"], body["name"], body["currency"], body["mrr"]) == ("ada@example.com", "Ada", "usd", 2400)
    assert body["address"] == f.address()
    assert body["created_at"] == _iso(T) == body["last_activity_at"]
    assert body["last_payment"] == {"id": invoice["id"], "amount": 2400, "currency": "usd",
                                    "description": "First month", "at": _iso(T + 100)}
    [subscription] = body["subscriptions"]
    for key in ("id", "status", "trial_start", "trial_end", "created_at", "canceled_at", "cancel_at_period_end",
                "current_period_start", "current_period_end", "items"):
        assert key in subscription, key
    assert (subscription["status"], subscription["trial_end"]) == ("active", _iso(T + 100))
    [item] = subscription["items"]
    assert item["quantity"] == 2
    assert item["price"] == {"id": price["id"], "unit_amount": 1200, "currency": "usd", "interval": "month",
                             "interval_count": 1, "nickname": "Team monthly"}
    assert item["product"] == {"id": product["id"], "name": "Team"}
    # Paying since T, long ago, with no activity since: a customer, and a slipping one.
    assert body["segments"] == ["customers", "slipping_customers", "syncing_with_stripe"]
    assert (body["tags"], body["attributes"]) == ([], {})


async def test_customer_answer_shows_segments_tags_attributes_and_latest_activity(client, conn, settings):
    customer, *_ = await _customer_with_history(conn, settings, api_version=f.OLD_API_VERSION)
    await conn.execute("INSERT INTO customer_tags (customer_id, tag) VALUES ($1, 'vip'), ($1, 'beta')", customer["id"])
    await conn.execute("INSERT INTO customer_attributes (customer_id, attributes) VALUES ($1, $2)", customer["id"],
                       {"plan_seats": 5})
    await conn.execute("INSERT INTO customer_activity (customer_id, at) VALUES ($1, to_timestamp($2)), "
                       "($1, to_timestamp($3))", customer["id"], T + 500, T + 900)
    body = (await client.get(f"/api/customers/{customer['id']}")).json()
    assert body["segments"] == ["customers", "slipping_customers", "syncing_with_stripe"]
    assert body["tags"] == ["beta", "vip"]
    assert body["attributes"] == {"plan_seats": 5}
    assert body["last_activity_at"] == _iso(T + 900)


async def test_a_customer_known_only_from_a_subscription_is_answered_with_what_is_known(client, conn, settings):
    sub = f.subscription_object(f.new_id("cus"), [(f.price_object(), 1)], created=T)
    await apply(conn, settings, [f.event("customer.subscription.created", sub, created=T)])
    body = (await client.get(f"/api/customers/{sub['customer']}")).json()
    assert (body["email"], body["mrr"], len(body["subscriptions"])) == (None, 1000, 1)


async def test_unknown_customer_is_404_for_the_customer_and_its_events(client):
    for path in ("/api/customers/cus_nobody", "/api/customers/cus_nobody/events"):
        answer = await client.get(path)
        assert answer.status_code == 404
        assert answer.json()["error"]


async def test_customer_routes_need_the_bearer_token(client):
    client.headers.pop("authorization")
    assert (await client.get("/api/customers/cus_x")).status_code == 401
    assert (await client.get("/api/customers/cus_x/events")).status_code == 401


async def test_timeline_shows_billing_events_newest_first_as_encharge_does(client, conn, settings):
    customer, _, _, sub, invoice, charge = await _customer_with_history(conn, settings)
    answer = await client.get(f"/api/customers/{customer['id']}/events")
    assert answer.status_code == 200
    events = answer.json()["events"]
    kinds = [e["kind"] for e in events]
    assert [e["at"] for e in events] == [_iso(T + 100)] * 5 + [_iso(T + 1)] * 2
    # One second holds five entries; within it a creation is the oldest. Stripe sent both
    # invoice.paid and invoice.payment_succeeded: the feed shows the payment once.
    assert sorted(kinds[:5]) == ["charge_succeeded", "invoice_created", "invoice_paid", "subscription_updated",
                                 "trial_ended"]
    assert kinds[4] == "invoice_created"
    assert kinds.index("trial_ended") + 1 == kinds.index("subscription_updated")
    assert kinds[5:] == ["trial_started", "subscription_created"]
    paid = events[kinds.index("invoice_paid")]
    assert (paid["invoice_id"], paid["amount"], paid["currency"]) == (invoice["id"], 2400, "usd")
    assert answer.json()["next"] is None


async def test_timeline_pages_with_next_and_rejects_a_bad_limit(client, conn, settings):
    customer, *_ = await _customer_with_history(conn, settings)
    seen, after = [], None
    while True:
        params = {"limit": 2, **({"after": after} if after else {})}
        body = (await client.get(f"/api/customers/{customer['id']}/events", params=params)).json()
        seen += [e["event_id"] for e in body["events"]]
        after = body["next"]
        if after is None:
            break
    full = (await client.get(f"/api/customers/{customer['id']}/events")).json()["events"]
    assert list(dict.fromkeys(seen)) == list(dict.fromkeys(e["event_id"] for e in full))
    assert (await client.get(f"/api/customers/{customer['id']}/events?limit=0")).status_code == 400
    assert (await client.get(f"/api/customers/{customer['id']}/events?limit=abc")).status_code == 400


# --- GET /api/customers?q= ----------------------------------------------------------------------


async def _people(conn, settings):
    people = [
        f.customer_object("cus_Ada1", email="ada@example.com", name="Ada Lovelace", created=T),
        f.customer_object("cus_Bob2", email="bob@ADAMS.example", name="Bob Adams", created=T),
        f.customer_object("cus_Cy_3", email="cy@example.com", name="Adalbert Cy", created=T),
        f.customer_object("cus_Dee4", email="dee%x@example.com", name=None, created=T),
    ]
    await apply(conn, settings, [f.event("customer.created", person, created=T) for person in people])


async def test_search_finds_customers_by_id_email_or_name_prefix_in_any_case(client, conn, settings):
    await _people(conn, settings)

    async def found(q):
        answer = await client.get("/api/customers", params={"q": q})
        assert answer.status_code == 200, answer.text
        return [c["id"] for c in answer.json()["customers"]]

    assert await found("ADA") == ["cus_Ada1", "cus_Cy_3"]        # email or name starts with it
    assert await found("bob@adams") == ["cus_Bob2"]
    assert await found("cus_b") == ["cus_Bob2"]                  # id prefix, any case
    assert await found("cus_") == ["cus_Ada1", "cus_Bob2", "cus_Cy_3", "cus_Dee4"]
    assert await found("lovelace") == []                         # a prefix, not a substring
    assert await found("cus_C%") == [] and await found("cus_Cy_") == ["cus_Cy_3"]  # wildcards are literal
    assert await found("dee%") == ["cus_Dee4"]
    answer = (await client.get("/api/customers", params={"q": "ada@"})).json()
    assert answer["customers"] == [{"id": "cus_Ada1", "email": "ada@example.com", "name": "Ada Lovelace", "mrr": 0,
                                    "currency": None, "created_at": _iso(T), "delinquent": False,
                                    "deleted_in_stripe": False}]


async def test_search_pages_chain_by_cursor_and_without_q_lists_everyone(client, conn, settings):
    await _people(conn, settings)
    seen, after = [], None
    while True:
        body = (await client.get("/api/customers", params={"limit": 3, **({"after": after} if after else {})})).json()
        seen += [c["id"] for c in body["customers"]]
        after = body["next"]
        if after is None:
            break
    assert seen == ["cus_Ada1", "cus_Bob2", "cus_Cy_3", "cus_Dee4"]


async def test_search_with_bad_parameters_is_400(client):
    for params in ({"q": "x" * 600}, {"q": "a\x00"}, {"limit": "0"}, {"limit": "²"}, {"limit": "9999"}):
        answer = await client.get("/api/customers", params=params)
        assert answer.status_code == 400, params
        assert answer.json()["error"]


async def test_timeline_says_which_status_a_subscription_left(client, conn, settings):
    customer, *_ = await _customer_with_history(conn, settings)
    events = (await client.get(f"/api/customers/{customer['id']}/events")).json()["events"]
    updated = next(e for e in events if e["kind"] == "subscription_updated")
    assert (updated["previous_status"], updated["status"]) == ("trialing", "active")


async def test_ids_with_a_nul_character_are_400_not_an_outage(client):
    for path in ("/api/customers/cus%00x", "/api/customers/cus%00x/events", "/api/events/evt%00x"):
        answer = await client.get(path)
        assert answer.status_code == 400, path
        assert "NUL" in answer.json()["error"]
