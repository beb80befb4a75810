"""Event counts kept by triggers (sql/0006_event_counts.sql) agree with counting the log."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from stripeline.model import events
from stripeline.store import event_log
from tests.factories import ping_event

STATUSES = ("pending", "processed", "ignored", "failed")
COUNT_THE_LOG = "SELECT status, count(*) AS n FROM stripe_events GROUP BY status"


async def counted_by_scan(conn) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    for row in await conn.fetch(COUNT_THE_LOG):
        counts[row["status"]] = row["n"]
    return counts


async def store(conn, ids: list[str]) -> None:
    await event_log.insert_events(conn, [events.event_from_payload(ping_event(id=i)) for i in ids])


ids = st.sampled_from([f"evt_{n}" for n in range(12)])
operations = st.lists(
    st.one_of(
        st.tuples(st.just("store"), st.lists(ids, max_size=6)),
        st.tuples(st.just("set"), st.lists(ids, max_size=6), st.sampled_from(STATUSES)),
        st.tuples(st.just("touch"), st.lists(ids, max_size=6)),
        st.tuples(st.just("delete"), st.lists(ids, max_size=4)),
        st.tuples(st.just("rolled back"), st.lists(ids, max_size=6)),
        st.tuples(st.just("fold")),
    ),
    max_size=25,
)


@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(steps=operations)
async def test_counts_equal_a_scan_after_any_inserts_status_changes_deletes_and_folds(conn, steps):
    await conn.execute("TRUNCATE stripe_events")
    for step in steps:
        kind, chosen = step[0], sorted(set(step[1])) if len(step) > 1 else []
        if kind == "store":
            await store(conn, chosen)  # repeats are skipped, as duplicates are
        elif kind == "set":
            await conn.execute("UPDATE stripe_events SET status = $2 WHERE id = ANY($1::text[])", chosen, step[2])
        elif kind == "touch":  # a payload rewrite (anonymize) changes no status
            await conn.execute("UPDATE stripe_events SET payload = payload WHERE id = ANY($1::text[])", chosen)
        elif kind == "delete":
            await conn.execute("DELETE FROM stripe_events WHERE id = ANY($1::text[])", chosen)
        elif kind == "rolled back":
            tx = conn.transaction()
            await tx.start()
            await store(conn, [f"{i}_gone" for i in chosen])
            await conn.execute("UPDATE stripe_events SET status = 'failed'")
            await tx.rollback()
        else:
            await event_log.fold_counts(conn)
        assert await event_log.count_by_status(conn) == await counted_by_scan(conn)


async def test_counts_stay_exact_while_the_web_stores_and_the_worker_folds_and_finishes(pool, conn):
    async def web() -> None:
        async with pool.acquire() as own:
            for batch in range(40):
                await store(own, [f"evt_{batch}_{n}" for n in range(25)])

    async def worker() -> None:
        async with pool.acquire() as own:
            for _ in range(40):
                async with own.transaction():
                    await own.execute(
                        "UPDATE stripe_events SET status = 'processed' WHERE id IN "
                        "(SELECT id FROM stripe_events WHERE status = 'pending' LIMIT 30 FOR UPDATE SKIP LOCKED)"
                    )
                await event_log.fold_counts(own)
                await asyncio.sleep(0)

    async def folder() -> None:
        async with pool.acquire() as own:
            for _ in range(40):
                await event_log.fold_counts(own)
                await asyncio.sleep(0.001)

    await asyncio.gather(web(), worker(), folder())

    counts = await event_log.count_by_status(conn)
    assert counts == await counted_by_scan(conn)
    assert sum(counts.values()) == 1000
    await event_log.fold_counts(conn)
    assert await conn.fetchval("SELECT count(*) FROM stripe_event_counts") <= len(STATUSES)


async def test_metrics_and_sync_read_the_counts_not_the_log(client, conn):
    await store(conn, ["evt_a", "evt_b", "evt_c"])
    await conn.execute("UPDATE stripe_events SET status = 'processed' WHERE id = 'evt_a'")
    await conn.execute("UPDATE stripe_events SET status = 'failed' WHERE id = 'evt_b'")

    sync = (await client.get("/api/sync")).json()

    assert sync["events"] == {"received": 3, "processed": 1, "ignored": 0, "failed": 1, "pending": 1}
    assert sync["status"] == "failing"
    metrics = (await client.get("/metrics")).text
    assert 'stripeline_events{status="failed"} 1.0' in metrics.splitlines()
    assert "stripeline_events_received 3.0" in metrics.splitlines()
