"""The `stripeline` command. Each subcommand reads the settings once and hands them down.

A problem the user can fix (a missing variable, a bad argument, an unreachable database)
ends the command with one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from app.logging import configure_logging
from app.settings import ConfigError, Settings


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from app.db import connect
    from app.migrate import migrate

    settings.require("DATABASE_URL")

    async def run() -> int:
        conn = await connect(settings.database_url)
        try:
            applied = await migrate(conn)
        finally:
            await conn.close()
        print(f"migrations: {len(applied)} applied, schema up to date")
        return 0

    return asyncio.run(run())


def _web(args: argparse.Namespace, settings: Settings) -> int:
    import signal

    import uvicorn

    from app.garbage import quiet_garbage_collector
    from app.http_limits import LimitedHttpToolsProtocol
    from app.web import create_app

    settings.require("DATABASE_URL", "REDIS_URL", "STRIPE_WEBHOOK_SECRET", "STRIPELINE_API_TOKEN")
    app = create_app(settings)
    quiet_garbage_collector()
    # uvicorn re-raises the SIGTERM it handled once it has shut down; the default handler would
    # then kill the process (exit 143) after a clean stop. Ours exits 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    uvicorn.run(
        app,
        host=args.host,
        port=args.port or settings.port,
        log_level=settings.log_level,
        # Our logging (app.logging) renders uvicorn's lines too, as JSON by default.
        log_config=None,
        access_log=False,
        http=LimitedHttpToolsProtocol,  # 431 for a request head over 32 KiB
        proxy_headers=settings.forwarded_allow_ips is not None,
        forwarded_allow_ips=settings.forwarded_allow_ips or "",
        timeout_graceful_shutdown=20,  # in-flight requests finish; Heroku kills after 30 s
    )
    return 0


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from app.worker import main

    settings.require("DATABASE_URL", "REDIS_URL")
    main(settings)
    return 0


def _dev(args: argparse.Namespace, settings: Settings) -> int:
    from app.dev import run_dev

    return run_dev(settings, port=args.port or settings.port)


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from app.replay import replay_command

    return replay_command(args, settings)


def _import(args: argparse.Namespace, settings: Settings) -> int:
    from app.replay import import_command

    return import_command(args, settings)


def _backfill(args: argparse.Namespace, settings: Settings) -> int:
    from app.backfill import backfill_command

    return backfill_command(args, settings)


def _erase(args: argparse.Namespace, settings: Settings) -> int:
    from app.erase import erase_command

    return erase_command(args, settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stripeline", description="Self-hosted Stripe webhook processor.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("migrate", help="apply the SQL migrations (idempotent)").set_defaults(run=_migrate)

    web = commands.add_parser("web", help="serve webhooks and the API")
    web.add_argument("--host", default="0.0.0.0")
    web.add_argument("--port", type=int, default=None, help="default: $PORT or 8000")
    web.set_defaults(run=_web)

    commands.add_parser("worker", help="process events and run periodic jobs").set_defaults(run=_worker)

    dev = commands.add_parser("dev", help="migrate, web and worker together, with embedded servers if needed")
    dev.add_argument("--port", type=int, default=None)
    dev.set_defaults(run=_dev)

    replay = commands.add_parser("replay", help="re-apply stored events in Stripe order")
    replay.add_argument("--since", help="ISO time: events created at or after it")
    replay.add_argument("--until", help="ISO time: events created before it")
    replay.add_argument("--type", dest="type_pattern", help="event type glob, e.g. 'invoice.*'")
    replay.add_argument("--customer", help="only this customer's events")
    replay.add_argument("--rebuild", action="store_true", help="wipe Stripe-derived state first")
    replay.add_argument("--batch-size", type=int, default=1000, help="events per transaction, 1-2000 (default 1000)")
    replay.set_defaults(run=_replay)

    load = commands.add_parser("import", help="store and process a JSON Lines file of Stripe events")
    load.add_argument("file", help="path, or - for standard input")
    load.set_defaults(run=_import)

    backfill = commands.add_parser("backfill", help="pull current objects and recent events from the Stripe API")
    backfill.add_argument("--only-new", action="store_true", help="skip history: start syncing from now")
    backfill.set_defaults(run=_backfill)

    erase = commands.add_parser("erase", help="delete every row the Stripe data source produced")
    erase.add_argument("--yes", action="store_true", help="really delete")
    erase.set_defaults(run=_erase)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        configure_logging(settings)
        code = args.run(args, settings)
    except ConfigError as problem:
        print(f"stripeline: {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stripeline: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        problem = outside_problem(error)
        if problem is None:
            raise
        print(f"stripeline: {problem}", file=sys.stderr)
        return 1
    return code


def outside_problem(error: BaseException) -> str | None:
    """One line for a problem the user can fix outside our code (a server down, a wrong URL,
    a missing file), or None for anything else, which keeps its traceback."""
    import asyncpg
    from redis.exceptions import ConnectionError as RedisConnectionError

    refusals = (
        asyncpg.InvalidAuthorizationSpecificationError,  # unknown role, wrong password
        asyncpg.InvalidCatalogNameError,  # no such database
        asyncpg.CannotConnectNowError,  # starting up or shutting down
        asyncpg.TooManyConnectionsError,
    )
    if isinstance(error, RedisConnectionError):
        return f"cannot connect to Redis: {error}"
    if isinstance(error, refusals):
        return f"cannot connect to PostgreSQL: {error}"
    if isinstance(error, OSError) and error.filename:
        return f"{error.strerror or type(error).__name__}: {error.filename}"
    if isinstance(error, OSError):
        return f"cannot connect: {error.strerror or error}"
    return None


if __name__ == "__main__":
    sys.exit(main())
