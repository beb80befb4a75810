"""`stripeline import FILE` with its apply lanes in processes of their own (app/processing/lanes.py).

Every test runs the installed command on a chronological file of more than one chunk, as a
user would, and compares the model with the one live processing built in Stripe order; an
import whose lane was killed, or which was stopped or killed itself, is finished by running
the same import again: nothing it stored is lost, each event is applied once.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import subprocess
import sys

import orjson
import pytest

from stripeline.commands.import_file import FORK_LANES_BYTES
from stripeline.model.locks import customer_lock_key
from stripeline.processing.engine import crc32_lane_of
from stripeline.processing.importing import APPLY_LANES, STORE_CHUNK
from stripeline.worker.billing_jobs import settle_billing
from tests.app.replay_helpers import (
    billing_is_settled,
    command_environment,
    derived_state,
    generated_history,
    stripeline,
    stripeline_process,
    summary_lines,
)
from tests.app.test_import import malformed_inside
from tests.app.test_one_model import empty
from tests.app.test_rebuild_lanes import (
    alive,
    lane_processes,
    signal_as_a_user_would,
    stopped_cleanly,
    until,
    watched_to_its_end,
)
from tests.app.test_replay import process_live, statuses, store
from tests.factories import customer_object, event, new_id

CONNECTIONS = """
SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'stripeline import'
"""
WAITING = """
SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


async def live_model_and_file(pool, conn, settings, registry, tmp_path, seed: int, customers: int = 120,
                              newest_first: bool = False):
    """A history (large enough for the import to fork its lanes), its live model (derived tables,
    event statuses), and the history as a chronological JSON Lines file (or newest first); the
    database is left empty for the import."""
    payloads = generated_history(seed=seed, customers=customers)
    records = await store(pool, payloads)
    await process_live(pool, settings, records, registry)
    live = (await derived_state(conn), await statuses(conn))
    await empty(conn)
    path = tmp_path / "events.jsonl"
    ordered = sorted(payloads, key=lambda p: (p["created"], p["id"]), reverse=newest_first)
    path.write_bytes(b"".join(orjson.dumps(p) + b"\n" for p in ordered))
    assert path.stat().st_size >= FORK_LANES_BYTES
    return records, live, path


async def model(conn):
    return await derived_state(conn), await statuses(conn)


async def assert_imported_whole(out: bytes, records, conn, live) -> None:
    """The import's summary counts every event stored, none malformed or failed, and the model is the live one."""
    [summary] = summary_lines(out)
    assert summary.startswith(f"import: {len(records):,} stored, 0 duplicates, 0 malformed, ")
    assert ", 0 failed in " in summary
    assert await model(conn) == live


async def import_held_in_lane_1(pool, conn, db_url, records, path, new_group: bool = False):
    """The installed import of `path` once its lane processes run and lane 1 waits, inside its
    first batch, for customers the test holds (all of lane 1's): (process, {lane: pid}, release)."""
    lane_1 = sorted({r.customer_id for r in records if r.customer_id and crc32_lane_of(r.customer_id, 2) == 1})
    holder = await pool.acquire()
    await holder.execute(f"SELECT pg_advisory_lock({customer_lock_key('c')}) FROM unnest($1::text[]) AS c", lane_1)
    running = stripeline_process("import", str(path), env={"DATABASE_URL": db_url}, new_group=new_group)
    lanes: dict[int, int] = {}

    async def lane_1_waits() -> bool:
        lanes.update(lane_processes(running.pid))
        return len(lanes) == APPLY_LANES and await conn.fetchval(WAITING) == 1

    async def release() -> None:
        await holder.execute("SELECT pg_advisory_unlock_all()")
        await pool.release(holder)

    await until(lane_1_waits)
    return running, lanes, release


async def a_rerun_finishes(conn, db_url, records, path, live) -> None:
    """The same import again: what was stored counts as duplicates, each event still pending is
    applied once, the rest of the file is stored and applied, and the model is the live one."""
    stored_before = await conn.fetchval("SELECT count(*) FROM stripe_events")
    rerun = await asyncio.to_thread(stripeline, "import", str(path), env={"DATABASE_URL": db_url})
    assert rerun.returncode == 0, rerun.stderr
    [summary] = summary_lines(rerun.stdout)
    assert summary.startswith(f"import: {len(records) - stored_before:,} stored, {stored_before:,} duplicates, "
                              "0 malformed, "), summary
    assert await model(conn) == live


@pytest.mark.parametrize(("pool_size", "given"), [(3, "file"), (4, "file"), (4, "stdin")])
async def test_the_installed_import_applies_its_lanes_in_processes_and_reaches_the_live_model(
    pool, conn, settings, registry, db_url, tmp_path, pool_size, given
):
    # Standard input starts its lanes once it turns out longer than a chunk.
    customers = 120 if given == "file" else 240
    records, live, path = await live_model_and_file(pool, conn, settings, registry, tmp_path, seed=41,
                                                    customers=customers)
    assert given == "file" or len(records) > STORE_CHUNK
    env = {"DATABASE_URL": db_url, "STRIPELINE_DB_POOL_SIZE": str(pool_size)}
    how: dict[int, str] = {}
    with path.open("rb") as stdin:
        running = (stripeline_process("import", str(path), env=env) if given == "file"
                   else stripeline_process("import", "-", env=env, stdin=stdin))
        seen, peak, out, err = await watched_to_its_end(running, conn, CONNECTIONS, how)

    assert running.returncode == 0, err
    assert sorted(seen) == list(range(APPLY_LANES))
    # A file (of more than FORK_LANES_BYTES) forks its lanes as the command starts; standard
    # input, of unknown size, starts them as commands once its second chunk comes.
    assert set(how.values()) == {"forked" if given == "file" else "command"}
    assert not any(alive(pid) for pid in seen.values())
    assert peak <= pool_size  # the command's connections, with its lanes' ones
    await assert_imported_whole(out, records, conn, live)


async def test_a_file_newest_first_is_applied_from_the_store_and_ends_the_lanes_it_forked_quietly(
    pool, conn, settings, registry, db_url, tmp_path
):
    # As `stripe events list` prints them: found out in the first chunk, stored whole, then
    # applied in Stripe order by the command itself.
    records, live, path = await live_model_and_file(pool, conn, settings, registry, tmp_path, seed=44, customers=60,
                                                    newest_first=True)
    how: dict[int, str] = {}
    running = stripeline_process("import", str(path), env={"DATABASE_URL": db_url})
    seen, _, out, err = await watched_to_its_end(running, conn, how=how)

    assert running.returncode == 0, err
    assert set(how.values()) == {"forked"}  # forked as it started, then not needed
    assert not any(alive(pid) for pid in seen.values())
    # Nothing said by lanes that had nothing to do: the command's progress alone, no warning.
    assert [line for line in err.decode().splitlines() if not line.startswith("import: ")] == []
    assert b"lane_" not in out
    await assert_imported_whole(out, records, conn, live)


async def test_a_line_malformed_deep_inside_is_reported_by_its_lane_and_skipped(
    pool, conn, settings, registry, db_url, tmp_path
):
    records, live, path = await live_model_and_file(pool, conn, settings, registry, tmp_path, seed=45)
    lines = path.read_bytes().splitlines()
    # Events of a customer of their own, in their place in time: their lane parses them whole.
    at = [len(lines) // 3, 2 * len(lines) // 3]
    bad = [malformed_inside(new_id("cus"), orjson.loads(lines[n])["created"])[k] for k, n in enumerate(at)]
    for k, n in enumerate(at):
        lines.insert(n + k, orjson.dumps(bad[k]))
    path.write_bytes(b"\n".join(lines) + b"\n")
    numbers = [n + k + 1 for k, n in enumerate(at)]
    how: dict[int, str] = {}
    running = stripeline_process("import", str(path), env={"DATABASE_URL": db_url})
    _, _, out, err = await watched_to_its_end(running, conn, how=how)

    assert running.returncode == 1  # data the user meant to load was skipped
    assert set(how.values()) == {"forked"}
    told = err.decode()
    assert f"import: line {numbers[0]}: skipped, event 'default_payment_method' is longer than 255 characters" in told
    assert f"import: line {numbers[1]}: skipped, event is nested more than 64 levels deep" in told
    [summary] = summary_lines(out)
    assert summary.startswith(f"import: {len(records):,} stored, 0 duplicates, 2 malformed, ")
    bad_ids = [e["id"] for e in bad]
    stored = await conn.fetchval("SELECT count(*) FROM stripe_events WHERE id = ANY($1::text[])", bad_ids)
    assert stored == 0
    assert await model(conn) == live


async def test_a_killed_lane_stops_the_import_plainly_and_the_same_import_again_finishes_it(
    pool, conn, settings, registry, db_url, tmp_path
):
    records, live, path = await live_model_and_file(pool, conn, settings, registry, tmp_path, seed=42)
    running, lanes, release = await import_held_in_lane_1(pool, conn, db_url, records, path)
    os.kill(lanes[1], signal.SIGKILL)
    await release()
    out, err = await asyncio.to_thread(running.communicate, timeout=30)

    assert running.returncode == 1, err
    assert ("stripeline import: import lane 1 ended unexpectedly (killed by SIGKILL); run the same import again: "
            "it stores and applies the events that lane had not applied") in err.decode()
    await until(lambda: not alive(lanes[0]), timeout=10)
    # Lane 1 applied none of its events (its open batch rolled back), and the batch that applies
    # an event of a customer stores it: none of them is stored, none half done.
    lane_1 = {r.id for r in records if crc32_lane_of(r.customer_id, 2) == 1}
    stored = {row["id"] for row in await conn.fetch("SELECT id FROM stripe_events")}
    assert lane_1 and not lane_1 & stored
    await a_rerun_finishes(conn, db_url, records, path, live)


async def test_a_killed_import_takes_its_lane_processes_with_it_and_the_same_import_again_finishes_it(
    pool, conn, settings, registry, db_url, tmp_path
):
    records, live, path = await live_model_and_file(pool, conn, settings, registry, tmp_path, seed=43)
    running, lanes, release = await import_held_in_lane_1(pool, conn, db_url, records, path)
    # Lane 0 goes on: its batches leave their customers' MRR for the import's end.
    await until(lambda: conn.fetchval("SELECT count(*) > 0 FROM billing_unsettled"))
    assert await settle_billing({"pool": pool}) == {"skipped": 1}  # the worker leaves them to the import
    running.kill()
    running.communicate(timeout=30)
    await release()

    # Their socket to the parent closed: each rolls its open batch back and exits.
    await until(lambda: not any(alive(pid) for pid in lanes.values()), timeout=10)
    await until(lambda: conn.fetchval(f"SELECT ({CONNECTIONS}) = 0"), timeout=10)
    # The import never reached its end: the worker settles what it applied.
    assert not await billing_is_settled(conn)
    assert (await settle_billing({"pool": pool}))["settled"] > 0
    assert await billing_is_settled(conn)
    await a_rerun_finishes(conn, db_url, records, path, live)


@pytest.mark.parametrize("sig, whom, times", [(signal.SIGINT, "group", 1), (signal.SIGTERM, "command", 1),
                                              (signal.SIGINT, "group", 2), (signal.SIGTERM, "lane", 1)],
                         ids=["ctrl-c-to-the-group", "sigterm-to-the-command", "ctrl-c-twice-aborts",
                              "sigterm-to-one-lane"])
async def test_a_signal_stops_the_import_and_its_lanes_cleanly_and_the_same_import_again_finishes_it(
    pool, conn, settings, registry, db_url, tmp_path, sig, whom, times
):
    records, live, path = await live_model_and_file(pool, conn, settings, registry, tmp_path, seed=44)
    running, lanes, release = await import_held_in_lane_1(pool, conn, db_url, records, path, new_group=True)
    # A second Ctrl-C at once aborts the open batches (they roll back).
    signal_as_a_user_would(running, lanes, sig, whom, times)  # a lane stopped alone stops the import
    await release()
    await stopped_cleanly(running, lanes)
    await a_rerun_finishes(conn, db_url, records, path, live)


async def test_a_lane_whose_parent_dies_with_its_messages_unread_exits(db_url):
    # The parent's end of the socket, as `stripeline import` holds it: a parent that dies with
    # the lane's last messages unread resets the socket rather than ending it (Linux), and the
    # lane must take that as its parent gone too (it used to wait for lines forever).
    ours, theirs = socket.socketpair()
    lane = subprocess.Popen([sys.executable, "-m", "stripeline", "import", "--lane", "0", "-"], stdin=theirs,
                            env=command_environment({"DATABASE_URL": db_url}), start_new_session=True)
    theirs.close()
    try:
        # An event line: its line number in the file (0: none), a space, its JSON text.
        ours.sendall(b"0 " + orjson.dumps(event("customer.created", customer_object())) + b"\napply\n")
        readable, _, _ = await asyncio.to_thread(select.select, [ours], [], [], 30)
        assert readable, "the lane never acknowledged its event"
        ours.close()  # its acknowledgement unread
        assert await asyncio.to_thread(lane.wait, 15) == 130
    finally:
        ours.close()
        if lane.poll() is None:
            lane.kill()
            lane.wait()


async def test_the_internal_lane_option_refuses_to_run_without_its_parent(db_url):
    done = await asyncio.to_thread(stripeline, "import", "--lane", "0", "-", env={"DATABASE_URL": db_url})
    assert done.returncode == 2
    assert done.stderr.decode().strip() == (
        "stripeline import: --lane is internal: `stripeline import FILE` starts its lanes itself"
    )
