"""Soak: a fixed webhook rate for a bounded time, a fault every minute, and what survived.

Starts a PostgreSQL cluster and a redis-server of its own (tests/servers.py), one `stripeline
web` and `--workers` `stripeline worker` processes (tests/faults/cluster.py), and sends a
simulated Stripe account's events as signed webhooks at `--rate` per second for `--minutes`
(some delivered twice, out of order; anything not acknowledged is delivered again, as Stripe
does). Every `--fault-every` seconds it inflicts the next fault of: kill Redis, freeze Redis,
SIGKILL a worker, terminate PostgreSQL's backends, restart PostgreSQL (Redis and PostgreSQL
stay down or frozen for `--outage` seconds). Then it waits for the backlog and prints:

- events sent (webhook deliveries), acknowledged (unique events answered 2xx), processed,
- lost (acknowledged but not stored: must be 0), stuck (still pending: must be 0), failed,
- stale customers against processing the stream once in Stripe order (must be 0),
- processing lag (received to processed): p50, p99 and maximum,
- RSS of the web and each worker at start (after a warm-up), middle and end.

    .venv/bin/python bench/soak.py                 # 10 minutes, 50 webhooks/s
    .venv/bin/python bench/soak.py --minutes 3     # a short one

Exits 1 when anything was lost, stuck, failed or stale, or a process died.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from stripeline.logging import configure_logging  # noqa: E402
from stripeline.settings import Settings  # noqa: E402
from tests.faults.cluster import (  # noqa: E402
    FAULTS,
    Cluster,
    Sender,
    check,
    deliveries,
    in_order_state,
    inflict,
    running_cluster,
    wait_until_settled,
)
from tests.simulation import Account  # noqa: E402

WARM_UP_SECONDS = 15


def stream(deliveries_wanted: int, seed: int) -> Account:
    """An account with enough events for `deliveries_wanted` webhooks (about 1.25 per event)."""
    account = Account(random.Random(seed), int(time.time()) - 30 * 86400)
    while len(account.events) * 1.25 < deliveries_wanted:
        account.act()
    return account


async def rss(cluster: Cluster) -> str:
    """Resident memory of each process (waiting a little for a worker a fault just restarted:
    dead, or only just exec'd, it shows a few kB)."""
    for _ in range(20):
        sizes = {process.name: process.rss_mb() for process in cluster.processes}
        if all(size > 5 for size in sizes.values()):
            break
        await asyncio.sleep(0.5)
    return ", ".join(f"{name} {size:.0f} MB" for name, size in sizes.items())


async def soak(args: argparse.Namespace) -> int:
    configure_logging(Settings(log_level="warning", log_format="console"))  # the in-order pass is chatty
    seconds = args.minutes * 60
    account = stream(int(args.rate * seconds), args.seed)
    planned = deliveries(account.events, random.Random(args.seed), copies=(1, 1, 1, 2))
    sizes = sorted(len(orjson.dumps(e)) for e in account.events)
    print(f"stream: {len(account.events)} events for {len(account.customers)} customers, "
          f"{len(planned)} deliveries at {args.rate:g}/s over {args.minutes:g} min; "
          f"median payload {statistics.median(sizes):.0f} bytes", flush=True)

    samples: dict[str, str] = {}
    log_dir = Path(tempfile.mkdtemp(prefix="stripeline-soak-"))
    async with running_cluster(log_dir, workers=args.workers, log_level="warning") as cluster:
        expected = asyncio.create_task(in_order_state(cluster, account))
        sender = Sender(cluster.port, rate=args.rate, connections=16)
        started = time.monotonic()

        async def faults() -> None:
            for n in range(int(seconds // args.fault_every)):
                await asyncio.sleep(max(0.0, started + (n + 1) * args.fault_every - time.monotonic()))
                if time.monotonic() - started >= seconds:
                    return
                fault = args.faults[n % len(args.faults)]
                print(f"{time.monotonic() - started:6.0f}s  {fault}", flush=True)
                await inflict(cluster, fault, args.outage)

        async def sample() -> None:
            for label, at in (("start", WARM_UP_SECONDS), ("middle", seconds / 2)):
                await asyncio.sleep(max(0.0, started + at - time.monotonic()))
                samples[label] = await rss(cluster)
                print(f"{time.monotonic() - started:6.0f}s  RSS {label}: {samples[label]}", flush=True)

        sampling = asyncio.create_task(sample())
        await asyncio.gather(sender.deliver(planned, started + seconds + args.settle), faults())
        sampling.cancel()
        settled = await wait_until_settled(cluster, timeout=args.settle)
        samples["end"] = await rss(cluster)
        outcome = await check(cluster, account, sender, await expected)
        conn = await cluster.conn()
        try:
            lag = await conn.fetchrow(
                """SELECT count(*) FILTER (WHERE status IN ('processed', 'ignored')) AS processed,
                          percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - received_at)) AS p50,
                          percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - received_at)) AS p99,
                          max(extract(epoch FROM processed_at - received_at)) AS max
                   FROM stripe_events"""
            )
        finally:
            await conn.close()
        exit_codes = await cluster.stop()

    statuses = dict(sorted(outcome.statuses.items()))
    print(f"events sent {sender.sent} (answers {statuses}; 0 = no answer), acknowledged {outcome.acknowledged}, "
          f"processed {lag['processed']} of {outcome.stored} stored")
    print(f"lost {len(outcome.lost)}, stuck {outcome.stuck}, failed {outcome.failed}, "
          f"stale customers {len(outcome.stale_customers)} (stale rows {len(outcome.stale)})")
    print(f"lag: p50 {lag['p50']:.2f} s, p99 {lag['p99']:.2f} s, max {lag['max']:.1f} s; "
          f"backlog cleared {settled:.1f} s after the last delivery")
    for label in ("start", "middle", "end"):
        print(f"RSS {label}: {samples.get(label, 'not sampled')}")
    print(f"exit codes on SIGTERM: {exit_codes}; processes that died: {outcome.dead or 'none'}; logs in {log_dir}")
    bad = outcome.lost or outcome.stuck or outcome.failed or outcome.stale_customers or outcome.dead
    return 1 if bad or set(exit_codes.values()) - {0} else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=float, default=50, help="webhook deliveries per second")
    parser.add_argument("--fault-every", type=float, default=60, help="seconds between faults")
    parser.add_argument("--outage", type=float, default=10, help="seconds Redis or PostgreSQL stays down or frozen")
    parser.add_argument("--faults", type=lambda text: text.split(","), default=list(FAULTS),
                        help=f"comma separated, inflicted in turn (default: {','.join(FAULTS)})")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--settle", type=float, default=180, help="seconds allowed for the backlog at the end")
    parser.add_argument("--seed", type=int, default=1)
    sys.exit(asyncio.run(soak(parser.parse_args())))
