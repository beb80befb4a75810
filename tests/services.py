"""Where the tests find PostgreSQL and Redis: this machine's servers, or embedded ones.

TEST_DATABASE_URL / TEST_REDIS_URL override; otherwise 127.0.0.1:5432 (user root, database
test) and 127.0.0.1:6379 are used when they answer, and the embedded servers start when not
(or always, with STRIPELINE_TEST_EMBEDDED=1). Embedded data lives under ./.stripeline/.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
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
        if not postgres:
            postgres = LOCAL_POSTGRES if _answers("127.0.0.1", 5432) else stack.enter_context(_embedded_postgres())
        if not redis:
            redis = LOCAL_REDIS if _answers("127.0.0.1", 6379) else stack.enter_context(_embedded_redis())
        yield postgres, redis.rstrip("/")


@contextlib.contextmanager
def _embedded_postgres() -> Iterator[str]:
    from stripeline.commands.embedded import embedded_postgres

    with embedded_postgres(".stripeline/test-postgres") as url:
        yield url


@contextlib.contextmanager
def _embedded_redis() -> Iterator[str]:
    from stripeline.commands.embedded import embedded_redis

    with embedded_redis(".stripeline/test-redis") as url:
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
