"""The arq queue: Redis connection settings and enqueueing batches of stored events.

A job names stored event ids; the event rows in PostgreSQL are the real guard against
doing work twice. Job ids are deterministic, so the same batch enqueued twice while the
first is still queued becomes one job.
"""

from __future__ import annotations

import hashlib
from urllib.parse import parse_qs, urlparse

from arq.connections import ArqRedis, RedisSettings
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from redis.asyncio import ConnectionPool
from redis.exceptions import NoScriptError

PROCESS_EVENTS = "process_events"


def tls_options(redis_url: str) -> dict[str, object]:
    """Certificate checks for a rediss:// URL, as the URL asks; {} for a plain one.

    Heroku Redis serves TLS with a self-signed certificate, so by default rediss:// encrypts
    without verifying. `?ssl_cert_reqs=required` verifies the certificate (against the system's
    CAs, or `&ssl_ca_certs=/path/to/ca.pem`) and its host name (unless `&ssl_check_hostname=false`).
    """
    parts = urlparse(redis_url)
    if parts.scheme != "rediss":
        return {}
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    cert_reqs = query.get("ssl_cert_reqs", "none")
    check_hostname = query.get("ssl_check_hostname", "true" if cert_reqs == "required" else "false")
    options: dict[str, object] = {
        "ssl_cert_reqs": cert_reqs,
        "ssl_check_hostname": check_hostname.lower() in ("1", "true", "yes"),
    }
    if "ssl_ca_certs" in query:
        options["ssl_ca_certs"] = query["ssl_ca_certs"]
    return options


def redis_settings(redis_url: str) -> RedisSettings:
    """arq settings for a redis://, rediss:// or unix:// URL (see tls_options for rediss://)."""
    settings = RedisSettings.from_dsn(redis_url)
    for name, value in tls_options(redis_url).items():
        setattr(settings, name, value)
    settings.conn_timeout = 2
    settings.conn_retries = 0
    return settings


def redis_pool(redis_url: str) -> ArqRedis:
    """An ArqRedis that connects lazily, so a process starts even while Redis is down."""
    options = {"socket_connect_timeout": 1, "socket_timeout": 2, "max_connections": 32, **tls_options(redis_url)}
    query = parse_qs(urlparse(redis_url).query)
    if "db" in query:  # arq's own DSN form, redis://host:port?db=N
        options["db"] = int(query["db"][0])
    return ArqRedis(connection_pool=ConnectionPool.from_url(redis_url, **options))


def job_id_for(event_ids: list[str]) -> str:
    if len(event_ids) == 1:
        return f"event:{event_ids[0]}"
    digest = hashlib.blake2b(",".join(event_ids).encode(), digest_size=12).hexdigest()
    return f"events:{digest}"


# arq's enqueue_job, in one round trip instead of three (WATCH, EXISTS, MULTI/EXEC): the web
# process enqueues a job per stored batch, and this was a tenth of its CPU. Same keys, same
# job encoding, same rule: a job id still queued or still holding a result is not enqueued.
#
# With ARGV[5] = '1' (the web's fresh events) the events join the queue's open job instead, when
# there is one: the last such job, still queued and not yet claimed by a worker (no in-progress
# key). A worker claims a job in Redis before it claims its events in PostgreSQL, and these
# events were committed before this script ran, so that job's batch will find them: it takes
# every due pending event, not only those it names, and goes on while its batches come out full
# (app/worker/jobs.py). Under load one job then carries many flushes of the web instead of a
# job per flush that mostly found its events done by an earlier batch (nine in ten of them in
# bench/pipeline.py, each costing the worker a Redis claim, an empty transaction and a release).
ENQUEUE_SCRIPT = """
if ARGV[5] == '1' then
    local open = redis.call('get', KEYS[4])
    if open and redis.call('zscore', KEYS[3], open) and redis.call('exists', ARGV[6] .. open) == 0 then
        return 2
    end
end
if redis.call('exists', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('psetex', KEYS[1], ARGV[1], ARGV[2])
redis.call('zadd', KEYS[3], ARGV[3], ARGV[4])
if ARGV[5] == '1' then redis.call('psetex', KEYS[4], ARGV[1], ARGV[4]) end
return 1
"""
ENQUEUE_SHA = hashlib.sha1(ENQUEUE_SCRIPT.encode()).hexdigest()


def open_job_key(queue_name: str) -> str:
    """Where the id of the queue's open job (see ENQUEUE_SCRIPT) is kept."""
    return f"{queue_name}:open-job"


async def enqueue_events(
    redis: ArqRedis,
    queue_name: str,
    event_ids: list[str],
    *,
    defer_seconds: float | None = None,
    job_id: str | None = None,
    join_open_job: bool = False,
) -> bool:
    """Enqueue one `process_events` job for stored events; False if that job id is already queued.

    With `join_open_job` (events stored just now, due at once), the events join the queue's
    open job when there is one, and True is returned: a job will take them.
    """
    if not event_ids:
        return False
    job_id = job_id or job_id_for(event_ids)
    enqueued_at = timestamp_ms()
    score = enqueued_at + round((defer_seconds or 0) * 1000)
    joins = join_open_job and not defer_seconds
    job = serialize_job(PROCESS_EVENTS, (event_ids,), {}, None, enqueued_at, serializer=redis.job_serializer)
    keys = (job_key_prefix + job_id, result_key_prefix + job_id, queue_name, open_job_key(queue_name))
    arguments = (
        score - enqueued_at + redis.expires_extra_ms, job, score, job_id, "1" if joins else "0", in_progress_key_prefix
    )
    try:
        added = await redis.evalsha(ENQUEUE_SHA, len(keys), *keys, *arguments)
    except NoScriptError:
        added = await redis.eval(ENQUEUE_SCRIPT, len(keys), *keys, *arguments)
    return bool(added)
