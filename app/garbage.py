"""Tuning of CPython's cyclic garbage collector for our long-running processes.

Every process here allocates containers by the hundred thousand that reference counting
frees on its own: decoded event payloads, row snapshots, request objects. At the default
gen-0 threshold (700 allocations) those allocations trigger hundreds of collections a second,
and each older-generation pass also walks everything imported at start. Measured: the web
process spent 45 µs per webhook collecting (bench/ingest.py), `replay --rebuild` about 15%
of its CPU (bench/replay.py). Cycles are still collected, only less often.
"""

from __future__ import annotations

import gc

# Allocations between gen-0 passes. 10,000 was enough for the web process; a replay batch
# decodes a thousand payloads of a hundred objects each, and 50,000 measured best there.
GEN0_THRESHOLD = 50_000


def quiet_garbage_collector() -> None:
    """Move what is alive now out of the collector's sight and collect far less often."""
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, 10, 10)
