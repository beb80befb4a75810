"""The arq queue: Redis connection settings and enqueueing batches of stored events.

A job names stored event ids; the event rows in PostgreSQL are the real guard against
doing work twice. Job ids are deterministic, so the same batch enqueued twice while the
first is still queued becomes one job.
"""

from __future__ import annotations

import hashlib
from urllib.parse import parse_qs, urlparse

from arq.connections import ArqRedis, RedisSettings
from redis.asyncio import ConnectionPool

PROCESS_EVENTS = "process_events"


def redis_settings(redis_url: str) -> RedisSettings:
    """arq settings for a redis://, rediss:// or unix:// URL.

    Heroku Redis serves TLS with a self-signed certificate, so rediss:// does not verify it.
    """
    settings = RedisSettings.from_dsn(redis_url)
    if urlparse(redis_url).scheme == "rediss":
        settings.ssl_cert_reqs = "none"
    settings.conn_timeout = 2
    settings.conn_retries = 0
    return settings


def redis_pool(redis_url: str) -> ArqRedis:
    """An ArqRedis that connects lazily, so a process starts even while Redis is down."""
    options = {"socket_connect_timeout": 1, "socket_timeout": 2, "max_connections": 32}
    if urlparse(redis_url).scheme == "rediss":
        options["ssl_cert_reqs"] = "none"
    query = parse_qs(urlparse(redis_url).query)
    if "db" in query:  # arq's own DSN form, redis://host:port?db=N
        options["db"] = int(query["db"][0])
    return ArqRedis(connection_pool=ConnectionPool.from_url(redis_url, **options))


def job_id_for(event_ids: list[str]) -> str:
    if len(event_ids) == 1:
        return f"event:{event_ids[0]}"
    digest = hashlib.blake2b(",".join(event_ids).encode(), digest_size=12).hexdigest()
    return f"events:{digest}"


async def enqueue_events(
    redis: ArqRedis, queue_name: str, event_ids: list[str], *, defer_seconds: float | None = None, job_id: str | None = None
) -> None:
    if not event_ids:
        return
    await redis.enqueue_job(
        PROCESS_EVENTS,
        event_ids,
        _job_id=job_id or job_id_for(event_ids),
        _queue_name=queue_name,
        _defer_by=defer_seconds,
    )
