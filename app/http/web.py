"""The web process: verify, store, enqueue, answer. All other work happens in the worker."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import asyncpg
import orjson
from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stripeline.http import dashboard, metrics
from stripeline.http.body import WEBHOOK_MAX_BYTES, BodyTooLarge, header, read_body
from stripeline.http.ingest import Ingestor, StoreUnavailable
from stripeline.http.responses import ErrorAnswers, JSONResponse
from stripeline.http.routes import api_routes
from stripeline.logging import log
from stripeline.model import events
from stripeline.outages import Dependency, dependency_of, ping_postgres
from stripeline.settings import Settings
from stripeline.signature import SignatureError, verify
from stripeline.store.db import open_pool
from stripeline.store.queue import redis_pool

JSON_HEADERS = [(b"content-type", b"application/json")]
ACKNOWLEDGED = {
    False: orjson.dumps({"received": True, "duplicate": False}),
    True: orjson.dumps({"received": True, "duplicate": True}),
}


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _refuse(send: Send, status: int, message: str) -> None:
    await _answer(send, status, orjson.dumps({"error": message}))


async def receive_webhook(scope: Scope, receive: Receive, send: Send) -> None:
    """POST /webhooks/stripe: verify, store, enqueue, answer.

    A bare ASGI endpoint rather than a Request/Response one: on this hot path the Request,
    Response and their wrappers showed up plainly in profiles of bench/ingest.py.
    """
    state = scope["app"].state
    settings: Settings = state.settings
    started = time.perf_counter()
    try:
        body = await read_body(scope, receive)
    except BodyTooLarge:
        state.metrics.webhook_answered("rejected", started, "too_large")
        return await _refuse(send, 413, f"body larger than {WEBHOOK_MAX_BYTES} bytes")
    except ClientDisconnect:
        return
    signature = header(scope, b"stripe-signature")
    try:
        verify(body, signature and signature.decode("latin-1"), settings.webhook_secrets, settings.webhook_tolerance)
        event = events.parse_event(body)
        duplicate = await state.ingestor.submit(event)
    except (SignatureError, events.InvalidEvent) as refused:
        state.metrics.webhook_answered(
            "rejected", started, "signature" if isinstance(refused, SignatureError) else "not_an_event"
        )
        log.info("webhook_refused", reason=str(refused))
        return await _refuse(send, 400, str(refused))
    except StoreUnavailable:
        state.metrics.webhook_answered("unavailable", started)
        return await _refuse(send, 503, "event store unavailable, retry later")
    # Debug: a line per webhook at info costs measurable throughput; the Ingestor logs a
    # periodic summary at info instead.
    log.debug("webhook_received", event_id=event.id, event_type=event.type, duplicate=duplicate)
    state.metrics.webhook_answered("duplicate" if duplicate else "accepted", started)
    await _answer(send, 200, ACKNOWLEDGED[duplicate])


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
    """Prometheus text; answers even while PostgreSQL or Redis is down (see app.metrics)."""
    return Response(await metrics.render(request.app.state), media_type=metrics.CONTENT_TYPE)


class NoStore:
    """ASGI middleware: answers under /api/ carry `Cache-Control: no-store` (they hold customer data)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            return await self.app(scope, receive, send)

        async def send_no_store(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"]
                message = {**message, "headers": [*headers, (b"cache-control", b"no-store")]}
            await send(message)

        await self.app(scope, receive, send_no_store)


class ASGIEndpoint:
    """Wraps an ASGI function so that Starlette's Route does not wrap it in Request/Response."""

    def __init__(self, endpoint):
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.endpoint(scope, receive, send)


WEBHOOK_PATH = "/webhooks/stripe"


class Stripeline(Starlette):
    """Starlette, except that a webhook goes straight to its endpoint.

    Every webhook otherwise passed through five layers before `receive_webhook` (Starlette's
    error and exception middleware, ours, the router, the route), each wrapping `send` once
    more. It keeps the one that matters to it: ErrorAnswers, which turns an unexpected failure
    into a JSON answer (NoStore applies under /api/ only). Anything else, a webhook sent with
    another method included, takes the whole stack.
    """

    def __init__(self, *args, report_outage: Callable[[Exception], None], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._webhook = ErrorAnswers(receive_webhook, report_outage=report_outage)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == WEBHOOK_PATH and scope["method"] == "POST":
            scope["app"] = self
            return await self._webhook(scope, receive, send)
        await super().__call__(scope, receive, send)


def create_app(settings: Settings, *, pool: asyncpg.Pool | None = None, redis=None) -> Starlette:
    """The ASGI app. Tests pass their own pool and Redis; otherwise the lifespan opens them."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state = app.state
        state.pool = pool or await _open_pool(settings)
        state.redis = redis or redis_pool(settings.redis_url)
        state.ingestor = Ingestor(
            state.pool,
            state.redis,
            settings.queue_name,
            metrics=state.metrics,
            postgres=state.dependencies["postgres"],
            redis_state=state.dependencies["redis"],
        )
        await state.ingestor.start()
        try:
            yield
        finally:
            await state.ingestor.stop()
            for dependency in state.dependencies.values():
                await dependency.close()
            if redis is None:
                await state.redis.aclose()
            if pool is None:
                await state.pool.close()

    state = State()
    # What this process knows of its servers: each outage is logged once, not once per request.
    state.dependencies = {
        "postgres": Dependency("postgres", probe=lambda: ping_postgres(state.pool)),
        "redis": Dependency("redis", probe=lambda: state.redis.ping()),
    }

    def report_outage(problem: Exception) -> None:
        state.dependencies[dependency_of(problem)].failed(problem)

    app = Stripeline(
        routes=[
            # A class instance, so Starlette calls it as a plain ASGI app (see receive_webhook).
            Route(WEBHOOK_PATH, ASGIEndpoint(receive_webhook), methods=["POST"]),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
            *api_routes(),
            *dashboard.ROUTES,
        ],
        middleware=[Middleware(NoStore), Middleware(ErrorAnswers, report_outage=report_outage)],
        lifespan=lifespan,
        report_outage=report_outage,
    )
    app.state = state
    app.state.settings = settings
    app.state.metrics = metrics.WebMetrics()
    return app


async def _open_pool(settings: Settings) -> asyncpg.Pool:
    # min_size=0: the web process starts even while PostgreSQL is down, and answers 503
    # to webhooks (Stripe retries) until it is back.
    return await open_pool(settings, "web", min_size=0)
