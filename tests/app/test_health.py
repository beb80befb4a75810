"""Liveness, readiness and Prometheus metrics, as a platform and a scraper see them."""

from __future__ import annotations

import re

from stripeline.http.web import create_app
from stripeline.store.db import create_pool
from stripeline.store.queue import redis_pool
from tests.conftest import WEBHOOK_SECRET
from tests.factories import ping_event, signed
from tests.services import serving, unreachable_postgres, unreachable_redis

# One Prometheus text-format sample: name, optional labels, value.
SAMPLE = re.compile(r'^([a-z_:][a-z0-9_:]*)(\{[a-z_]+="[^"]*"(?:,[a-z_]+="[^"]*")*\})? (-?[0-9.e+]+)$')


def samples(text: str) -> dict[str, float]:
    found = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        match = SAMPLE.match(line)
        assert match, f"not a Prometheus sample: {line!r}"
        found[match[1] + (match[2] or "")] = float(match[3])
    return found


async def test_healthz_answers_while_the_process_runs(client):
    answer = await client.get("/healthz")
    assert answer.status_code == 200


async def test_readyz_is_200_when_postgres_and_redis_answer(client):
    answer = await client.get("/readyz")
    assert answer.status_code == 200
    assert answer.json()["status"] == "ready"


async def test_readyz_names_redis_when_it_is_down(settings, pool):
    broken = redis_pool(unreachable_redis())
    async with serving(create_app(settings, pool=pool, redis=broken)) as client:
        answer = await client.get("/readyz")
    await broken.aclose()
    assert answer.status_code == 503
    assert list(answer.json()["failed"]) == ["redis"]


async def test_readyz_names_postgres_when_it_is_down(settings, redis):
    broken = await create_pool(unreachable_postgres(), min_size=0)
    async with serving(create_app(settings, pool=broken, redis=redis)) as client:
        answer = await client.get("/readyz")
    await broken.close()
    assert answer.status_code == 503
    assert list(answer.json()["failed"]) == ["postgres"]


async def test_readyz_names_both_when_both_are_down(settings):
    pool = await create_pool(unreachable_postgres(), min_size=0)
    redis = redis_pool(unreachable_redis())
    async with serving(create_app(settings, pool=pool, redis=redis)) as client:
        answer = await client.get("/readyz")
    await pool.close()
    await redis.aclose()
    assert answer.status_code == 503
    assert sorted(answer.json()["failed"]) == ["postgres", "redis"]


async def test_metrics_are_prometheus_text_counting_the_store(client, conn):
    for payload in (ping_event(), ping_event()):
        body, headers = signed(payload, WEBHOOK_SECRET)
        await client.post("/webhooks/stripe", content=body, headers=headers)
    await client.post("/webhooks/stripe", content=b"{}", headers={"stripe-signature": "t=1,v1=00"})
    await conn.execute("UPDATE stripe_events SET status = 'processed' WHERE id = (SELECT min(id) FROM stripe_events)")

    answer = await client.get("/metrics")

    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = samples(answer.text)
    assert found['stripeline_events{status="pending"}'] == 1
    assert found['stripeline_events{status="processed"}'] == 1
    assert found['stripeline_events{status="failed"}'] == 0
    assert found["stripeline_events_received"] == 2
    assert found['stripeline_webhooks_total{outcome="accepted",reason=""}'] == 2
    assert found['stripeline_webhooks_total{outcome="rejected",reason="signature"}'] == 1
    assert "stripeline_oldest_pending_age_seconds" in found
