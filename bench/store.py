"""The event log's writes alone: PostgreSQL's CPU per event to store real-sized events, and to mark them done.

Stores the real-sized stream (tests/simulation.py, as the other benches send it) with the
checkout's own `insert_events` (`stripeline.store.event_log`), in batches of --batch events on
one connection, into a freshly migrated database; then marks them processed in batches of 500,
as the worker does; then, where the checkout can (`insert_events(done=True)`), stores them
once more as processed, as an import's batches do. Prints the payload sizes and, for each pass, the backend's CPU per event
(from /proc) and the wall time. --code DIR measures another checkout: its venv's Python runs
this script's measuring part with DIR's code.

    .venv/bin/python bench/store.py                       # 20,000 events, batches of 1,000
    .venv/bin/python bench/store.py --batch 5             # as the web's group commit stores them
    .venv/bin/python bench/store.py --code /work/wt/pre   # the same with another checkout
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MARK_DONE = "UPDATE stripe_events SET status = 'processed', processed_at = now() WHERE id = ANY($1::text[])"


def backend_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(database_url: str, stream: Path, batch: int, rounds: int) -> list[dict]:
    """In the checkout under test's Python: store and mark done, `rounds` times, on an emptied log."""
    import inspect

    import asyncpg

    from stripeline.model.events import parse_event
    from stripeline.store.event_log import insert_events

    records = [parse_event(line) for line in stream.read_bytes().splitlines() if line]
    conn = await asyncpg.connect(database_url, server_settings={"search_path": "stripeline, public"})
    pid = conn.get_server_pid()
    results = []
    try:
        for _ in range(rounds):
            await conn.execute("TRUNCATE stripe_events")
            cpu, started = backend_cpu_seconds(pid), time.perf_counter()
            for start in range(0, len(records), batch):
                await insert_events(conn, records[start : start + batch])
            stored_cpu, stored_wall = backend_cpu_seconds(pid) - cpu, time.perf_counter() - started
            cpu, started = backend_cpu_seconds(pid), time.perf_counter()
            ids = [r.id for r in records]
            for start in range(0, len(ids), 500):
                await conn.execute(MARK_DONE, ids[start : start + 500])
            result = {"events": len(records), "store_cpu": stored_cpu, "store_wall": stored_wall,
                      "done_cpu": backend_cpu_seconds(pid) - cpu, "done_wall": time.perf_counter() - started}
            if "done" in inspect.signature(insert_events).parameters:
                await conn.execute("TRUNCATE stripe_events")
                cpu = backend_cpu_seconds(pid)
                for start in range(0, len(records), batch):
                    await insert_events(conn, records[start : start + batch], done=True)
                result["stored_done_cpu"] = backend_cpu_seconds(pid) - cpu
            results.append(result)
    finally:
        await conn.close()
    return results


async def main(args: argparse.Namespace) -> None:
    from bench.common import (
    bodies_of,
    checkout_of,
    simulated_events,
    size_line,
    stream_in_fresh_database,
)

    checkout = checkout_of(args)
    bodies = bodies_of(simulated_events(args.events, args.customers, args.seed), small=False)
    print(f"checkout under test: {checkout.describe()}")
    print(size_line(bodies))
    async with stream_in_fresh_database(checkout, bodies) as (stream, _, database_url, _):
        done = subprocess.run([str(checkout.python), __file__, "--measure", database_url, str(stream),
                               str(args.batch), str(args.rounds)], cwd=checkout.root, capture_output=True,
                              text=True)
    if done.returncode != 0:
        raise SystemExit(f"measuring with {checkout.root} failed: {done.stderr[-800:]}")
    for result in json.loads(done.stdout):
        events = result["events"]
        print(f"store, batches of {args.batch}: PostgreSQL {1e6 * result['store_cpu'] / events:.1f} µs of CPU per "
              f"event, {events / result['store_wall']:,.0f} events/s; mark done, batches of 500: "
              f"{1e6 * result['done_cpu'] / events:.1f} µs per event"
              + (f"; stored as processed: {1e6 * result['stored_done_cpu'] / events:.1f} µs per event"
                 if "stored_done_cpu" in result else ""))


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--measure":
        sys.path.pop(0)  # the checkout under test's code, from its own venv
        _, _, url, path, size, count = sys.argv
        print(json.dumps(asyncio.run(measure(url, Path(path), int(size), int(count)))))
        sys.exit(0)
    from bench.common import add_common_arguments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=1000, help="events per INSERT (the web's group commit: 4-5)")
    parser.add_argument("--rounds", type=int, default=3)
    add_common_arguments(parser)
    asyncio.run(main(parser.parse_args()))
