"""GET /api/segments..., POST /api/activity: what a user's tools see and send."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import orjson
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tests.segment_support import add_customer, add_subscription, evaluate, history_of, members_of

DAY = timedelta(days=1)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def zulu(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


async def slipping_trial(conn, settings, **customer) -> str:
    """A customer 10 days old in a trial with 5 days left, never active since it signed up."""
    now = utc_now()
    customer_id = await add_customer(conn, created_at=now - 10 * DAY, **customer)
    await add_subscription(conn, customer_id, "trialing", trial_end=now + 5 * DAY)
    await evaluate(conn, [customer_id], now, settings)
    return customer_id


async def test_segment_list_counts_every_segment_including_empty_ones(client, conn, settings):
    await slipping_trial(conn, settings)
    paying = await add_customer(conn, created_at=utc_now())
    await add_subscription(conn, paying, "past_due")
    await evaluate(conn, [paying], utc_now(), settings)

    answer = await client.get("/api/segments")
    assert answer.status_code == 200
    assert answer.json() == [
        {"key": "syncing_with_stripe", "name": "Syncing with Stripe", "count": 2},
        {"key": "current_trials", "name": "Current Trials", "count": 1},
        {"key": "slipping_trials", "name": "Slipping Trials", "count": 1},
        {"key": "slipping_customers", "name": "Slipping Customers", "count": 0},
        {"key": "expired_trials", "name": "Expired Trials", "count": 0},
        {"key": "customers", "name": "Customers", "count": 1},
        {"key": "churned_customers", "name": "Churned Customers", "count": 0},
        {"key": "past_due", "name": "Past Due Subscriptions", "count": 1},
    ]


async def test_segment_routes_need_the_bearer_token(client):
    for path in ("/api/segments", "/api/segments/customers/customers", "/api/segments/customers/history"):
        assert (await client.get(path, headers={"authorization": "Bearer wrong"})).status_code == 401
    answer = await client.post("/api/activity", json={"customer": "cus_x"}, headers={"authorization": ""})
    assert answer.status_code == 401


async def test_unknown_segment_is_404(client):
    for path in ("/api/segments/vips/customers", "/api/segments/vips/history"):
        answer = await client.get(path)
        assert answer.status_code == 404
        assert answer.json() == {"error": "no such segment"}


async def test_members_come_in_pages_that_chain_by_cursor(client, conn, settings):
    ids = sorted([await add_customer(conn, f"cus_page_{i:02d}") for i in range(25)])
    await evaluate(conn, ids, utc_now(), settings)
    seen, after, pages = [], None, 0
    while True:
        params = {"limit": 10} | ({"after": after} if after else {})
        answer = (await client.get("/api/segments/syncing_with_stripe/customers", params=params)).json()
        seen += answer["customers"]
        pages += 1
        after = answer["next"]
        if after is None:
            break
        assert after == answer["customers"][-1]
    assert pages == 3
    assert seen == ids


async def test_default_page_holds_a_hundred_members(client, conn, settings):
    ids = [await add_customer(conn) for _ in range(101)]
    await evaluate(conn, ids, utc_now(), settings)
    answer = (await client.get("/api/segments/syncing_with_stripe/customers")).json()
    assert len(answer["customers"]) == 100 and answer["next"] is not None


async def test_pages_stay_stable_while_members_join_and_leave(client, conn, settings):
    ids = [await add_customer(conn, f"cus_stable_{i:02d}") for i in range(0, 20, 2)]
    await evaluate(conn, ids, utc_now(), settings)
    first = (await client.get("/api/segments/syncing_with_stripe/customers", params={"limit": 4})).json()
    assert first["customers"] == ids[:4]

    # Between pages: a member already seen leaves, one before the cursor and one after it join.
    await conn.execute("UPDATE customers SET deleted_in_stripe = true WHERE id = $1", ids[1])
    early, late = await add_customer(conn, "cus_stable_01"), await add_customer(conn, "cus_stable_13")
    await evaluate(conn, [ids[1], early, late], utc_now(), settings)

    rest, after = [], first["next"]
    while after:
        page = (await client.get("/api/segments/syncing_with_stripe/customers", params={"limit": 4, "after": after})).json()
        rest += page["customers"]
        after = page["next"]
    assert rest == sorted([*ids[4:], late])  # nothing repeated, nothing that stayed is skipped


async def test_expanded_members_carry_name_email_mrr_and_when_they_entered(client, conn, settings):
    ids = sorted([await add_customer(conn, f"cus_exp_{i}", email=f"person{i}@example.com") for i in range(3)])
    await conn.execute("UPDATE customers SET name = 'Person ' || right(id, 1), mrr = 1200, currency = 'eur'")
    entered = utc_now()
    await evaluate(conn, ids, entered, settings)
    params = {"expand": "customer", "limit": 2}
    first = (await client.get("/api/segments/syncing_with_stripe/customers", params=params)).json()
    assert first["customers"][0] == {"id": ids[0], "name": "Person 0", "email": "person0@example.com", "mrr": 1200,
                                     "currency": "eur", "deleted_in_stripe": False, "entered_at": zulu(entered)}
    assert first["next"] == ids[1]
    rest = (await client.get("/api/segments/syncing_with_stripe/customers", params={**params, "after": first["next"]}))
    assert [c["id"] for c in rest.json()["customers"]] == ids[2:] and rest.json()["next"] is None
    unknown = await client.get("/api/segments/syncing_with_stripe/customers", params={"expand": "everything"})
    assert unknown.status_code == 400


async def test_bad_page_parameters_are_400(client):
    for params in ({"limit": 0}, {"limit": -1}, {"limit": 1001}, {"limit": "ten"}, {"limit": "1.5"}, {"after": "a\x00b"}):
        answer = await client.get("/api/segments/customers/customers", params=params)
        assert answer.status_code == 400, params
        assert answer.json()["error"]


async def test_history_lists_entries_and_exits_with_time_and_cause(client, conn, settings):
    start = utc_now().replace(microsecond=0)
    customer = await add_customer(conn)
    await add_subscription(conn, customer, "past_due", subscription_id="sub_history")
    await evaluate(conn, [customer], start, settings, cause="evt_past_due")
    await conn.execute("UPDATE subscriptions SET status = 'active' WHERE id = 'sub_history'")
    await evaluate(conn, [customer], start + timedelta(minutes=5), settings, cause="evt_paid")

    answer = await client.get("/api/segments/past_due/history")
    assert answer.status_code == 200
    assert answer.json() == {
        "segment": "past_due",
        "history": [
            {"customer": customer, "change": "entered", "at": zulu(start), "cause": "evt_past_due"},
            {"customer": customer, "change": "exited", "at": zulu(start + timedelta(minutes=5)), "cause": "evt_paid"},
        ],
        "next": None,
    }
    # `since` as written in a query string, where "+" arrives as a space.
    since = (start + timedelta(minutes=1)).isoformat()
    recent = (await client.get(f"/api/segments/past_due/history?since={since}")).json()
    assert [h["change"] for h in recent["history"]] == ["exited"]


async def test_history_pages_chain_by_cursor(client, conn, settings):
    ids = [await add_customer(conn) for _ in range(5)]
    now = utc_now()
    for minute, customer in enumerate(ids):
        await evaluate(conn, [customer], now + timedelta(minutes=minute), settings)
    seen, after = [], None
    while True:
        params = {"limit": 2} | ({"after": after} if after else {})
        page = (await client.get("/api/segments/syncing_with_stripe/history", params=params)).json()
        seen += [h["customer"] for h in page["history"]]
        after = page["next"]
        if not after:
            break
    assert seen == ids


async def test_history_accepts_any_valid_time_as_since(client):
    for since in ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59+01:00", "2024-02-29", "1700000000", "1700000000.5"):
        answer = await client.get("/api/segments/customers/history", params={"since": since})
        assert answer.status_code == 200, since
        assert answer.json()["history"] == []


async def test_bad_history_parameters_are_400(client):
    bad = ["yesterday", "2024-13-01", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "99999999999999"]
    for params in [*({"since": since} for since in bad), {"after": "x"}, {"after": "999999"}, {"limit": 0}]:
        answer = await client.get("/api/segments/customers/history", params=params)
        assert answer.status_code == 400, params
        assert answer.json()["error"]


# --- POST /api/activity ---------------------------------------------------------------------


async def test_activity_brings_a_slipping_trial_back_at_once(client, conn, settings):
    customer = await slipping_trial(conn, settings)
    assert "slipping_trials" in await members_of(conn, customer)
    answer = await client.post("/api/activity", json={"customer": customer})
    assert answer.status_code == 200
    assert answer.json() == {"recorded": 1, "duplicates": 0, "customers": [customer]}
    assert "slipping_trials" not in await members_of(conn, customer)
    segment, change, _, cause = (await history_of(conn, customer))[-1]
    assert (segment, change, cause) == ("slipping_trials", "exited", "activity")


async def test_activity_by_email_matches_regardless_of_case(client, conn, settings):
    customer = await slipping_trial(conn, settings, email="Ada@Example.com")
    answer = await client.post("/api/activity", json={"email": "ada@example.COM", "at": utc_now().isoformat()})
    assert answer.json()["customers"] == [customer]
    assert "slipping_trials" not in await members_of(conn, customer)


async def test_old_activity_is_recorded_but_leaves_a_customer_slipping(client, conn, settings):
    customer = await slipping_trial(conn, settings)
    at = (utc_now() - 3 * DAY).isoformat()
    assert (await client.post("/api/activity", json={"customer": customer, "at": at})).status_code == 200
    assert await conn.fetchval("SELECT count(*) FROM customer_activity WHERE customer_id = $1", customer) == 1
    assert "slipping_trials" in await members_of(conn, customer)


async def test_same_customer_and_time_is_recorded_once(client, conn, settings):
    customer = await add_customer(conn)
    item = {"customer": customer, "at": "2024-05-01T10:00:00Z"}
    assert (await client.post("/api/activity", json=item)).json()["recorded"] == 1
    again = await client.post("/api/activity", json=[item, item | {"at": "2024-05-01T12:00:00+02:00"}])
    assert again.json() == {"recorded": 0, "duplicates": 2, "customers": [customer]}
    assert await conn.fetchval("SELECT count(*) FROM customer_activity WHERE customer_id = $1", customer) == 1


async def test_batch_records_every_item_in_one_go(client, conn, settings):
    first = await slipping_trial(conn, settings)
    second = await slipping_trial(conn, settings, email="grace@example.com")
    batch = [{"customer": first}, {"email": "grace@example.com", "at": int(utc_now().timestamp())}]
    answer = await client.post("/api/activity", json=batch)
    assert answer.status_code == 200
    assert answer.json() == {"recorded": 2, "duplicates": 0, "customers": sorted([first, second])}
    for customer in (first, second):
        assert "slipping_trials" not in await members_of(conn, customer)


async def test_unknown_customer_or_email_is_404_and_the_batch_records_nothing(client, conn, settings):
    known = await add_customer(conn)
    answer = await client.post("/api/activity", json={"customer": "cus_nobody"})
    assert answer.status_code == 404 and "cus_nobody" in answer.json()["error"]
    answer = await client.post("/api/activity", json=[{"customer": known}, {"email": "nobody@example.com"}])
    assert answer.status_code == 404
    assert answer.json() == {"error": "item 1: no customer with that email"}
    assert await conn.fetchval("SELECT count(*) FROM customer_activity") == 0


async def test_bad_activity_is_400_with_a_message_that_says_what_to_fix(client, conn, settings):
    customer = await add_customer(conn)
    future = (utc_now() + DAY).isoformat()
    cases = {
        b"not json": "JSON",
        b"[]": "non-empty list",
        b"42": "object",
        b"{}": "exactly one of customer",
        orjson.dumps({"customer": customer, "email": "a@example.com"}): "exactly one of customer",
        orjson.dumps({"customer": ""}): "non-empty string",
        orjson.dumps({"customer": 42}): "non-empty string",
        orjson.dumps({"customer": "cus_\x00"}): "NUL",
        orjson.dumps({"customer": customer, "when": "now"}): "unknown field 'when'",
        orjson.dumps({"customer": customer, "at": "last tuesday"}): "ISO 8601",
        orjson.dumps({"customer": customer, "at": True}): "ISO 8601",
        orjson.dumps({"customer": customer, "at": 10**18}): "ISO 8601",
        orjson.dumps({"customer": customer, "at": future}): "in the future",
        orjson.dumps([{"customer": customer}, "cus_123"]): "item 1: must be an object",
        orjson.dumps([{"customer": customer}] * 1001): "at most 1000",
    }
    for body, message in cases.items():
        answer = await client.post("/api/activity", content=body, headers={"content-type": "application/json"})
        assert answer.status_code == 400, body[:60]
        assert message in answer.json()["error"], (body[:60], answer.json())
    assert await conn.fetchval("SELECT count(*) FROM customer_activity") == 0


async def test_oversized_activity_body_is_413(client):
    body = b"[" + b",".join([b'{"customer": "cus_x"}'] * 60_000) + b"]"
    assert (await client.post("/api/activity", content=body)).status_code == 413


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
activity_like = st.fixed_dictionaries(
    {}, optional={"customer": json_values | st.text(), "email": json_values, "at": json_values | st.datetimes().map(str)}
)


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=json_values | activity_like | st.lists(activity_like, max_size=3))
async def test_any_json_body_gets_an_answer_never_a_server_error(client, body):
    answer = await client.post("/api/activity", content=json.dumps(body).encode())
    assert answer.status_code in (200, 400, 404), (body, answer.text)
    assert answer.json()

