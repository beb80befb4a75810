"""rediss:// against a real TLS Redis with a self-signed certificate, as Heroku Redis serves."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from arq import create_pool
from redis.exceptions import ConnectionError as RedisConnectionError

from stripeline.store.queue import redis_pool, redis_settings
from tests.services import closed_port

pytestmark = pytest.mark.skipif(
    not (shutil.which("redis-server") and shutil.which("openssl")), reason="needs redis-server and openssl"
)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    """(port, certificate path): redis-server speaking TLS only, certificate for 127.0.0.1."""
    where: Path = tmp_path_factory.mktemp("tls-redis")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", where / "key.pem", "-out", where / "cert.pem"],
        check=True, capture_output=True,
    )  # fmt: skip
    port = closed_port()
    server = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--tls-cert-file", where / "cert.pem",
         "--tls-key-file", where / "key.pem", "--tls-auth-clients", "no", "--save", "", "--appendonly", "no",
         "--dir", where],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not _listening(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield port, where / "cert.pem"
    finally:
        server.terminate()
        server.wait(timeout=10)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


async def _answers(url: str) -> bool:
    web, worker = redis_pool(url), await create_pool(redis_settings(url))
    try:
        return await web.ping() and await worker.ping()
    finally:
        await web.aclose()
        await worker.aclose()


async def test_rediss_with_a_self_signed_certificate_connects_without_checks_by_default(tls_redis):
    port, _ = tls_redis
    assert await _answers(f"rediss://127.0.0.1:{port}/0")


async def test_rediss_asking_for_checks_refuses_a_certificate_it_cannot_verify(tls_redis):
    port, _ = tls_redis
    with pytest.raises(RedisConnectionError, match="certificate verify failed"):
        await redis_pool(f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required").ping()


async def test_rediss_asking_for_checks_accepts_a_certificate_signed_by_the_given_ca(tls_redis):
    port, certificate = tls_redis
    assert await _answers(f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={certificate}")
