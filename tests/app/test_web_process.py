"""`stripeline web` as a platform runs it: limits uvicorn enforces, proxies, and a clean stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import httpx
import pytest

from tests.app.test_cli import CONFIGURED, stripeline_command
from tests.app.test_dev import wait_until
from tests.conftest import WEBHOOK_SECRET
from tests.factories import ping_event, signed
from tests.services import closed_port


@pytest.fixture
def web(db_url, redis_url, request):
    """A running `stripeline web`; extra environment from the test's `web_env` marker."""
    marker = request.node.get_closest_marker("web_env")
    port = closed_port()
    env = {**CONFIGURED, "DATABASE_URL": db_url, "REDIS_URL": redis_url, "PORT": str(port),
           "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET, "PATH": os.environ.get("PATH", ""),
           **(marker.args[0] if marker else {})}
    process = subprocess.Popen([*stripeline_command(), "web", "--host", "127.0.0.1"], env=env, cwd="/",
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.port = port
    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def raw_request(port: int, head: bytes, body: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(head + body)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


def test_request_head_over_32_kib_is_refused_with_431(web):
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * (20 * 1024 * 1024) + b"\r\n\r\n"
    try:
        answer = raw_request(web.port, head)
    except (ConnectionResetError, BrokenPipeError):
        answer = b"HTTP/1.1 431 (connection closed while we were still sending)"
    assert answer.startswith(b"HTTP/1.1 431")
    ordinary = httpx.get(f"http://127.0.0.1:{web.port}/healthz", headers={"x-padding": "a" * 8000})
    assert ordinary.status_code == 200


def redirect_scheme(port: int) -> str:
    """The scheme the app believes the client used: Starlette's slash redirect is absolute."""
    answer = httpx.get(f"http://127.0.0.1:{port}/healthz/", headers={"x-forwarded-proto": "https",
                                                                     "x-forwarded-for": "203.0.113.9"})
    assert answer.status_code == 307
    return answer.headers["location"].split(":")[0]


def test_forwarded_headers_are_not_believed_by_default(web):
    assert redirect_scheme(web.port) == "http"


@pytest.mark.web_env({"STRIPELINE_FORWARDED_ALLOW_IPS": "127.0.0.1"})
def test_forwarded_headers_are_believed_from_the_configured_proxy(web):
    assert redirect_scheme(web.port) == "https"


def test_sigterm_finishes_the_request_in_flight_and_exits_0(web):
    body, headers = signed(ping_event(), WEBHOOK_SECRET)
    head = (f"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Stripe-Signature: {headers['stripe-signature']}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", web.port), timeout=30) as conn:
        conn.sendall(head + body[:100])
        time.sleep(0.3)
        web.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        conn.sendall(body[100:])
        answer = conn.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    out, err = web.communicate(timeout=30)
    assert web.returncode == 0, err
    events = [json.loads(line).get("event", "") for line in out.splitlines() if line.strip()]
    assert any("Finished server process" in event for event in events)
