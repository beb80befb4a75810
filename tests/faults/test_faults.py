"""Nothing acknowledged is lost, and nothing stops, while servers die, freeze and restart.

Real `stripeline web` and two `stripeline worker` processes run against a PostgreSQL cluster
and a redis-server of their own (tests/faults/cluster.py). While a simulated account's events
stream in, each delivered two or three times and out of order, with every unacknowledged one
delivered again as Stripe would, the suite kills Redis, freezes it, SIGKILLs a worker
mid-batch, terminates PostgreSQL's backends and restarts PostgreSQL. Then every event answered
2xx must be stored and processed, none pending or failed, the model equal to processing the
stream once in Stripe order, every process alive, every answer a 200 or a 503, and a SIGTERM
must stop each process with exit code 0.

The default run uses the short profile (about 30 s). The long one (several minutes: a bigger
stream, longer outages, every fault several times) runs with

    STRIPELINE_FAULTS=long .venv/bin/python -m pytest tests/faults
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass

import pytest

from tests.faults.cluster import (
    Cluster,
    Sender,
    check,
    deliveries,
    in_order_state,
    inflict,
    log_excerpt,
    running_cluster,
    wait_until_settled,
)
from tests.servers import Unavailable
from tests.simulation import generate


@dataclass(frozen=True)
class Profile:
    actions: int  # simulated account actions (about three events each)
    rate: float  # deliveries per second
    # (seconds after the stream starts, fault, seconds the server stays down or frozen)
    faults: tuple[tuple[float, str, float], ...]
    settle_seconds: float


SHORT = Profile(
    actions=200,
    rate=100,
    faults=(
        (1.5, "kill_redis", 2.0),
        (4.5, "freeze_redis", 2.0),
        (7.5, "kill_worker", 0.0),
        (9.0, "terminate_backends", 0.0),
        (10.5, "restart_postgres", 2.0),
    ),
    settle_seconds=60,
)
LONG = Profile(
    actions=2000,
    rate=150,
    faults=tuple(
        (10.0 + 6.0 * n, fault, outage)
        for n, (fault, outage) in enumerate(
            [("kill_redis", 5.0), ("freeze_redis", 5.0), ("kill_worker", 0.0), ("terminate_backends", 0.0),
             ("restart_postgres", 4.0)] * 4
        )
    ),
    settle_seconds=180,
)
PROFILE = LONG if os.environ.get("STRIPELINE_FAULTS") == "long" else SHORT


@pytest.fixture
async def cluster(tmp_path):
    try:
        async with running_cluster(tmp_path / "logs", workers=2) as cluster:  # logs kept by pytest
            yield cluster
    except Unavailable as problem:
        pytest.skip(f"cannot run servers of our own here: {problem}")


async def run_faults(cluster: Cluster, schedule, started: float) -> list[str]:
    done = []
    for at, fault, outage in schedule:
        await asyncio.sleep(max(0.0, started + at - time.monotonic()))
        await inflict(cluster, fault, outage)
        done.append(fault)
    return done


async def test_no_acknowledged_event_is_lost_and_nothing_stops_through_every_fault(cluster):
    account = generate(11, PROFILE.actions)
    planned = deliveries(account.events, random.Random(11))
    sender = Sender(cluster.port, rate=PROFILE.rate)
    expected = asyncio.create_task(in_order_state(cluster, account))
    started = time.monotonic()
    deadline = started + len(planned) / PROFILE.rate + PROFILE.settle_seconds
    _, inflicted = await asyncio.gather(
        sender.deliver(planned, deadline), run_faults(cluster, PROFILE.faults, started)
    )
    await wait_until_settled(cluster, timeout=PROFILE.settle_seconds)
    outcome = await check(cluster, account, sender, await expected)

    assert outcome.problems() == [], log_excerpt(cluster)
    assert outcome.acknowledged == outcome.stored == len(account.events)
    assert inflicted == [fault for _, fault, _ in PROFILE.faults]
    # The PostgreSQL restart was noticed: webhooks were answered 503 (and delivered again).
    assert outcome.statuses[503] > 0
    exit_codes = await cluster.stop()
    assert exit_codes == {process.name: 0 for process in cluster.processes}, log_excerpt(cluster)

    for process in cluster.processes:
        lines = process.lines()
        events = [line.get("event") for line in lines]
        # One line when a server goes and one when it is back: never one per event or request.
        outages = sum(1 for line in lines if line.get("event") == "dependency_unavailable")
        assert outages <= 2 * len(PROFILE.faults), (process.name, outages)
        assert "events_not_enqueued" not in events
        assert not [line for line in lines if "Traceback" in str(line)], process.name
    worker_lines = [line for process in cluster.workers for line in process.lines()]
    assert any(line.get("event") == "worker_stopped" and line.get("signal") == "SIGTERM" for line in worker_lines)
