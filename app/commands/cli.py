"""The `stripeline` command. Each subcommand reads the settings once and hands them down.

A problem the user can fix (a missing variable, a bad argument, an unreachable database)
ends the command with one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import MutableMapping
from pathlib import Path

from stripeline import event_loop
from stripeline.logging import configure_logging
from stripeline.settings import ConfigError, Settings


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from stripeline.store.db import connect
    from stripeline.store.migrate import MigrationError, migrate

    settings.require("DATABASE_URL")

    async def run() -> int:
        conn = await connect(settings.database_url, schema=settings.schema, process="migrate")
        try:
            applied = await migrate(conn, settings.schema)
        except MigrationError as problem:
            print(f"stripeline migrate: {problem}", file=sys.stderr)
            return 1
        finally:
            await conn.close()
        print(f"migrations: {len(applied)} applied, schema {settings.schema} up to date")
        return 0

    return event_loop.run(run())


def web_app():
    """The ASGI app of one web process, built from the environment (uvicorn's factory: with
    WEB_CONCURRENCY above 1 each of uvicorn's processes calls it)."""
    from stripeline.garbage import quiet_garbage_collector
    from stripeline.http.web import create_app

    settings = Settings.from_env()
    configure_logging(settings)
    quiet_garbage_collector()
    return create_app(settings)


def _exit_cleanly(signum, frame) -> None:
    raise SystemExit(0)


def _web(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from stripeline.http.limits import LimitedHttpToolsProtocol

    settings.require("DATABASE_URL", "REDIS_URL", "STRIPE_WEBHOOK_SECRET", "STRIPELINE_API_TOKEN")
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again so that the process
    # would end "killed by SIGTERM"; a platform stopping a dyno expects exit code 0 instead.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(
        "stripeline.commands.cli:web_app",
        factory=True,
        host=args.host,
        port=args.port or settings.port,
        # One asyncio process serves webhooks well; more share the port (uvicorn's supervisor),
        # each with its own pool of STRIPELINE_DB_POOL_SIZE connections.
        workers=settings.web_concurrency,
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
    from stripeline.worker.jobs import main

    settings.require("DATABASE_URL", "REDIS_URL")
    main(settings)
    return 0


def _dev(args: argparse.Namespace, settings: Settings) -> int:
    from stripeline.commands.dev import run_dev

    return run_dev(settings, port=args.port or settings.port)


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from stripeline.commands.replay import replay_command

    return replay_command(args, settings)


def _import(args: argparse.Namespace, settings: Settings) -> int:
    from stripeline.commands.import_file import import_command

    return import_command(args, settings, command=main)  # what its forked lanes run


def _backfill(args: argparse.Namespace, settings: Settings) -> int:
    from stripeline.commands.backfill import backfill_command

    return backfill_command(args, settings)


def _erase(args: argparse.Namespace, settings: Settings) -> int:
    from stripeline.commands.erase import erase_command

    return erase_command(args, settings)


def _healthcheck(args: argparse.Namespace, settings: Settings) -> int:
    """Docker's HEALTHCHECK: the web answers /healthz on $PORT; any other process is alive."""
    import urllib.error
    import urllib.request

    if not _container_runs_web():
        return 0
    url = f"http://127.0.0.1:{settings.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as answer:
            if answer.status == 200:
                return 0
            problem = f"HTTP {answer.status}"
    except (urllib.error.URLError, OSError) as error:
        problem = str(getattr(error, "reason", None) or error)
    print(f"stripeline healthcheck: {url}: {problem}", file=sys.stderr)
    return 1


def _container_runs_web(init_cmdline: Path = Path("/proc/1/cmdline")) -> bool:
    """In a container PID 1 is the process the image was started with: `stripeline web` (the
    image's default), `stripeline worker` or another command. Unknown: treat it as the web."""
    try:
        words = init_cmdline.read_bytes().split(b"\0")
    except OSError:
        return True
    return b"stripeline" not in b" ".join(words) or b"web" in words


def build_parser() -> argparse.ArgumentParser:
    def command(name: str, summary: str, example: str, variables: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=summary,
            description=summary[0].upper() + summary[1:] + ".",
            epilog=f"example:\n  {example}\n\nenvironment:\n  {variables}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    parser = argparse.ArgumentParser(
        prog="stripeline",
        description="Self-hosted Stripe webhook processor: a durable event log, a billing model and lifecycle "
        "segments in PostgreSQL.",
        epilog="example:\n  stripeline dev                      # everything, locally, with embedded servers\n"
        "  stripeline COMMAND --help           # one command's options, example and variables\n\n"
        "environment: DATABASE_URL, REDIS_URL, STRIPE_WEBHOOK_SECRET, STRIPELINE_API_TOKEN and others\n"
        "(see README.md, Configuration); unset URLs in a directory with ./.stripeline use `stripeline dev`'s servers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    command(
        "migrate",
        "apply the SQL migrations (idempotent, safe to run concurrently)",
        "DATABASE_URL=postgres://user:pass@host/db stripeline migrate",
        "DATABASE_URL (required)",
    ).set_defaults(run=_migrate)

    web = command(
        "web",
        "serve webhooks, the API, the dashboard and /metrics",
        "stripeline web --port 8000",
        "DATABASE_URL, REDIS_URL, STRIPE_WEBHOOK_SECRET, STRIPELINE_API_TOKEN (required); PORT, LOG_LEVEL, LOG_FORMAT",
    )
    web.add_argument("--host", default="0.0.0.0", help="interface to listen on (default: all)")
    web.add_argument("--port", type=int, default=None, help="default: $PORT or 8000")
    web.set_defaults(run=_web)

    command(
        "worker",
        "process events, retry failures and run periodic jobs (segment refresh, segment webhooks)",
        "stripeline worker",
        "DATABASE_URL, REDIS_URL (required); STRIPELINE_DELETED_CUSTOMERS, STRIPELINE_SEGMENT_WEBHOOK_URL, LOG_LEVEL",
    ).set_defaults(run=_worker)

    dev = command(
        "dev",
        "migrate, web and worker together, with embedded PostgreSQL and Redis if needed",
        "stripeline dev --port 8000",
        "none required; DATABASE_URL and REDIS_URL to use your own servers, STRIPE_WEBHOOK_SECRET for the Stripe CLI's",
    )
    dev.add_argument("--port", type=int, default=None, help="default: $PORT or 8000")
    dev.set_defaults(run=_dev)

    replay = command(
        "replay",
        "re-apply stored events in Stripe order",
        "stripeline replay --since 2024-05-01 --type 'invoice.*'",
        "DATABASE_URL (required); STRIPELINE_DELETED_CUSTOMERS",
    )
    replay.add_argument("--since", help="ISO time: events created at or after it")
    replay.add_argument("--until", help="ISO time: events created before it")
    replay.add_argument("--type", dest="type_pattern", help="event type glob, e.g. 'invoice.*'")
    replay.add_argument("--customer", help="only this customer's events")
    replay.add_argument("--rebuild", action="store_true", help="wipe Stripe-derived state first")
    replay.add_argument("--batch-size", type=int, default=1000, help="events per transaction, 1-2000 (default 1000)")
    # Internal: `replay --rebuild` starts each lane of the rebuild as `replay --lane N --connections C`.
    replay.add_argument("--lane", type=int, help=argparse.SUPPRESS)
    replay.add_argument("--connections", type=int, default=1, help=argparse.SUPPRESS)
    replay.set_defaults(run=_replay)

    load = command(
        "import",
        "store and process a JSON Lines file of Stripe events",
        "stripe events list --limit 100 > events.json && stripeline import events.json",
        "DATABASE_URL (required); STRIPELINE_DELETED_CUSTOMERS",
    )
    load.add_argument("file", help="path, or - for standard input")
    # Internal: `import FILE` starts each of its apply lanes as `import --lane N -`.
    load.add_argument("--lane", type=int, help=argparse.SUPPRESS)
    load.set_defaults(run=_import)

    backfill = command(
        "backfill",
        "pull current objects and recent events from the Stripe API",
        "STRIPE_API_KEY=rk_live_... stripeline backfill",
        "DATABASE_URL, STRIPE_API_KEY (required; a restricted, read-only key)",
    )
    backfill.add_argument("--only-new", action="store_true", help="skip history: start syncing from now")
    backfill.set_defaults(run=_backfill)

    erase = command(
        "erase",
        "delete every row the Stripe data source produced (attributes and tags included)",
        "stripeline erase --yes",
        "DATABASE_URL (required)",
    )
    erase.add_argument("--yes", action="store_true", help="really delete")
    erase.set_defaults(run=_erase)

    health = command(
        "healthcheck",
        "exit 0 when this container's web process answers /healthz (the Dockerfile's HEALTHCHECK)",
        "stripeline healthcheck --timeout 3",
        "PORT (default 8000)",
    )
    health.add_argument("--timeout", type=float, default=3.0)
    health.set_defaults(run=_healthcheck)
    return parser


# Commands that never use the servers of a dev instance.
WITHOUT_SERVERS = ("dev", "healthcheck")


def reach_dev_instance(env: MutableMapping[str, str], command: str) -> None:
    """With DATABASE_URL or REDIS_URL unset, use the servers a `stripeline dev` running in this
    directory started, and say so in one line. Set in `env` (os.environ): uvicorn's processes
    and the dev's children inherit them."""
    from stripeline.commands.dev import running_instance

    if command in WITHOUT_SERVERS:
        return
    unset = [name for name in ("DATABASE_URL", "REDIS_URL") if not env.get(name, "").strip()]
    instance = running_instance() if unset else None
    if instance is None:
        return
    used = [name for name in unset if instance.get(name)]
    for name in used:
        env[name] = instance[name]
    if used:
        print(
            f"stripeline: {' and '.join(used)} not set: using the dev instance in {instance['home']}"
            f" (`stripeline dev`, pid {instance['pid']})",
            file=sys.stderr,
        )


def _hint(problem: ConfigError) -> str:
    """A required URL is unset where a dev instance keeps its data but is not running: say so."""
    from stripeline.commands.dev import HOME

    text = str(problem)
    if text.endswith("_URL is required but not set") and (HOME / "postgres").is_dir():
        return f"{text} (the dev instance in {HOME.resolve()} is not running: start it with `stripeline dev`)"
    return text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        reach_dev_instance(os.environ, args.command)
        settings = Settings.from_env()
        configure_logging(settings)
        code = args.run(args, settings)
    except ConfigError as problem:
        print(f"stripeline: {_hint(problem)}", file=sys.stderr)
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
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from stripeline.store.db import DatabaseUnreachable

    refusals = (
        asyncpg.InvalidAuthorizationSpecificationError,  # unknown role, wrong password
        asyncpg.InvalidCatalogNameError,  # no such database
        asyncpg.CannotConnectNowError,  # starting up or shutting down
        asyncpg.TooManyConnectionsError,
    )
    if isinstance(error, DatabaseUnreachable):
        return str(error)  # names PostgreSQL and its address
    if isinstance(error, (RedisConnectionError, RedisTimeoutError)):
        return f"cannot connect to Redis: {error}"
    if isinstance(error, refusals):
        return f"cannot connect to PostgreSQL: {error}"
    if isinstance(error, asyncpg.InsufficientPrivilegeError):
        return f"PostgreSQL refused: {error}"
    if isinstance(error, OSError) and error.filename:
        return f"{error.strerror or type(error).__name__}: {error.filename}"
    if isinstance(error, OSError):
        return f"{type(error).__name__}: {error.strerror or error}"
    return None


if __name__ == "__main__":
    sys.exit(main())
