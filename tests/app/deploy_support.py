"""What the deploy tests share: the manifests as parsed values, a Dockerfile run without an
engine, and processes started as a platform starts them.

No platform and no Docker engine is reachable here, so a test runs the commands each manifest
declares itself: the Dockerfile's steps with its absolute paths (/app, /opt, /home, /tmp) moved
under a scratch root, and the Procfile's, render.yaml's and fly.toml's commands through a shell,
with the environment the platform would give them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# The long profile: fresh environments for every platform, `stripeline dev` with embedded servers.
FULL = os.environ.get("STRIPELINE_TEST_DEPLOY") == "full"
long_profile = pytest.mark.skipif(not FULL, reason="long profile: set STRIPELINE_TEST_DEPLOY=full")
# The absolute paths an image's steps may use; everything else is the host's (/bin/sh, ...).
_IMAGE_PATH = re.compile(r"(?<![\w./-])/(?:app|opt|home|tmp)(?=[/\s:\"']|$)")


def procfile(root: Path = ROOT) -> dict[str, str]:
    processes = {}
    for line in (root / "Procfile").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, command = line.split(":", 1)
            processes[name.strip()] = command.strip()
    return processes


def app_json(root: Path = ROOT) -> dict:
    return json.loads((root / "app.json").read_text())


def render_yaml(root: Path = ROOT) -> dict:
    return yaml.safe_load((root / "render.yaml").read_text())


def fly_toml(root: Path = ROOT) -> dict:
    return tomllib.loads((root / "fly.toml").read_text())


def render_service(blueprint: dict, kind: str) -> dict:
    [service] = [s for s in blueprint["services"] if s["type"] == kind]
    return service


@dataclass
class Instruction:
    keyword: str
    arguments: str


def dockerfile(root: Path = ROOT) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for raw in (root / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, arguments = line.partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
    return instructions


def _exec_form(text: str) -> list[str]:
    return json.loads(text) if text.startswith("[") else ["/bin/sh", "-c", text]


@dataclass
class Image:
    """What the Dockerfile builds, built under `root` instead of `/` from the build `context`."""

    root: Path
    context: Path
    base: str = ""
    env: dict[str, str] = field(default_factory=dict)
    workdir: Path | None = None
    user: str = "root"
    exposed: list[int] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    # The variables the Dockerfile sets (ENV), as its containers get them.
    declared: dict[str, str] = field(default_factory=dict)

    def rooted(self, text: str) -> str:
        return _IMAGE_PATH.sub(lambda match: str(self.root) + match.group(0), text)

    def build(self, steps: list[Instruction]) -> None:
        for prefix in ("app", "opt", "home", "tmp"):
            (self.root / prefix).mkdir(parents=True, exist_ok=True)
        # The image's `python` is the interpreter these tests run on (same minor version).
        shims = self.root / "shims"
        shims.mkdir(exist_ok=True)
        (shims / "python").symlink_to(getattr(sys, "_base_executable", sys.executable))
        host = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
        self.env = {**host, "PATH": f"{shims}:{host.get('PATH', '')}"}
        for step in steps:
            getattr(self, f"_{step.keyword.lower()}")(step.arguments)

    def _from(self, arguments: str) -> None:
        self.base = arguments

    def _env(self, arguments: str) -> None:
        for pair in shlex.split(arguments):
            name, _, value = pair.partition("=")
            # Root the Dockerfile's own paths first: an expanded $PATH holds host paths already.
            expand = lambda m: self.env.get(m.group(1) or m.group(2), "")  # noqa: E731
            self.env[name] = self.declared[name] = re.sub(r"\$(\w+)|\$\{(\w+)\}", expand, self.rooted(value))

    def _workdir(self, arguments: str) -> None:
        self.workdir = Path(self.rooted(arguments))
        self.workdir.mkdir(parents=True, exist_ok=True)

    def _run(self, arguments: str) -> None:
        if arguments.split()[0] == "useradd":
            self.skipped.append(arguments)  # users are the engine's business; we run as ourselves
            return
        subprocess.run(
            ["/bin/sh", "-c", self.rooted(arguments)], cwd=self.workdir, env=self.env, check=True,
            capture_output=True, timeout=300,
        )  # fmt: skip

    def _copy(self, arguments: str) -> None:
        *sources, target = shlex.split(arguments)
        destination = Path(self.rooted(target)) if target.startswith("/") else self.workdir / target
        for source in sources:
            origin = self.context / source
            if origin.is_dir():
                shutil.copytree(origin, destination, dirs_exist_ok=True)
                continue
            if target.endswith("/"):
                destination.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, destination / origin.name if destination.is_dir() else destination)

    def _user(self, arguments: str) -> None:
        self.user = arguments

    def _expose(self, arguments: str) -> None:
        self.exposed += [int(port) for port in arguments.split()]

    def _healthcheck(self, arguments: str) -> None:
        self.healthcheck = _exec_form(arguments.split("CMD", 1)[1].strip())

    def _cmd(self, arguments: str) -> None:
        self.command = _exec_form(arguments)


def clean_clone(destination: Path) -> Path:
    """A fresh clone of this checkout's commit: what a platform's build receives."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(ROOT), str(destination)], check=True)
    subprocess.run(["git", "checkout", "--quiet", commit.stdout.strip()], cwd=destination, check=True)
    return destination


@dataclass
class Started:
    """A process started through bash, as Heroku starts a Procfile entry (bash execs a lone
    command). Its output goes to a file: a pipe nobody reads would block it once full."""

    name: str
    process: subprocess.Popen
    log: IO[str]

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def wait(self, timeout: float = 60) -> tuple[int, str]:
        self.process.wait(timeout=timeout)
        return self.process.returncode, self.output()

    def stop(self, timeout: float = 30) -> tuple[int, str]:
        """SIGTERM to its whole process group (as Heroku stops a dyno); its exit code and output."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        return self.process.returncode, self.output()


def start(name: str, command: str, env: dict[str, str], cwd: Path) -> Started:
    log = tempfile.TemporaryFile("w+", encoding="utf-8")
    process = subprocess.Popen(
        ["bash", "-c", command], env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    return Started(name, process, log)


def run(command: str, env: dict[str, str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", command], env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
