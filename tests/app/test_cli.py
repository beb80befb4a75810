"""The `stripeline` command as a platform runs it: exit codes and one-line errors on stderr."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import pytest

from stripeline.commands.import_file import FORK_LANES_BYTES
from stripeline.store.migrate import load_migrations
from tests.services import closed_port, unreachable_postgres, unreachable_redis, with_database


def stripeline_command() -> list[str]:
    """The installed console script (or the module, when it is not installed)."""
    script = shutil.which("stripeline", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "stripeline"]


def stripeline(*args: str, env: dict[str, str], cwd: str = "/") -> subprocess.CompletedProcess:
    """Run the installed console script from outside the source tree, with only `env` set."""
    command = stripeline_command()
    base = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/")}
    return subprocess.run(
        [*command, *args], env={**base, **env}, cwd=cwd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


CONFIGURED = {
    "DATABASE_URL": "postgres://u@127.0.0.1:1/d",
    "REDIS_URL": "redis://127.0.0.1:1",
    "STRIPE_WEBHOOK_SECRET": "whsec_x",
    "STRIPELINE_API_TOKEN": "t",
}


@pytest.mark.parametrize(
    "command, missing",
    [("migrate", "DATABASE_URL"), ("worker", "REDIS_URL"), ("web", "STRIPE_WEBHOOK_SECRET"), ("web", "STRIPELINE_API_TOKEN")],
)
def test_missing_required_variable_stops_with_one_line_naming_it(command, missing):
    env = {k: v for k, v in CONFIGURED.items() if k != missing}
    result = stripeline(command, env=env)
    assert result.returncode == 2
    assert error_lines(result) == [f"stripeline: {missing} is required but not set"]


@pytest.mark.parametrize("command", ["migrate", "worker", "web"])
@pytest.mark.parametrize(
    "name, value", [("STRIPELINE_WEBHOOK_TOLERANCE", "5m"), ("DATABASE_URL", "mysql://u@h/d"), ("REDIS_URL", "redis://h:port")]
)
def test_malformed_variable_stops_with_one_line_naming_it(command, name, value):
    result = stripeline(command, env={**CONFIGURED, name: value})
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1 and name in lines[0]


def test_migrate_with_postgres_unreachable_says_so_in_one_line():
    result = stripeline("migrate", env={"DATABASE_URL": unreachable_postgres()})
    assert result.returncode == 1
    assert len(error_lines(result)) == 1 and "cannot connect" in result.stderr


def test_worker_with_redis_unreachable_waits_for_it_says_so_once_and_stops_cleanly(db_url):
    import signal

    from tests.app.test_dev import wait_until

    env = {"DATABASE_URL": db_url, "REDIS_URL": unreachable_redis(), "PATH": os.environ.get("PATH", "")}
    worker = subprocess.Popen([*stripeline_command(), "worker"], env=env, cwd="/", stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[dict] = []
    try:
        def said_unavailable() -> bool:
            lines.append(json.loads(worker.stdout.readline() or "{}"))
            return lines[-1].get("event") == "dependency_unavailable"

        wait_until(said_unavailable)
        time.sleep(1.5)  # polls keep failing meanwhile: no more lines, no exit
        assert worker.poll() is None
    finally:
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=30)
    lines += [json.loads(line) for line in out.splitlines() if line.strip()]
    events = [line["event"] for line in lines if line]
    assert events == ["worker_started", "dependency_unavailable", "worker_stopping", "worker_stopped"]
    assert worker.returncode == 0 and err == ""


@pytest.fixture
def empty_db_url(service_urls):
    admin_url, _ = service_urls
    name = f"stripeline_cli_{os.getpid()}_{uuid.uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    yield with_database(admin_url, name)
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_migrate_from_any_directory_applies_everything_once(empty_db_url, tmp_path):
    url = empty_db_url.replace("postgresql://", "postgres://", 1)
    first = stripeline("migrate", env={"DATABASE_URL": url}, cwd=str(tmp_path))
    second = stripeline("migrate", env={"DATABASE_URL": url}, cwd=str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert f"migrations: {len(load_migrations())} applied" in first.stdout
    assert second.returncode == 0 and "migrations: 0 applied" in second.stdout


def test_web_and_library_lines_are_json_on_stdout_with_nothing_on_stderr(db_url, redis_url):
    """A log drain gets one format: uvicorn's own lines are rendered like ours."""
    import httpx

    from tests.app.test_dev import wait_until
    from tests.services import closed_port

    command = stripeline_command()
    port = closed_port()
    env = {**CONFIGURED, "DATABASE_URL": db_url, "REDIS_URL": redis_url, "PORT": str(port),
           "PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/")}
    server = subprocess.Popen([*command, "web"], env=env, cwd="/", stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200)
    finally:
        server.terminate()
        out, err = server.communicate(timeout=30)
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert any(line.get("logger", "").startswith("uvicorn") for line in lines)
    assert all({"event", "level", "timestamp"} <= set(line) for line in lines)
    assert err.strip() == ""



def test_every_command_help_shows_an_example_and_the_variables_it_needs(capsys):
    from stripeline.commands.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == {"migrate", "web", "worker", "dev", "replay", "import", "backfill", "erase", "healthcheck"}
    for name, command in commands.items():
        text = command.format_help()
        assert f"stripeline {name}" in text.split("example:")[1], name
        assert "environment:" in text, name
    overview = parser.format_help()
    assert "example:" in overview and "DATABASE_URL" in overview


# --- connection errors name the service --------------------------------------------------------


@pytest.mark.parametrize("command", [["migrate"], ["replay"], ["erase", "--yes"], ["import", "-"]])
def test_an_unreachable_postgres_is_named_with_its_address_in_one_line(command):
    url = unreachable_postgres()
    port = url.split(":")[-1].split("/")[0]
    result = stripeline(*command, env={"DATABASE_URL": url})
    assert result.returncode == 1
    assert error_lines(result) == [f"stripeline: cannot connect to PostgreSQL at 127.0.0.1:{port}: connection refused"]


def test_an_unreachable_postgres_is_told_once_by_an_import_that_forks_its_lanes(tmp_path):
    # A file of FORK_LANES_BYTES or more has its lanes forked before the command connects; they
    # connect only once it sends them events, so the failure is the command's one line.
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"id": "evt_1", "object": "event"}\n' * (FORK_LANES_BYTES // 30))
    url = unreachable_postgres()
    port = url.split(":")[-1].split("/")[0]
    result = stripeline("import", str(path), env={"DATABASE_URL": url})
    assert result.returncode == 1
    assert error_lines(result) == [f"stripeline: cannot connect to PostgreSQL at 127.0.0.1:{port}: connection refused"]


def test_console_logs_written_to_a_file_carry_no_colour_codes(empty_db_url):
    result = stripeline("migrate", env={"DATABASE_URL": empty_db_url, "LOG_FORMAT": "console"})
    assert result.returncode == 0, result.stderr
    assert "migration_applied" in result.stdout and "\x1b[" not in result.stdout + result.stderr


# --- the dev instance ------------------------------------------------------------------------


def _dev_instance(where: Path, pid: int, **urls: str) -> None:
    (where / ".stripeline").mkdir(parents=True, exist_ok=True)
    instance = {"pid": pid, "home": str(where / ".stripeline"), **urls}
    (where / ".stripeline" / "dev-instance.json").write_text(json.dumps(instance))


def test_a_command_run_beside_a_running_dev_instance_uses_its_servers_and_says_so(db_url, redis_url, tmp_path):
    # This test's own process stands in for the running `stripeline dev`.
    _dev_instance(tmp_path, os.getpid(), DATABASE_URL=db_url, REDIS_URL=redis_url)
    result = stripeline("migrate", env={}, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "migrations: 0 applied" in result.stdout
    assert error_lines(result) == [
        f"stripeline: DATABASE_URL and REDIS_URL not set: using the dev instance in {tmp_path / '.stripeline'}"
        f" (`stripeline dev`, pid {os.getpid()})"
    ]
    chosen = stripeline("migrate", env={"DATABASE_URL": unreachable_postgres()}, cwd=str(tmp_path))
    assert "cannot connect to PostgreSQL" in chosen.stderr  # a URL that is set always wins


def test_a_stopped_dev_instance_is_not_used_and_the_error_says_how_to_start_it(db_url, tmp_path):
    stopped = subprocess.Popen(["true"])
    stopped.wait()
    _dev_instance(tmp_path, stopped.pid, DATABASE_URL=db_url)
    (tmp_path / ".stripeline" / "postgres").mkdir()
    result = stripeline("replay", env={}, cwd=str(tmp_path))
    assert result.returncode == 2
    assert error_lines(result) == [
        f"stripeline: DATABASE_URL is required but not set (the dev instance in {(tmp_path / '.stripeline').resolve()}"
        " is not running: start it with `stripeline dev`)"
    ]


# --- healthcheck -------------------------------------------------------------------------------


def test_healthcheck_fails_in_one_line_when_the_web_does_not_answer():
    port = closed_port()
    result = stripeline("healthcheck", env={"PORT": str(port)})
    assert result.returncode == 1
    [line] = error_lines(result)
    assert line.startswith(f"stripeline healthcheck: http://127.0.0.1:{port}/healthz: ")


@pytest.mark.parametrize(
    "init, checks_the_web",
    [
        (b"/opt/stripeline/bin/python\0/opt/stripeline/bin/stripeline\0web\0", True),
        (b"/opt/stripeline/bin/python\0/opt/stripeline/bin/stripeline\0worker\0", False),
        (b"/sbin/docker-init\0--\0sh\0", True),
    ],
)
def test_healthcheck_checks_the_web_only_in_a_container_started_as_the_web(tmp_path, init, checks_the_web):
    from stripeline.commands.cli import _container_runs_web

    (tmp_path / "cmdline").write_bytes(init)
    assert _container_runs_web(tmp_path / "cmdline") is checks_the_web
