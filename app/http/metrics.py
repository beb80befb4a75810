"""GET /metrics in Prometheus text: this process's counters, gauges read from the stores at
scrape time, and the metrics each worker pushes through the database (app/worker/metrics.py).

The answer never waits long on a store and never fails for one: with PostgreSQL down it still
carries this process's counters and `stripeline_database_up 0`. Every metric is described
in the README ("Metrics") with example alert rules.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from stripeline.outages import STORE_DOWN
from stripeline.store import event_log

# `_created` series double the output and no alert needs them.
disable_created_metrics()

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# A scrape waits at most this long for each store (Prometheus' default timeout is 10 s).
STORE_TIMEOUT_SECONDS = 2.0
# A worker that has not pushed for this long is gone: its metrics are left out.
WORKER_STALE_SECONDS = 60

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


# Members per segment (also the counts of GET /api/segments).
COUNT_MEMBERS = "SELECT segment, count(*) AS members FROM segment_memberships GROUP BY segment"

# Undelivered segment webhooks: still being tried, or given up (next_attempt_at = infinity).
OUTBOX_SUMMARY = """
SELECT count(*) FILTER (WHERE next_attempt_at < 'infinity') AS waiting,
       count(*) FILTER (WHERE next_attempt_at = 'infinity') AS given_up,
       min(created_at) FILTER (WHERE next_attempt_at < 'infinity') AS oldest_waiting_at
FROM outbox
"""

WORKER_PUSHES = "SELECT worker, pushed_at, metrics FROM worker_metrics ORDER BY worker"


class WebMetrics:
    """The web process's own metrics; they live as long as the process (Prometheus expects resets)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.webhooks = Counter(
            "stripeline_webhooks",
            "Webhook deliveries answered by this process: accepted (a new event stored), duplicate, "
            "rejected (4xx, by reason) or unavailable (503, Stripe retries).",
            ["outcome", "reason"],
            registry=self.registry,
        )
        self.webhook_seconds = Histogram(
            "stripeline_webhook_duration_seconds",
            "Time from a webhook's arrival to its answer: verified, stored and enqueued for 200s.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ingest_batch = Histogram(
            "stripeline_ingest_batch_events",
            "Events stored by one INSERT of the web process (concurrent webhooks share one).",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        ProcessCollector(namespace="stripeline_web", registry=self.registry)

    def webhook_answered(self, outcome: str, started: float, reason: str = "") -> None:
        self.webhooks.labels(outcome, reason).inc()
        self.webhook_seconds.observe(time.perf_counter() - started)

    def observe_ingest(self, accepted: int, new: int) -> None:
        """Called by the Ingestor for every batch it stored."""
        self.ingest_batch.observe(accepted)


@dataclass
class StoreFacts:
    """What one scrape read from PostgreSQL and Redis; None where a store did not answer."""

    counts: dict[str, int] | None = None
    summary: Any = None
    outbox: Any = None
    segments: dict[str, int] = field(default_factory=dict)
    workers: list[Any] = field(default_factory=list)
    queue_depth: int | None = None


async def _read_database(conn: asyncpg.Connection, facts: StoreFacts) -> None:
    facts.counts = await event_log.count_by_status(conn)
    facts.summary = await conn.fetchrow(event_log.SYNC_SUMMARY)
    facts.outbox = await conn.fetchrow(OUTBOX_SUMMARY)
    facts.segments = {row["segment"]: row["members"] for row in await conn.fetch(COUNT_MEMBERS)}
    facts.workers = await conn.fetch(WORKER_PUSHES)


async def read_stores(state: Any) -> StoreFacts:
    facts = StoreFacts()
    try:
        async with asyncio.timeout(STORE_TIMEOUT_SECONDS):
            async with state.pool.acquire() as conn:
                await _read_database(conn, facts)
    except STORE_DOWN:
        facts.counts = None
    try:
        async with asyncio.timeout(STORE_TIMEOUT_SECONDS):
            facts.queue_depth = await state.redis.zcard(state.settings.queue_name)
    except Exception:  # noqa: BLE001 - any Redis failure means "down" here
        facts.queue_depth = None
    return facts


def _gauge(name: str, documentation: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def _age(now: datetime, then: datetime | None) -> float:
    return max((now - then).total_seconds(), 0.0) if then else 0.0


def store_families(facts: StoreFacts) -> Iterator[Metric]:
    yield _gauge(
        "stripeline_database_up", "1 when PostgreSQL answered this scrape, else 0.", int(facts.counts is not None)
    )
    yield _gauge(
        "stripeline_redis_up", "1 when Redis answered this scrape, else 0.", int(facts.queue_depth is not None)
    )
    if facts.queue_depth is not None:
        yield _gauge(
            "stripeline_queue_depth",
            "Jobs waiting in the arq queue (each names one or more events).",
            facts.queue_depth,
        )
    if facts.counts is None:
        return
    now = facts.summary["now"]
    by_status = GaugeMetricFamily("stripeline_events", "Stored Stripe events by processing status.", labels=["status"])
    for status in ("pending", "processed", "ignored", "failed"):
        by_status.add_metric([status], facts.counts.get(status, 0))
    yield by_status
    yield _gauge("stripeline_events_received", "Unique Stripe events stored.", sum(facts.counts.values()))
    yield _gauge(
        "stripeline_oldest_pending_age_seconds",
        "Age of the oldest event waiting to be processed (0: none).",
        _age(now, facts.summary["oldest_pending_at"]),
    )
    last = facts.summary["last_event_at"]
    if last is not None:
        yield _gauge(
            "stripeline_last_event_received_timestamp_seconds",
            "When the latest event was stored (Unix time).",
            last.timestamp(),
        )
    outbox = GaugeMetricFamily(
        "stripeline_outbox_depth",
        "Segment webhooks not yet delivered: waiting (being tried) or given_up (after about three days of failures).",
        labels=["state"],
    )
    outbox.add_metric(["waiting"], facts.outbox["waiting"])
    outbox.add_metric(["given_up"], facts.outbox["given_up"])
    yield outbox
    yield _gauge(
        "stripeline_outbox_oldest_age_seconds",
        "Age of the oldest segment webhook still being tried (0: none).",
        _age(now, facts.outbox["oldest_waiting_at"]),
    )
    sizes = GaugeMetricFamily(
        "stripeline_segment_customers", "Customers in each lifecycle segment.", labels=["segment"]
    )
    for segment, members in sorted(facts.segments.items()):
        sizes.add_metric([segment], members)
    yield sizes
    yield from worker_families(facts.workers, now)


def worker_families(rows: Iterable[Any], now: datetime) -> Iterator[Metric]:
    """The metrics workers pushed, each sample labelled with its worker; stale pushes left out."""
    merged: dict[str, Metric] = {}
    fresh = 0
    last_refresh = 0.0
    push_age = GaugeMetricFamily(
        "stripeline_worker_push_age_seconds",
        "Seconds since each live worker last pushed its metrics (every 10 s).",
        labels=["worker"],
    )
    for row in rows:
        age = _age(now, row["pushed_at"])
        for family in row["metrics"]:
            if family["name"] == "stripeline_worker_segment_refresh_last_success_timestamp_seconds":
                # A worker that is gone still did the last refresh it did.
                last_refresh = max([last_refresh, *(sample[2] for sample in family["samples"])])
        if age > WORKER_STALE_SECONDS:
            continue
        fresh += 1
        push_age.add_metric([row["worker"]], age)
        for family in row["metrics"]:
            metric = merged.get(family["name"])
            if metric is None:
                metric = merged[family["name"]] = Metric(family["name"], family["documentation"], family["type"])
            for name, labels, value in family["samples"]:
                metric.add_sample(name, {**labels, "worker": row["worker"]}, value)
    yield _gauge("stripeline_workers", "Workers that pushed their metrics in the last minute.", fresh)
    yield push_age
    if last_refresh:
        yield _gauge(
            "stripeline_segment_refresh_age_seconds",
            "Seconds since a worker last finished the scheduled "
            "segment refresh (it runs every STRIPELINE_SEGMENT_REFRESH_SECONDS).",
            now.timestamp() - last_refresh,
        )
    yield from merged.values()


@dataclass
class _Exposition:
    """What generate_latest renders: the process's registry, then this scrape's families."""

    registry: CollectorRegistry
    families: list[Metric]

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()
        yield from self.families


async def render(state: Any) -> bytes:
    facts = await read_stores(state)
    return generate_latest(_Exposition(state.metrics.registry, list(store_families(facts))))
