"""The web process: verify, store, enqueue, answer. All other work happens in the worker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from app import api, events, metrics
from app.db import create_pool
from app.ingest import Ingestor, StoreUnavailable
from app.logging import log
from app.queue import redis_pool
from app.responses import JSONResponse, error
from app.settings import Settings
from app.signature import SignatureError, verify

MAX_BODY_BYTES = 1024 * 1024


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """Read the raw body, refusing as soon as it passes `limit` (never buffering more)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge()
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


async def receive_webhook(request: Request) -> Response:
    state = request.app.state
    settings: Settings = state.settings
    try:
        body = await read_body(request)
    except BodyTooLarge:
        state.counters.webhooks_rejected += 1
        return error(413, f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        verify(body, request.headers.get("stripe-signature"), settings.webhook_secrets, settings.webhook_tolerance)
        event = events.parse_event(body)
    except (SignatureError, events.InvalidEvent) as refused:
        state.counters.webhooks_rejected += 1
        log.info("webhook_refused", reason=str(refused))
        return error(400, str(refused))
    try:
        duplicate = await state.ingestor.submit(event)
    except StoreUnavailable:
        return error(503, "event store unavailable, retry later")
    except events.InvalidEvent as refused:
        state.counters.webhooks_rejected += 1
        return error(400, str(refused))
    # Debug: a line per webhook at info costs measurable throughput; the Ingestor logs a
    # periodic summary at info instead.
    log.debug("webhook_received", event_id=event.id, event_type=event.type, duplicate=duplicate)
    return JSONResponse({"received": True, "duplicate": duplicate})


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    state = request.app.state
    failed = {}
    try:
        async with asyncio.timeout(2):
            async with state.pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
    except Exception as problem:  # noqa: BLE001 - any failure means not ready
        failed["postgres"] = type(problem).__name__
    try:
        async with asyncio.timeout(2):
            await state.redis.ping()
    except Exception as problem:  # noqa: BLE001
        failed["redis"] = type(problem).__name__
    if failed:
        return JSONResponse({"status": "unavailable", "failed": failed}, status_code=503)
    return JSONResponse({"status": "ready"})


async def metrics_endpoint(request: Request) -> Response:
    state = request.app.state
    try:
        async with state.pool.acquire() as conn:
            counts = await events.count_by_status(conn)
            summary = await conn.fetchrow(events.SYNC_SUMMARY)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError):
        return error(503, "database unavailable")
    oldest = summary["oldest_pending_at"]
    age = (summary["now"] - oldest).total_seconds() if oldest else 0.0
    return PlainTextResponse(metrics.render(counts, age, state.counters), media_type="text/plain; version=0.0.4")


def create_app(settings: Settings, *, pool: asyncpg.Pool | None = None, redis=None) -> Starlette:
    """The ASGI app. Tests pass their own pool and Redis; otherwise the lifespan opens them."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state = app.state
        state.pool = pool or await _open_pool(settings)
        state.redis = redis or redis_pool(settings.redis_url)
        state.ingestor = Ingestor(state.pool, state.redis, settings.queue_name, metrics=state.counters)
        await state.ingestor.start()
        try:
            yield
        finally:
            await state.ingestor.stop()
            if redis is None:
                await state.redis.aclose()
            if pool is None:
                await state.pool.close()

    app = Starlette(
        routes=[
            Route("/webhooks/stripe", receive_webhook, methods=["POST"]),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
            *api.routes(),
        ],
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.counters = metrics.IngestCounters()
    return app


async def _open_pool(settings: Settings) -> asyncpg.Pool:
    # min_size=0: the web process starts even while PostgreSQL is down, and answers 503
    # to webhooks (Stripe retries) until it is back.
    return await create_pool(settings.database_url, min_size=0, max_size=10)
