"""structlog set up the production way: JSON lines to stdout, context from contextvars.

Log lines carry ids, types and timings only. Never pass an email, a name or a secret.
"""

from __future__ import annotations

import logging
import sys

import orjson
import structlog

from stripeline.settings import Settings


def _dumps(value, **_kwargs) -> str:
    return orjson.dumps(value, default=str).decode()


def configure_logging(settings: Settings) -> None:
    level = logging.getLevelName(settings.log_level.upper())
    renderer = (
        # Colour codes only for a person at a terminal: a file or a log drain gets plain text.
        structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
        if settings.log_format == "console"
        else structlog.processors.JSONRenderer(serializer=_dumps)
    )
    stamped = [structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True)]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *stamped,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    # Libraries (uvicorn, arq, asyncpg) log through the standard library: render their lines
    # the same way, on the same stream, with the logger's name, so that a log drain gets one
    # format. uvicorn must be started with log_config=None, or it installs its own handlers.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *stamped],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Our own lines say what each webhook and job did; these would repeat it once per request
    # or job (arq logs every job and cron run at info, several times a second under load).
    for chatty in ("uvicorn.access", "arq.worker", "arq.jobs"):
        logging.getLogger(chatty).setLevel(logging.DEBUG if level <= logging.DEBUG else max(level, logging.WARNING))


log = structlog.get_logger("stripeline")
