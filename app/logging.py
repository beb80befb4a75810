"""structlog set up the production way: JSON lines to stdout, context from contextvars.

Log lines carry ids, types and timings only. Never pass an email, a name or a secret.
"""

from __future__ import annotations

import logging
import sys

import orjson
import structlog

from app.settings import Settings


def _dumps(value, **_kwargs) -> str:
    return orjson.dumps(value, default=str).decode()


def configure_logging(settings: Settings) -> None:
    level = logging.getLevelName(settings.log_level.upper())
    renderer = (
        structlog.dev.ConsoleRenderer()
        if settings.log_format == "console"
        else structlog.processors.JSONRenderer(serializer=_dumps)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    # Libraries (uvicorn, arq) log through the standard library; keep their lines on stderr
    # at our level, and silence uvicorn's per-request access lines (we log our own).
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


log = structlog.get_logger("stripeline")
