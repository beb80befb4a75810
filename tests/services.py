"""Where the tests find PostgreSQL and Redis: this machine's servers, or embedded ones.

TEST_DATABASE_URL / TEST_REDIS_URL override; otherwise 127.0.0.1:5432 (user root, database
test) and 127.0.0.1:6379 are used when they answer, and the embedded servers start when not
(or always, with STRIPELINE_TEST_EMBEDDED=1). Embedded data lives under ./.stripeline/, one pair
of servers per pytest-xdist worker process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse, urlunparse

LOCAL_POSTGRES = "postgresql://root@127.0.0.1:5432/test"
LOCAL_REDIS = "redis://127.0.0.1:6379"


def _answers(host: str, port: int) -> bool:
    if os.environ.get("STRIPELINE_TEST_EMBEDDED") == "1":
        return False
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def with_database(url: str, name: str) -> str:
    parts = urlparse(url)
    return urlunparse(parts._replace(path=f"/{name}"))


@contextlib.contextmanager
def running() -> Iterator[tuple[str, str]]:
    postgres = os.environ.get("TEST_DATABASE_URL")
    redis = os.environ.get("TEST_REDIS_URL")
    with contextlib.ExitStack() as stack:
        if not postgres and not _answers("127.0.0.1", 5432):
            with _starting_alone():
                postgres = stack.enter_context(_embedded_postgres())
        if not redis and not _answers("127.0.0.1", 6379):
            with _starting_alone():
                redis = stack.enter_context(_embedded_redis())
        yield postgres or LOCAL_POSTGRES, (redis or LOCAL_REDIS).rstrip("/")


@contextlib.contextmanager
def _starting_alone() -> Iterator[None]:
    """One embedded server starts at a time on this checkout, whichever pytest-xdist worker
    starts it: the first start on a fresh machine sets up files they share, and two at once
    each took a free port the other could take too."""
    Path(".stripeline").mkdir(exist_ok=True)
    with open(".stripeline/test-servers.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _worker_suffix() -> str:
    """Each pytest-xdist worker ("gw0", "gw1", ...) runs servers of its own: two on one data
    directory would fight over it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return f"-{worker}" if worker else ""


@contextlib.contextmanager
def _embedded_postgres() -> Iterator[str]:
    from stripeline.commands.embedded import embedded_postgres

    with embedded_postgres(f".stripeline/test-postgres{_worker_suffix()}") as url:
        yield url


@contextlib.contextmanager
def _embedded_redis() -> Iterator[str]:
    from stripeline.commands.embedded import embedded_redis

    with embedded_redis(f".stripeline/test-redis{_worker_suffix()}") as url:
        yield url


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on: a server that is down."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def unreachable_postgres() -> str:
    return f"postgresql://root@127.0.0.1:{closed_port()}/stripeline"


def unreachable_redis() -> str:
    return f"redis://127.0.0.1:{closed_port()}/0"


@contextlib.asynccontextmanager
async def serving(app, token: str | None = None):
    """An httpx client for `app` with its lifespan running (and the bearer token, if given)."""
    import httpx

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://stripeline.test") as client:
            if token:
                client.headers["authorization"] = f"Bearer {token}"
            yield client
