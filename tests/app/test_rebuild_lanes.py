"""`stripeline replay --rebuild` with each lane in a process of its own (app/processing/lanes.py).

Every test runs the installed command, as a user would, and compares the model with the one
live processing built in Stripe order (`process_live`); an interrupted or killed rebuild is
finished by the next `stripeline replay`, each remaining event applied once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from stripeline.model.locks import customer_lock_key
from stripeline.processing import replay as replay_module
from stripeline.processing.engine import REBUILD, Batch, Engine, crc32_lane_of
from stripeline.store import event_log
from tests.app.replay_helpers import derived_state, generated_history, stripeline, stripeline_process, summary_lines
from tests.app.test_replay import behind_the_lane_cursors, process_live, statuses, store
from tests.factories import event, new_id, price_object, subscription_object


def lane_processes(parent: int, how: dict[int, str] | None = None) -> dict[int, int]:
    """{lane: pid} of the lane processes `parent` runs now; `how` gets how each was started:
    "command" (`--lane N` in its argv) or "forked" (named import-lane-N, app/processing/lanes.py)."""
    try:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    except (FileNotFoundError, ProcessLookupError):  # gone, or going (ESRCH while it exits)
        return {}
    lanes = {}
    for child in children:
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().decode().split("\0")
            name = Path(f"/proc/{child}/comm").read_text().strip()
        except (FileNotFoundError, ProcessLookupError):  # a lane that ended between the two reads
            continue
        if "--lane" in argv:
            lane, started = int(argv[argv.index("--lane") + 1]), "command"
        elif name.startswith("import-lane-"):
            lane, started = int(name.removeprefix("import-lane-")), "forked"
        else:
            continue
        lanes[lane] = int(child)
        if how is not None:
            how[lane] = started
    return lanes


def alive(pid: int) -> bool:
    """Whether the process runs (not gone, not a zombie waiting for its reaper)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def rebuilt_so_far(conn) -> int | None:
    return await conn.fetchval("SELECT events_done FROM replay_rebuilds")


async def until(condition, timeout: float = 30) -> None:
    """Wait until `condition()` (a value, or a coroutine's) is true."""
    deadline = time.monotonic() + timeout
    while not (await value if asyncio.iscoroutine(value := condition()) else value):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def watched_to_its_end(running, conn, connections_query: str | None = None, how: dict[int, str] | None = None):
    """Follow a command to its end: ({lane: pid} of every lane process seen, the most PostgreSQL
    connections `connections_query` counted at once, its stdout, its stderr); `how` gets how
    each lane was started (`lane_processes`)."""
    seen: dict[int, int] = {}
    peak = 0
    while running.poll() is None:
        seen |= lane_processes(running.pid, how)
        if connections_query is not None:
            peak = max(peak, await conn.fetchval(connections_query))
        await asyncio.sleep(0.005)
    out, err = running.communicate(timeout=30)
    return seen, peak, out, err


def signal_as_a_user_would(running, lanes: dict[int, int], sig: int, whom: str, times: int) -> None:
    """`sig`, `times` over: to the command's process group (a terminal's Ctrl-C goes to its
    foreground group), to the command alone, or to lane 1 alone."""
    for _ in range(times):
        if whom == "group":
            os.killpg(running.pid, sig)
        elif whom == "command":
            running.send_signal(sig)
        else:
            os.kill(lanes[1], sig)


async def stopped_cleanly(running, lanes: dict[int, int]) -> None:
    """The command ended as stopped (130, its summary says so, no traceback), its lanes with it."""
    out, err = await asyncio.to_thread(running.communicate, timeout=30)
    assert running.returncode == 130, err
    [summary] = summary_lines(out)
    assert summary.endswith("(interrupted: run it again to continue)")
    assert "Traceback" not in err.decode()
    assert not any(alive(pid) for pid in lanes.values())


async def history_and_live_model(pool, conn, settings, registry, seed: int, customers: int = 60):
    records = await store(pool, generated_history(seed=seed, customers=customers))
    await process_live(pool, settings, records, registry)
    return records, await derived_state(conn)


async def hold_the_last_customer_of_each_lane(pool, conn, records):
    """Take, on a connection of its own, the advisory lock of the customer that comes last (by its
    first event) in each lane, so that each lane's process waits there, mid-rebuild, however fast
    it runs; release it with `pg_advisory_unlock_all` and return the connection."""
    lane_of = {row["customer_id"]: row["lane"] for row in await conn.fetch(
        f"SELECT DISTINCT customer_id, {replay_module.LANE_OF_EVENT.format(lanes='$1::int')} AS lane"
        " FROM stripe_events WHERE customer_id IS NOT NULL", replay_module.REBUILD_LANES)}
    first_seen: dict[str, tuple] = {}
    for r in sorted(records, key=lambda r: (r.created, r.id)):
        if r.customer_id in lane_of:
            first_seen.setdefault(r.customer_id, (r.created, r.id))
    last = {lane_of[c]: c for c in sorted(first_seen, key=first_seen.__getitem__)}
    assert sorted(last) == list(range(replay_module.REBUILD_LANES))
    holder = await pool.acquire()
    await holder.execute(f"SELECT pg_advisory_lock({customer_lock_key('c')}) FROM unnest($1::text[]) AS c",
                         list(last.values()))
    return holder


async def rebuild_under_way(pool, conn, settings, registry, db_url, seed: int, new_group: bool = False):
    """A history, its live model, and the installed command's rebuild of it once both of its lane
    processes committed a batch and wait at a customer the test holds (one event per batch):
    (records, live model, the command's process, {lane: pid}, release), where `release()` lets the
    lanes go on."""
    records, live = await history_and_live_model(pool, conn, settings, registry, seed=seed, customers=40)
    holder = await hold_the_last_customer_of_each_lane(pool, conn, records)
    running = stripeline_process("replay", "--rebuild", "--batch-size", "1", env={"DATABASE_URL": db_url},
                                 new_group=new_group)
    lanes: dict[int, int] = {}

    async def both_lanes_committed_and_wait() -> bool:
        lanes.update(lane_processes(running.pid))
        marker = await conn.fetchrow("SELECT lane_after_id FROM replay_rebuilds")
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
        return len(lanes) == 2 and marker is not None and None not in marker["lane_after_id"] and waiting == 2

    async def release() -> None:
        await holder.execute("SELECT pg_advisory_unlock_all()")
        await pool.release(holder)

    await until(both_lanes_committed_and_wait)
    return records, live, running, lanes, release


async def a_rerun_applies_the_rest_once(conn, db_url, records, live) -> None:
    """The interrupted rebuild's lanes stand at their last committed batches; `stripeline
    replay` finishes it, applying each remaining event once, and the model is the live one."""
    behind = await behind_the_lane_cursors(conn, records)
    assert await rebuilt_so_far(conn) == len(behind) < len(records)
    await a_rerun_finishes(conn, db_url, ["replay"], "resuming the rebuild", len(records) - len(behind), live)


async def a_rerun_finishes(conn, db_url, command: list[str], says: str, remaining: int, live) -> None:
    """`stripeline COMMAND` finishes the pending rebuild, saying `says`: it applies (or skips)
    exactly the `remaining` events, and the model is the live one."""
    rerun = await asyncio.to_thread(stripeline, *command, env={"DATABASE_URL": db_url})
    assert rerun.returncode == 0, rerun.stderr
    assert says in rerun.stderr.decode()
    [summary] = summary_lines(rerun.stdout)
    applied, skipped = (int(summary.split()[i].replace(",", "")) for i in (1, 3))
    assert applied + skipped == remaining
    assert await derived_state(conn) == live
    assert await event_log.rebuild_status(conn) is None


async def test_the_installed_rebuild_runs_each_lane_in_a_process_and_reaches_the_live_model(
    pool, conn, settings, registry, db_url
):
    records, live = await history_and_live_model(pool, conn, settings, registry, seed=31)
    live_statuses = await statuses(conn)
    ignored = sum(1 for status in live_statuses.values() if status == "ignored")

    running = stripeline_process("replay", "--rebuild", "--batch-size", "5", env={"DATABASE_URL": db_url})
    seen, _, out, err = await watched_to_its_end(running, conn)

    assert running.returncode == 0, err
    assert sorted(seen) == list(range(replay_module.REBUILD_LANES))
    assert not any(alive(pid) for pid in seen.values())
    [summary] = summary_lines(out)
    assert summary.startswith(f"replay: {len(records) - ignored:,} applied, {ignored:,} skipped, 0 failed in ")
    assert await derived_state(conn) == live
    assert await statuses(conn) == live_statuses
    assert await event_log.rebuild_status(conn) is None


async def test_failed_events_of_every_lane_are_named_and_counted_in_one_summary(pool, conn, db_url):
    # Subscriptions in a status this release does not know: the table's CHECK refuses them.
    customers = [new_id("cus") for _ in range(12)]
    odd = [event("customer.subscription.updated",
                  subscription_object(customer, [(price_object(), 1)], status="pending_activation"))
           for customer in customers]
    await store(pool, odd)
    lanes_hit = {row["lane"] for row in await conn.fetch(
        f"SELECT {replay_module.LANE_OF_EVENT.format(lanes='$1::int')} AS lane FROM stripe_events",
        replay_module.REBUILD_LANES)}
    assert len(lanes_hit) == replay_module.REBUILD_LANES

    done = await asyncio.to_thread(stripeline, "replay", "--rebuild", "--batch-size", "4",
                                   env={"DATABASE_URL": db_url})

    assert done.returncode == 1, done.stderr
    [summary] = summary_lines(done.stdout)
    assert summary.startswith(f"replay: 0 applied, 0 skipped, {len(odd)} failed in ")
    named = [line for line in done.stderr.decode().splitlines() if line.startswith("replay: failed: ")]
    assert len(named) == 10 and all("CheckViolationError" in line for line in named)  # FAILURES_SHOWN
    assert "more events failed; the summary counts them all" in done.stderr.decode()
    assert await conn.fetchval("SELECT count(*) FROM stripe_events WHERE status = 'failed'") == len(odd)


async def test_a_killed_lane_process_stops_the_rebuild_and_a_rerun_applies_the_rest_once(
    pool, conn, settings, registry, db_url
):
    records, live, running, lanes, release = await rebuild_under_way(pool, conn, settings, registry, db_url,
                                                                     seed=32)
    os.kill(lanes[1], signal.SIGKILL)
    await release()
    out, err = await asyncio.to_thread(running.communicate, timeout=30)

    # The first failure of a lane stops the rebuild, with one line saying what to do.
    assert running.returncode == 1, err
    assert ("stripeline replay: rebuild lane 1 ended unexpectedly (killed by SIGKILL); "
            "run `stripeline replay` to finish the rebuild") in err.decode()
    [summary] = summary_lines(out)
    assert summary.startswith("replay: ")
    await until(lambda: not alive(lanes[0]), timeout=10)
    await a_rerun_applies_the_rest_once(conn, db_url, records, live)


async def test_a_killed_parent_takes_its_lane_processes_with_it_and_a_rerun_finishes(
    pool, conn, settings, registry, db_url
):
    records, live, running, lanes, release = await rebuild_under_way(pool, conn, settings, registry, db_url,
                                                                     seed=33)
    running.kill()
    running.communicate(timeout=30)
    await release()

    # Their socket to the parent closed: each rolls its open batch back and exits.
    await until(lambda: not any(alive(pid) for pid in lanes.values()), timeout=10)
    await until(lambda: conn.fetchval("SELECT count(*) = 0 FROM pg_stat_activity WHERE datname = current_database()"
                                      " AND application_name = 'stripeline replay'"), timeout=10)
    await a_rerun_applies_the_rest_once(conn, db_url, records, live)


@pytest.mark.parametrize("sig, whom, times", [(signal.SIGINT, "group", 1), (signal.SIGTERM, "command", 1),
                                              (signal.SIGINT, "group", 2), (signal.SIGTERM, "lane", 1)],
                         ids=["ctrl-c-to-the-group", "sigterm-to-the-command", "ctrl-c-twice-aborts",
                              "sigterm-to-one-lane"])
async def test_a_signal_stops_every_lane_cleanly_and_a_rerun_finishes(
    pool, conn, settings, registry, db_url, sig, whom, times
):
    records, live, running, lanes, release = await rebuild_under_way(pool, conn, settings, registry, db_url,
                                                                     seed=34, new_group=True)
    # A second Ctrl-C at once aborts the open batches (they roll back); one that came after the
    # stop had ended would find the command on its way out.
    signal_as_a_user_would(running, lanes, sig, whom, times)  # a lane stopped alone stops the others too
    await release()
    await stopped_cleanly(running, lanes)
    await a_rerun_applies_the_rest_once(conn, db_url, records, live)


SAMPLE_CONNECTIONS = """
SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'stripeline replay'
"""


@pytest.mark.parametrize("pool_size", [3, 4])
async def test_the_command_and_its_lane_processes_keep_to_one_commands_connections(
    pool, conn, settings, registry, db_url, pool_size
):
    records, live = await history_and_live_model(pool, conn, settings, registry, seed=35, customers=40)
    running = stripeline_process("replay", "--rebuild", "--batch-size", "1",
                                 env={"DATABASE_URL": db_url, "STRIPELINE_DB_POOL_SIZE": str(pool_size)})
    lanes, peak, out, err = await watched_to_its_end(running, conn, SAMPLE_CONNECTIONS)

    assert running.returncode == 0, err
    assert len(lanes) == replay_module.REBUILD_LANES  # the lanes had processes even so
    assert 1 + replay_module.REBUILD_LANES <= peak <= pool_size
    assert await derived_state(conn) == live


async def test_a_rebuild_interrupted_on_crc32_lanes_finishes_in_the_command_itself(
    pool, conn, settings, registry, db_url
):
    records, live = await history_and_live_model(pool, conn, settings, registry, seed=36)
    # As the previous version leaves an interrupted rebuild: tables wiped, each crc32 lane's
    # events applied up to its cursor, the marker without a lane hash.
    await conn.execute(replay_module.WIPE_DERIVED)
    cursors = [records[len(records) // 3], records[2 * len(records) // 3]]
    applied = [r for r in records
               if (r.created, r.id) <= (cursors[crc32_lane_of(r.customer_id, 2)].created,
                                        cursors[crc32_lane_of(r.customer_id, 2)].id)]
    engine = Engine(pool, settings, registry)
    for start in range(0, len(applied), 50):
        part = applied[start:start + 50]
        await engine.run(Batch.read(part, ["processed"] * len(part)), REBUILD)
    await conn.execute(
        "INSERT INTO replay_rebuilds (through_received_at, events_done, events_total, lane_after_created,"
        " lane_after_id) VALUES (now(), $1, $2, $3, $4)",
        len(applied), len(records), [c.created for c in cursors], [c.id for c in cursors])

    await a_rerun_finishes(conn, db_url, ["replay", "--rebuild"],
                           "started by an older version: its lanes finish in this process",
                           len(records) - len(applied), live)


async def test_the_internal_lane_option_refuses_to_run_without_its_parent(db_url):
    done = await asyncio.to_thread(stripeline, "replay", "--lane", "0", env={"DATABASE_URL": db_url})
    assert done.returncode == 2
    assert done.stderr.decode().strip() == (
        "stripeline replay: --lane is internal: `stripeline replay --rebuild` starts the lanes of a rebuild itself"
    )
