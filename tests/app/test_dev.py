"""`stripeline dev` as a user runs it: one foreground command, secrets kept, Ctrl-C stops all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from stripeline.signature import sign
from tests.app.deploy_support import long_profile
from tests.app.test_cli import stripeline_command
from tests.factories import body_of, ping_event
from tests.services import closed_port


def start_dev(cwd: Path, env: dict[str, str], port: int) -> subprocess.Popen:
    command = stripeline_command()
    base = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/")}
    return subprocess.Popen(
        [*command, "dev", "--port", str(port)],
        cwd=cwd,
        env={**base, **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_until(check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_dev_serves_processes_and_stops_cleanly_on_ctrl_c(db_url, redis_url, tmp_path):
    port = closed_port()
    dev = start_dev(tmp_path, {"DATABASE_URL": db_url, "REDIS_URL": redis_url, "STRIPELINE_QUEUE": "stripeline:dev-test"}, port)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{base}/readyz").status_code == 200)
        kept = json.loads((tmp_path / ".stripeline" / "dev-secrets.json").read_text())
        assert (tmp_path / ".stripeline" / "dev-secrets.json").stat().st_mode & 0o077 == 0

        payload = ping_event()
        body = body_of(payload)
        headers = {"stripe-signature": sign(body, kept["STRIPE_WEBHOOK_SECRET"])}
        assert httpx.post(f"{base}/webhooks/stripe", content=body, headers=headers).status_code == 200
        token = {"authorization": f"Bearer {kept['STRIPELINE_API_TOKEN']}"}
        shown = wait_until(
            lambda: (e := httpx.get(f"{base}/api/events/{payload['id']}", headers=token).json())["status"] != "pending" and e
        )
        assert shown["status"] == "ignored"  # the worker ran it: no handler for balance.available
    finally:
        dev.send_signal(signal.SIGINT)
        output, _ = dev.communicate(timeout=30)
    assert dev.returncode == 0, output
    assert f"webhook URL     http://localhost:{port}/webhooks/stripe" in output
    assert kept["STRIPE_WEBHOOK_SECRET"] in output and "stripe listen --forward-to" in output
    assert "stripeline dev: stopping" in output
    with httpx.Client() as client:
        try:
            client.get(f"{base}/healthz", timeout=1)
            still_serving = True
        except httpx.ConnectError:
            still_serving = False
    assert not still_serving


def test_dev_secrets_survive_a_restart(tmp_path, monkeypatch):
    from stripeline.commands.dev import dev_secrets

    monkeypatch.chdir(tmp_path)
    first = dev_secrets()
    assert first["STRIPE_WEBHOOK_SECRET"].startswith("whsec_") and first["STRIPELINE_API_TOKEN"]
    assert dev_secrets() == first


@long_profile  # starts embedded PostgreSQL (initdb): a few seconds
def test_other_commands_run_beside_dev_reach_its_embedded_servers(tmp_path):
    from tests.app.test_cli import error_lines, stripeline

    port = closed_port()
    dev = start_dev(tmp_path, {}, port)
    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200, timeout=60)
        migrated = stripeline("migrate", env={}, cwd=str(tmp_path))
        second = stripeline("dev", "--port", str(closed_port()), env={}, cwd=str(tmp_path))
    finally:
        dev.send_signal(signal.SIGINT)
        output, _ = dev.communicate(timeout=30)
    assert migrated.returncode == 0 and "migrations: 0 applied" in migrated.stdout, migrated.stderr
    [line] = error_lines(migrated)
    assert line.startswith("stripeline: DATABASE_URL and REDIS_URL not set: using the dev instance in ")
    assert second.returncode == 1 and "already running in this directory" in second.stderr
    assert dev.returncode == 0, output
    assert "PostgreSQL      postgresql://postgres:@/stripeline?host=" in output
    assert "Redis           redis://127.0.0.1:" in output
    assert "\x1b[" not in output  # not a terminal: no colour codes
    assert not (tmp_path / ".stripeline" / "dev-instance.json").exists()
