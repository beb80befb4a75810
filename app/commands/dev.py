"""`stripeline dev`: migrate, then web and worker together in the foreground, for local use.

With no DATABASE_URL / REDIS_URL, embedded PostgreSQL and Redis run with their data under
./.stripeline/. With no STRIPE_WEBHOOK_SECRET / STRIPELINE_API_TOKEN, they are generated once
and kept in ./.stripeline/dev-secrets.json, so they survive restarts. The web and the worker
run as child processes exactly as `stripeline web` and `stripeline worker` do in production.

While it runs, ./.stripeline/dev-instance.json names the servers it started, so that every other
command run from this directory with the URLs unset (`replay`, `import`, `erase`, ...) uses them.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlparse, urlunparse

from stripeline import event_loop
from stripeline.commands.embedded import EmbeddedError, embedded_postgres, embedded_redis
from stripeline.logging import configure_logging
from stripeline.settings import Settings

HOME = Path(".stripeline")
SECRETS_FILE = HOME / "dev-secrets.json"
INSTANCE_FILE = "dev-instance.json"
DEV_DATABASE = "stripeline"
# How long the web and the worker get to finish in-flight work after Ctrl-C.
STOP_GRACE_SECONDS = 10


def say(line: str = "") -> None:
    print(line, flush=True)


def dev_secrets(path: Path = SECRETS_FILE) -> dict[str, str]:
    """The generated webhook secret and API token, created on first use and kept in `path`."""
    if path.exists():
        return json.loads(path.read_text())
    generated = {
        "STRIPE_WEBHOOK_SECRET": f"whsec_{secrets.token_hex(16)}",
        "STRIPELINE_API_TOKEN": secrets.token_urlsafe(24),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # Readable by its owner only: these are credentials, even if only for local use.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump(generated, file, indent=2)
    return generated


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: it exists
    return True


def running_instance(home: Path = HOME) -> dict | None:
    """The servers of the `stripeline dev` running in this directory ({"pid", "home",
    "DATABASE_URL"?, "REDIS_URL"?}), or None when none runs (a crash leaves a stale file)."""
    try:
        instance = json.loads((home / INSTANCE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(instance, dict) or not _alive(instance.get("pid")):
        return None
    return instance


@contextlib.contextmanager
def _announced(home: Path, urls: dict[str, str]):
    """Keep the instance file while dev runs; remove it when dev stops."""
    path = home / INSTANCE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    instance = {"pid": os.getpid(), "home": str(home.resolve()), **urls}
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(instance, indent=2))
    temporary.replace(path)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()


def _with_database(url: str, name: str) -> str:
    return urlunparse(urlparse(url)._replace(path=f"/{name}"))


async def _prepare_database(admin_url: str | None, database_url: str, schema: str) -> int:
    """Create the dev database on the embedded server if needed, then migrate; return how many applied."""
    from stripeline.store.db import connect
    from stripeline.store.migrate import migrate

    if admin_url is not None:
        admin = await connect(admin_url)
        try:
            if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DEV_DATABASE):
                await admin.execute(f'CREATE DATABASE "{DEV_DATABASE}"')  # a constant, not input
        finally:
            await admin.close()
    conn = await connect(database_url, schema=schema, process="migrate")
    try:
        return len(await migrate(conn, schema))
    finally:
        await conn.close()


def _start(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    # A process group of its own: Ctrl-C reaches only us, and we pass it on exactly once
    # (a second SIGINT makes uvicorn skip its graceful shutdown).
    return subprocess.Popen(
        [sys.executable, "-m", "stripeline", *command], env=env, stdin=subprocess.DEVNULL, process_group=0
    )


def _stop(children: dict[str, subprocess.Popen]) -> None:
    """Ask every child still running to stop (SIGINT, as Ctrl-C does), then insist."""
    running = [child for child in children.values() if child.poll() is None]
    for child in running:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for child in running:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _supervise(children: dict[str, subprocess.Popen]) -> int:
    """Wait until Ctrl-C (or SIGTERM, SIGHUP), or until a child exits, which stops the others."""
    try:
        while True:
            for name, child in children.items():
                code = child.poll()
                if code is not None:
                    say(f"stripeline dev: {name} exited with code {code}, stopping")
                    return code or 1
            time.sleep(0.2)
    except KeyboardInterrupt:
        say("\nstripeline dev: stopping")
        return 0
    finally:
        _stop(children)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _banner(port: int, env: dict[str, str], generated: set[str], services: list[str]) -> None:
    url = f"http://localhost:{port}"
    secret = env["STRIPE_WEBHOOK_SECRET"].split(",")[0]
    kept = f" (generated, kept in {SECRETS_FILE})"
    say()
    say("stripeline dev is running")
    for line in services:
        say(f"  {line}")
    say(f"  webhook URL     {url}/webhooks/stripe")
    say(f"  webhook secret  {secret}{kept if 'STRIPE_WEBHOOK_SECRET' in generated else ''}")
    say(f"  API token       {env['STRIPELINE_API_TOKEN']}{kept if 'STRIPELINE_API_TOKEN' in generated else ''}")
    say(f"  dashboard       {url}/dashboard (sign in with the API token)")
    say(f"  sync health     curl -H 'Authorization: Bearer {env['STRIPELINE_API_TOKEN']}' {url}/api/sync")
    say()
    say("  Forward Stripe's test events with the Stripe CLI:")
    say(f"    stripe listen --forward-to localhost:{port}/webhooks/stripe")
    say("  It prints its own signing secret (whsec_...): restart with")
    say("    STRIPE_WEBHOOK_SECRET=<that whsec_> stripeline dev")
    say("  then send events with e.g. `stripe trigger customer.subscription.created`.")
    say()
    say("  Ctrl-C stops everything.")
    say()


def run_dev(settings: Settings, port: int) -> int:
    other = running_instance()
    if other is not None:
        print(
            f"stripeline dev: already running in this directory (pid {other['pid']}); its servers serve"
            " every command run here",
            file=sys.stderr,
        )
        return 1
    env = dict(os.environ)
    env.setdefault("LOG_FORMAT", "console")
    env["PORT"] = str(port)
    services = []
    if "LOG_FORMAT" not in os.environ:
        configure_logging(replace(settings, log_format="console"))
    # SIGINT explicitly: a shell starts background jobs with it ignored. SIGHUP unless nohup'd.
    stop_on = [signal.SIGINT, signal.SIGTERM]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        stop_on.append(signal.SIGHUP)
    previous = {number: signal.signal(number, _raise_interrupt) for number in stop_on}
    try:
        with contextlib.ExitStack() as stack:
            admin_url = None
            started: dict[str, str] = {}
            if settings.database_url:
                services.append("PostgreSQL      DATABASE_URL")
            else:
                say(f"stripeline dev: DATABASE_URL is not set, starting embedded PostgreSQL 16 in {HOME / 'postgres'}")
                admin_url = stack.enter_context(embedded_postgres(HOME / "postgres", announce=say))
                env["DATABASE_URL"] = started["DATABASE_URL"] = _with_database(admin_url, DEV_DATABASE)
                services.append(f"PostgreSQL      {env['DATABASE_URL']} (embedded, data in {HOME / 'postgres'})")
            if settings.redis_url:
                services.append("Redis           REDIS_URL")
            else:
                say(f"stripeline dev: REDIS_URL is not set, starting embedded Redis (valkey) in {HOME / 'redis'}")
                env["REDIS_URL"] = started["REDIS_URL"] = stack.enter_context(embedded_redis(HOME / "redis", persist=True))
                services.append(f"Redis           {env['REDIS_URL']} (embedded, data in {HOME / 'redis'})")
            if started:
                stack.enter_context(_announced(HOME, started))
                services.append(
                    "                other commands run here (replay, import, erase, ...) use these servers"
                )

            generated = set()
            kept = None
            for name in ("STRIPE_WEBHOOK_SECRET", "STRIPELINE_API_TOKEN"):
                if not env.get(name, "").strip():
                    kept = kept or dev_secrets()
                    env[name] = kept[name]
                    generated.add(name)
            # Read the whole environment as the children will, so a mistake shows here, once.
            Settings.from_env(env).require("DATABASE_URL", "REDIS_URL", "STRIPE_WEBHOOK_SECRET", "STRIPELINE_API_TOKEN")

            dev_settings = Settings.from_env(env)
            applied = event_loop.run(_prepare_database(admin_url, env["DATABASE_URL"], dev_settings.schema))
            say(f"stripeline dev: migrations: {applied} applied, schema {dev_settings.schema} up to date")

            children = {
                "web": _start(["web", "--host", "127.0.0.1", "--port", str(port)], env),
                "worker": _start(["worker"], env),
            }
            _banner(port, env, generated, services)
            return _supervise(children)
    except EmbeddedError as problem:
        print(f"stripeline: {problem}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        say("\nstripeline dev: stopped")
        return 130
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
