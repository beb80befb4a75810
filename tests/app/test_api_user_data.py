"""Custom attributes and tags: validated, bounded, and untouched by a rebuild."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from tests.personal_data import Person, deletion, deliver, seed_rows

CUSTOMER = "cus_attr_test"


@pytest.fixture
async def customer(conn):
    await conn.execute("INSERT INTO customers (id, email) VALUES ($1, 'someone@example.org')", CUSTOMER)
    return CUSTOMER


def attributes_url(customer_id: str = CUSTOMER) -> str:
    return f"/api/customers/{customer_id}/attributes"


def tags_url(customer_id: str = CUSTOMER) -> str:
    return f"/api/customers/{customer_id}/tags"


async def test_put_replaces_the_attributes(client, customer):
    first = await client.put(attributes_url(), json={"plan_tier": "gold", "seats": 3, "beta": True, "note": None})
    assert first.status_code == 200
    second = await client.put(attributes_url(), json={"seats": 4.5})
    assert second.json() == {"customer": CUSTOMER, "attributes": {"seats": 4.5}}
    assert (await client.get(attributes_url())).json()["attributes"] == {"seats": 4.5}


BAD_BODIES = {
    "not json": (b"{plan: pro}", "not valid JSON"),
    "an array": (b'["gold"]', "must be a JSON object"),
    "a string": (b'"gold"', "must be a JSON object"),
    "null": (b"null", "must be a JSON object"),
    "nested object": (b'{"address": {"line1": "1 Secret St"}}', "is an object"),
    "nested array": (b'{"roles": ["admin"]}', "is an array"),
    "deeply nested": (b'{"a": {"b": {"c": {"d": 1}}}}', "is an object"),
    "too many keys": (orjson.dumps({f"k{i}": i for i in range(101)}), "at most 100 attributes"),
    "key too long": (orjson.dumps({"k" * 101: 1}), "1 to 100 characters"),
    "empty key": (b'{"": 1}', "1 to 100 characters"),
    "value too long": (orjson.dumps({"bio": "x" * 1001}), "longer than 1000"),
    "body too large": (orjson.dumps({f"k{i}": "y" * 1000 for i in range(70)}), "larger than 65536 bytes"),
}


@pytest.mark.parametrize("case", BAD_BODIES)
async def test_bad_attributes_get_a_4xx_and_change_nothing(client, customer, case):
    body, message = BAD_BODIES[case]
    await client.put(attributes_url(), json={"plan_tier": "gold"})
    answer = await client.put(attributes_url(), content=body, headers={"content-type": "application/json"})
    assert answer.status_code == (413 if case == "body too large" else 400)
    assert message in answer.json()["error"]
    assert "Secret" not in answer.text and "admin" not in answer.text  # values are never echoed
    assert (await client.get(attributes_url())).json()["attributes"] == {"plan_tier": "gold"}


async def test_body_too_large_is_refused_without_a_length_header(client, customer):
    async def chunks():
        for _ in range(70):
            yield b" " * 1024

    answer = await client.put(attributes_url(), content=chunks())
    assert answer.status_code == 413
    assert "larger than" in answer.json()["error"]


async def test_unknown_customer_is_404_and_stores_nothing(client, conn):
    for answer in (
        await client.put(attributes_url("cus_nobody"), json={"a": 1}),
        await client.get(attributes_url("cus_nobody")),
        await client.post(tags_url("cus_nobody"), json={"tag": "vip"}),
        await client.get(tags_url("cus_nobody")),
        await client.delete(f"{tags_url('cus_nobody')}/vip"),
    ):
        assert answer.status_code == 404
        assert answer.json() == {"error": "no such customer"}
    assert await conn.fetchval("SELECT count(*) FROM customer_attributes") == 0
    assert await conn.fetchval("SELECT count(*) FROM customer_tags") == 0


async def test_routes_need_the_bearer_token(client, customer):
    answer = await client.put(attributes_url(), json={"a": 1}, headers={"authorization": "Bearer wrong"})
    assert answer.status_code == 401


async def test_tags_are_added_once_and_removed(client, customer):
    created = await client.post(tags_url(), json={"tag": "vip"})
    assert created.status_code == 201 and created.json() == {"customer": CUSTOMER, "tags": ["vip"]}
    again = await client.post(tags_url(), json={"tag": " vip "})
    assert again.status_code == 200 and again.json()["tags"] == ["vip"]
    await client.post(tags_url(), json={"tag": "needs onboarding"})
    removed = await client.delete(f"{tags_url()}/needs%20onboarding")
    assert removed.json() == {"customer": CUSTOMER, "tags": ["vip"], "removed": True}
    missing = await client.delete(f"{tags_url()}/never-added")
    assert missing.status_code == 200 and missing.json()["removed"] is False
    assert (await client.get(tags_url())).json()["tags"] == ["vip"]


@pytest.mark.parametrize(
    "body, message",
    [
        (["vip"], "JSON object"),
        ({"label": "vip"}, "JSON object"),
        ({"tag": 7}, "must be a string"),
        ({"tag": {"name": "vip"}}, "must be a string"),
        ({"tag": "   "}, "1 to 100 characters"),
        ({"tag": "x" * 101}, "1 to 100 characters"),
        ({"tag": "a/b"}, "slash"),
        ({"tag": "line\nbreak"}, "control characters"),
    ],
)
async def test_bad_tags_get_400_and_change_nothing(client, customer, body, message):
    answer = await client.post(tags_url(), json=body)
    assert answer.status_code == 400
    assert message in answer.json()["error"]
    assert (await client.get(tags_url())).json()["tags"] == []


async def test_a_customer_has_at_most_100_tags(client, conn, customer):
    await conn.execute(
        "INSERT INTO customer_tags (customer_id, tag) SELECT $1, 't' || n FROM generate_series(1, 100) AS n", CUSTOMER
    )
    assert (await client.post(tags_url(), json={"tag": "one-more"})).status_code == 400
    assert (await client.post(tags_url(), json={"tag": "t1"})).status_code == 200


async def test_anonymized_customer_keeps_attributes_and_accepts_new_ones(client, pool, conn, settings):
    person = Person()
    await seed_rows(conn, person)
    await deliver(pool, settings, [deletion(person)])
    assert (await client.get(attributes_url(person.customer_id))).json()["attributes"] == {"plan_tier": "gold",
                                                                                           "seats": 3}
    assert (await client.put(attributes_url(person.customer_id), json={"seats": 1})).status_code == 200
    tags = (await client.get(tags_url(person.customer_id))).json()["tags"]
    assert tags == ["deleted_customer_in_stripe", "vip"]


REBUILD_TRUNCATE = """
TRUNCATE customers, products, prices, subscriptions, subscription_items, invoices, payments, discounts,
         segment_memberships, segment_history CASCADE
"""


async def test_user_data_survives_wiping_the_stripe_derived_tables(client, conn, customer):
    await client.put(attributes_url(), json={"plan_tier": "gold"})
    await client.post(tags_url(), json={"tag": "vip"})
    await conn.execute(REBUILD_TRUNCATE)  # what `replay --rebuild` starts with; CASCADE follows any foreign key
    await conn.execute("INSERT INTO customers (id) VALUES ($1)", CUSTOMER)  # the replay brings it back
    assert (await client.get(attributes_url())).json()["attributes"] == {"plan_tier": "gold"}
    assert (await client.get(tags_url())).json()["tags"] == ["vip"]


async def test_user_data_survives_replay_rebuild(client, conn, customer, db_url, redis_url):
    await client.put(attributes_url(), json={"plan_tier": "gold"})
    await client.post(tags_url(), json={"tag": "vip"})
    env = {**os.environ, "DATABASE_URL": db_url, "REDIS_URL": redis_url}
    done = subprocess.run([sys.executable, "-m", "stripeline", "replay", "--rebuild"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert await conn.fetchval("SELECT attributes FROM customer_attributes WHERE customer_id = $1", CUSTOMER) == {
        "plan_tier": "gold"}
    assert await conn.fetchval("SELECT array_agg(tag) FROM customer_tags WHERE customer_id = $1", CUSTOMER) == ["vip"]
