"""The scheduled settle of MRR and last payment that an import left behind.

An import's batches list their customers in billing_unsettled and the import recomputes them at
its end (handlers/billing.py). One that died first (killed, its lane failed, PostgreSQL went
away) leaves them listed: this cron recomputes them, once no import is connected, so that it
never does an import's work while that import still runs.
"""

from __future__ import annotations

import time
from typing import Any

from stripeline.handlers import billing
from stripeline.logging import log
from stripeline.store.db import application_name

# An import's connections (its command's and its lanes') are named by store.db.application_name.
IMPORT_RUNNING = """
SELECT EXISTS (SELECT FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1)
    OR EXISTS (SELECT FROM replay_rebuilds)
"""


async def settle_billing(ctx: dict[str, Any]) -> dict[str, int]:
    """Recompute the customers left in billing_unsettled, unless an import (or a rebuild, which
    recomputes every customer at its end) is running."""
    started = time.perf_counter()
    async with ctx["pool"].acquire() as conn:
        if await conn.fetchval(IMPORT_RUNNING, application_name("import")):
            return {"skipped": 1}
        settled = await billing.settle_unsettled(conn)
    if settled:
        log.info("billing_settled", customers=settled, duration_ms=round((time.perf_counter() - started) * 1000, 1))
    return {"settled": settled}
