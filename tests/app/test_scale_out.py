"""Several web and worker processes on one database, as `stripeline web` and `stripeline worker`
run when a platform scales them: the model they reach, and the PostgreSQL connections they hold.
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid

import asyncpg
import httpx

from stripeline.model.events import event_from_payload
from stripeline.settings import DEFAULT_POOL_SIZES
from stripeline.store.event_log import insert_events
from tests.app import deploy_support as deploy
from tests.app.test_cli import stripeline_command
from tests.conftest import API_TOKEN, WEBHOOK_SECRET
from tests.factories import signed
from tests.handlers.billing_support import apply_each, model_state
from tests.handlers.test_writes import _rolled_back
from tests.handlers.truth import mismatches
from tests.services import closed_port
from tests.simulation import generate

COMMAND = " ".join(stripeline_command())


def _env(db_url: str, redis_url: str, port: int, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/"),
        "DATABASE_URL": db_url,
        "REDIS_URL": redis_url,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPELINE_API_TOKEN": API_TOKEN,
        "STRIPELINE_QUEUE": f"stripeline:scale:{uuid.uuid4().hex[:8]}",
        "PORT": str(port),
        **extra,
    }


async def _until_ready(port: int) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(300):
            try:
                if (await client.get(f"http://127.0.0.1:{port}/readyz", timeout=2)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("the web never became ready")


async def _deliver(port: int, payloads: list[dict], senders: int) -> None:
    """Post every payload, signed, from `senders` concurrent clients; each must answer 200."""
    queue: asyncio.Queue = asyncio.Queue()
    for payload in payloads:
        queue.put_nowait(payload)

    async def sender(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            body, headers = signed(queue.get_nowait(), WEBHOOK_SECRET)
            answer = await client.post(f"http://127.0.0.1:{port}/webhooks/stripe", content=body, headers=headers)
            assert answer.status_code == 200, answer.text

    limits = httpx.Limits(max_connections=senders)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        await asyncio.gather(*(sender(client) for _ in range(senders)))


async def _until_processed(conn: asyncpg.Connection, count: int, timeout: float = 60) -> None:
    for _ in range(int(timeout * 10)):
        done = await conn.fetchval("SELECT count(*) FROM stripe_events WHERE status <> 'pending'")
        if done == count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{done} of {count} events processed")


def _stopped_cleanly(processes: list[deploy.Started]) -> dict[str, str]:
    outputs = {}
    for process in processes:
        code, output = process.stop()
        assert code == 0, (process.name, output[-2000:])
        assert "Traceback" not in output, (process.name, output[-2000:])
        outputs[process.name] = output
    return outputs


async def test_two_web_processes_and_two_workers_reach_the_state_of_in_order_processing(
    db_url, redis_url, conn, settings, tmp_path
):
    account = generate(21, 90, new_second=0.3)

    async def in_order():
        await apply_each(conn, settings, account.events)
        return await model_state(conn, account.customers, account.prices, account.products)

    expected = await _rolled_back(conn, in_order)
    assert mismatches(account, expected) == []
    # Stripe's order, some events twice (Stripe retries), delivered by 16 concurrent senders.
    rnd = random.Random(4)
    deliveries = [e for e in account.events for _ in range(rnd.choice((1, 1, 1, 2)))]

    port = closed_port()
    env = _env(db_url, redis_url, port)
    processes = [deploy.start("web", f"{COMMAND} web", {**env, "WEB_CONCURRENCY": "2"}, tmp_path)]
    processes += [deploy.start(f"worker {n}", f"{COMMAND} worker", env, tmp_path) for n in (1, 2)]
    try:
        await _until_ready(port)
        await _deliver(port, deliveries, senders=16)
        await _until_processed(conn, len(account.events))
        state = await model_state(conn, account.customers, account.prices, account.products)
    finally:
        outputs = _stopped_cleanly(processes)
    assert state == expected
    assert outputs["web"].count("Started server process") == 2  # WEB_CONCURRENCY=2: two processes


# The processes' connections (this test's own is `stripeline process`).
SAMPLE_CONNECTIONS = """
SELECT application_name, count(*) AS n FROM pg_stat_activity
WHERE datname = $1 AND application_name IN ('stripeline web', 'stripeline worker', 'stripeline replay')
GROUP BY application_name
"""


async def test_web_worker_and_a_command_stay_within_20_connections_under_load(db_url, redis_url, conn, tmp_path):
    history = generate(22, 150, new_second=0.3).events
    await insert_events(conn, [event_from_payload(e) for e in history])
    live = generate(23, 150, new_second=0.3).events
    database = await conn.fetchval("SELECT current_database()")

    port = closed_port()
    env = _env(db_url, redis_url, port)
    processes = [deploy.start("web", f"{COMMAND} web", env, tmp_path), deploy.start("worker", f"{COMMAND} worker", env, tmp_path)]
    peaks: dict[str, int] = {}
    total_peak = 0
    sampling = True

    async def sample() -> None:
        nonlocal total_peak
        # A connection of its own: the test's `conn` is busy waiting for the events meanwhile.
        own = await asyncpg.connect(db_url)
        try:
            while sampling:
                counts = {row["application_name"]: row["n"] for row in await own.fetch(SAMPLE_CONNECTIONS, database)}
                for name, n in counts.items():
                    peaks[name] = max(peaks.get(name, 0), n)
                total_peak = max(total_peak, sum(counts.values()))
                await asyncio.sleep(0.01)
        finally:
            await own.close()

    sampler = asyncio.create_task(sample())
    try:
        await _until_ready(port)
        # Webhooks from 64 senders while the worker works and a rebuild replays the stored history.
        replay = deploy.start("replay", f"{COMMAND} replay --rebuild --batch-size 20", env, tmp_path)
        processes.append(replay)
        await _deliver(port, live, senders=64)
        code, output = await asyncio.to_thread(replay.wait, 120)
        assert code == 0, output
        await _until_processed(conn, len(history) + len(live))
    finally:
        sampling = False
        await sampler
        _stopped_cleanly(processes)
    assert peaks.keys() >= {"stripeline web", "stripeline worker", "stripeline replay"}
    assert peaks["stripeline web"] <= DEFAULT_POOL_SIZES["web"]
    assert peaks["stripeline worker"] <= DEFAULT_POOL_SIZES["worker"]
    assert peaks["stripeline replay"] <= DEFAULT_POOL_SIZES["command"]
    assert total_peak <= 20, peaks


async def test_a_commands_pool_is_sized_and_named_by_the_settings(db_url, conn):
    from stripeline.settings import Settings
    from stripeline.store.db import open_pool

    settings = Settings.from_env({"DATABASE_URL": db_url, "STRIPELINE_DB_POOL_SIZE": "3"})
    pool = await open_pool(settings, "command", name="replay", min_size=3)
    try:
        assert pool.get_max_size() == 3
        names = await conn.fetch("SELECT application_name FROM pg_stat_activity "
                                 "WHERE application_name = 'stripeline replay' AND datname = current_database()")
        assert len(names) == 3
    finally:
        await pool.close()
