"""JSON answers: ISO 8601 UTC timestamps, clear error messages, and the one place errors become answers.

Routes raise; `ErrorAnswers` maps what they raise for the whole app: bad input is a 4xx that
says what to fix, a dependency that is really down is a 503 that says to retry, and anything
else (a bug) is logged with its traceback and answered 500 without one. No answer ever
carries a traceback or a value from a database message.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import asyncpg
import orjson
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stripeline.logging import log
from stripeline.outages import blames_content, dependency_of, is_connection_lost, is_outage

# Seconds a client should wait before retrying a 503 (Stripe retries on its own schedule).
RETRY_AFTER_SECONDS = 5

LOGGED_PATH_CHARS = 200


class BadInput(Exception):
    """The request is malformed; the message says how (answered 400)."""

    status = 400


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z, the one timestamp form in our JSON."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    text = value.astimezone(timezone.utc).isoformat()
    return text.replace("+00:00", "Z")


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    raise TypeError


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        # orjson writes datetimes itself, as +00:00; pass them through `iso` for one form.
        try:
            return orjson.dumps(content, default=_default, option=orjson.OPT_PASSTHROUGH_DATETIME)
        except orjson.JSONEncodeError:
            # orjson stops at 254 levels of nesting; events stored before ingest refused deeper
            # ones (stripeline.model.events.MAX_DEPTH) must still be shown, so the standard library writes them.
            return json.dumps(content, default=_default, ensure_ascii=False, separators=(",", ":")).encode()


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def answer_for(problem: Exception) -> tuple[int, str]:
    """The status and message for an error a route raised."""
    if isinstance(problem, BadInput):
        return problem.status, str(problem)
    if is_outage(problem):
        service = "database" if dependency_of(problem) == "postgres" else "queue (Redis)"
        return 503, f"{service} unavailable, retry later"
    if blames_content(problem):
        if isinstance(problem, asyncpg.PostgresError):
            # Never the message: PostgreSQL quotes the offending value, which may be personal data.
            conflict = (problem.sqlstate or "").startswith("23")
            status = 409 if conflict else 400
            what = "conflicts with stored data" if conflict else "holds a value the database cannot store"
            return status, f"the request {what} (SQLSTATE {problem.sqlstate})"
        return 400, "the request holds a value that cannot be stored"
    return 500, "internal error; the server log has the details"


class ErrorAnswers:
    """ASGI middleware: the app's one exception handler (see the module docstring).

    A GET whose database connection died under it (a terminated backend, a restart) is run
    once more, on a fresh connection, before anything is answered.
    """

    def __init__(self, app: ASGIApp, report_outage: Callable[[Exception], None] | None = None) -> None:
        self.app = app
        self.report_outage = report_outage

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        retries = 1 if scope["method"] in ("GET", "HEAD") else 0
        while True:
            try:
                return await self.app(scope, receive, tracking_send)
            except ClientDisconnect:
                return
            except Exception as problem:  # noqa: BLE001 - this is the handler
                if started:
                    log.error("response_broken_off", path=scope["path"], error=type(problem).__name__, exc_info=True)
                    return
                if retries and is_connection_lost(problem):
                    retries -= 1
                    # Its idle siblings most likely died with it: the retry gets new ones.
                    pool = getattr(scope.get("app") and scope["app"].state, "pool", None)
                    if pool is not None:
                        await pool.expire_connections()
                    continue
                status, message = answer_for(problem)
                self._log(scope, problem, status)
                headers = {"retry-after": str(RETRY_AFTER_SECONDS)} if status == 503 else None
                return await error(status, message, headers)(scope, receive, send)

    def _log(self, scope: Scope, problem: Exception, status: int) -> None:
        if status == 503:
            if self.report_outage is not None:
                self.report_outage(problem)  # one line per outage, not one per request
        elif status >= 500:
            log.error("request_failed", path=_logged_path(scope), error=type(problem).__name__, exc_info=True)
        else:
            log.debug("request_refused", path=_logged_path(scope), status=status, error=type(problem).__name__)


def _logged_path(scope: Scope) -> str:
    """The path as a log shows it: a hostile one (up to the 32 KiB head limit) is cut short."""
    path = scope["path"]
    return path if len(path) <= LOGGED_PATH_CHARS else path[:LOGGED_PATH_CHARS] + "..."
