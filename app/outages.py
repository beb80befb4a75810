"""Telling an outage from bad input, and logging each outage once.

PostgreSQL and Redis fail in two ways that call for opposite answers. A server that is down,
restarting, frozen or out of connections will be back: the client should retry (503), the
worker should wait. A value PostgreSQL refuses (SQLSTATE class 22, 23 or 54: a NUL character,
a number out of range, an index row too large) will be refused forever: only the request that
carried it is at fault (4xx), and nothing else must wait for it.

`Dependency` keeps one server's state in one process, so that an outage of any length writes
one line when it starts and one when it ends, with what it cost in between.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Awaitable, Callable
from types import ModuleType

import asyncpg

from stripeline.logging import log

# Data exception, integrity constraint violation, program limit exceeded: the values are at fault.
CONTENT_SQLSTATE_CLASSES = ("22", "23", "54")
# Connection exception, invalid authorization, transaction rollback (serialization, deadlock),
# insufficient resources (too many connections, disk full), operator intervention (shutdown,
# starting up), system error, and no such database: the server, not the request.
OUTAGE_SQLSTATE_CLASSES = ("08", "28", "3D", "40", "53", "57", "58")
# The schema is not there yet (the release phase has not run): come back later.
NOT_MIGRATED = "42P01"



def _redis_errors() -> ModuleType | None:
    """redis-py's exceptions, once something in this process imported redis: a process that
    never did (a command's lane, `migrate`) cannot meet a Redis error, and skips its import
    (a sixth of a command's start-up)."""
    return sys.modules.get("redis.exceptions")

# asyncpg's own "cannot switch to state N; another operation is in progress": a connection the
# server dropped in the middle of an operation (seen during PostgreSQL restarts).
BROKEN_CONNECTION = asyncpg.exceptions._base.InternalClientError

# What reading the stores can raise when PostgreSQL is not there to answer (metrics read at
# scrape time, workers pushing theirs): caught wherever a reading may be skipped for now.
STORE_DOWN = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError)


def blames_content(error: BaseException) -> bool:
    """PostgreSQL (or the driver encoding a value for it) refused the values themselves."""
    if isinstance(error, asyncpg.PostgresError):
        return (error.sqlstate or "")[:2] in CONTENT_SQLSTATE_CLASSES
    # asyncpg's client-side DataError (a value it cannot encode) is a ValueError too.
    return isinstance(error, (ValueError, TypeError))


def is_outage(error: BaseException) -> bool:
    """PostgreSQL or Redis is unreachable, restarting, frozen or full: a retry later may succeed."""
    if isinstance(error, asyncpg.PostgresError):
        sqlstate = error.sqlstate or ""
        return sqlstate[:2] in OUTAGE_SQLSTATE_CLASSES or sqlstate == NOT_MIGRATED
    if isinstance(error, asyncpg.InterfaceError):
        return not isinstance(error, ValueError)  # closed or released connection, closing pool
    redis_errors = _redis_errors()
    if redis_errors is not None:
        if isinstance(error, redis_errors.WatchError):
            # redis-py reports a connection lost during WATCH as a WatchError raised while handling it.
            cause = error.__cause__ or error.__context__
            return cause is not None and is_outage(cause)
        if isinstance(error, (redis_errors.ConnectionError, redis_errors.TimeoutError)):
            return True
    return isinstance(error, (OSError, asyncio.TimeoutError, BROKEN_CONNECTION))


def is_conflict(error: BaseException) -> bool:
    """Two transactions met on the same rows (a deadlock, a serialization failure, a lock not
    available): PostgreSQL is fine and no value is at fault; running the transaction again
    usually succeeds. Counted among outages for an answer (503, Stripe retries), but a worker
    must not take it for PostgreSQL going down."""
    return isinstance(error, (asyncpg.DeadlockDetectedError, asyncpg.SerializationError, asyncpg.LockNotAvailableError))


def is_connection_lost(error: BaseException) -> bool:
    """A connection that was open went away (backend terminated, server restarted).

    Worth one more try on a fresh connection before calling it an outage: the pool replaces
    closed connections, and a restarted server usually answers the next one.
    """
    if isinstance(error, (asyncpg.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError)):
        return not isinstance(error, asyncpg.exceptions.CannotConnectNowError)
    if isinstance(error, asyncpg.InterfaceError):
        return not isinstance(error, ValueError)
    return isinstance(error, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, BROKEN_CONNECTION))


def dependency_of(error: BaseException) -> str:
    """Which server an outage error came from."""
    redis_errors = _redis_errors()
    return "redis" if redis_errors is not None and isinstance(error, redis_errors.RedisError) else "postgres"


async def ping_postgres(pool: asyncpg.Pool, timeout: float = 2) -> None:
    """A probe for Dependency: one round trip through the pool, or an error."""
    async with asyncio.timeout(timeout):
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1")


class Backoff:
    """Exponential delays with jitter, from `first` up to `cap` seconds; `reset` starts over."""

    def __init__(self, first: float = 0.2, cap: float = 5.0) -> None:
        self.first = first
        self.cap = cap
        self.attempts = 0

    def next(self) -> float:
        delay = min(self.cap, self.first * 2**self.attempts)
        self.attempts += 1
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self.attempts = 0


class Dependency:
    """One server as this process sees it: up, or down since when and at what cost.

    `failed` and `answered` are reported by whoever talks to the server. With a `probe`, a
    task checks the server with backoff while it is down, so its return is noticed (and
    logged) even when nothing else would have tried it.
    """

    def __init__(self, name: str, probe: Callable[[], Awaitable[object]] | None = None) -> None:
        self.name = name
        self.probe = probe
        self.down_since: float | None = None
        self.failures = 0
        self.deferred = 0
        self.outages = 0
        self._watch: asyncio.Task | None = None

    @property
    def up(self) -> bool:
        return self.down_since is None

    def failed(self, error: BaseException, *, deferred: int = 0) -> None:
        """Report a failure; `deferred` counts items left for later (events not enqueued, ...)."""
        self.failures += 1
        self.deferred += deferred
        if self.down_since is not None:
            return
        self.down_since = time.monotonic()
        self.outages += 1
        log.warning("dependency_unavailable", dependency=self.name, error=type(error).__name__)
        if self.probe is not None:
            self._watch = asyncio.get_running_loop().create_task(self._probe_until_back())

    def defer(self, count: int) -> None:
        """Count items left for later while the server is known to be down."""
        self.deferred += count

    def answered(self) -> None:
        if self.down_since is None:
            return
        log.info(
            "dependency_available",
            dependency=self.name,
            down_seconds=round(time.monotonic() - self.down_since, 1),
            failures=self.failures,
            deferred=self.deferred,
        )
        self.down_since = None
        self.failures = 0
        self.deferred = 0

    async def _probe_until_back(self) -> None:
        backoff = Backoff()
        while self.down_since is not None:
            await asyncio.sleep(backoff.next())
            try:
                await self.probe()
            except Exception as error:  # noqa: BLE001 - still down, whatever the reason
                self.failures += 1
                if not is_outage(error):
                    log.warning("dependency_probe_failed", dependency=self.name, error=type(error).__name__)
                continue
            self.answered()

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
            self._watch = None
