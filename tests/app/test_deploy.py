"""Every deploy path in the README, run from a clean clone as its platform would run it.

Heroku-style platforms (Procfile, app.json, the Python buildpack's `pip install -r
requirements.txt`), Render (render.yaml), Fly (fly.toml, which builds the Dockerfile) and Docker
(the Dockerfile's steps, its CMD and HEALTHCHECK). The build runs once per session; then each
platform's release command migrates a database of its own, its web and worker start with the
environment the platform gives them, /readyz answers, and the worker processes signed webhooks.
SIGTERM stops everything with exit code 0.

One fresh install per session keeps this test within budget: by default Heroku's and Render's
install command (`pip install -r requirements.txt`, the same for both) runs in the clone on the
environment the Dockerfile's steps just built from that lock, and their processes run there.
STRIPELINE_TEST_DEPLOY=full builds a fresh environment for each of them with its own command.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

from stripeline.store.migrate import load_migrations
from tests.app import deploy_support as deploy
from tests.factories import signed
from tests.services import closed_port
from tests.simulation import generate

# What Heroku's Python buildpack runs for a requirements.txt (its lib/pip.sh, less output flags).
HEROKU_INSTALL = "pip install -r requirements.txt"
FULL = deploy.FULL
SECRET = "whsec_deploy_test"
TOKEN = "deploy-test-token"

pytestmark = pytest.mark.skipif(
    not (deploy.ROOT / ".git").exists(), reason="needs a git checkout to clone (the platforms build from one)"
)


@dataclass
class Build:
    clone: Path
    image: deploy.Image
    heroku_bin: Path
    render_bin: Path


def _fresh_environment(where: Path, command: str, clone: Path) -> Path:
    """A new Python environment at `where`, then `command` run in the clone with it on PATH."""
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(where)], check=True)
    done = deploy.run(command, env={**os.environ, "PATH": f"{where / 'bin'}:{os.environ['PATH']}"}, cwd=clone, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return where / "bin"


@pytest.fixture(scope="session")
def build(tmp_path_factory) -> Build:
    where = tmp_path_factory.mktemp("deploy")
    clone = deploy.clean_clone(where / "clone")
    image = deploy.Image(where / "image", clone)
    image.build(deploy.dockerfile(clone))
    render_build = deploy.render_service(deploy.render_yaml(clone), "web")["buildCommand"]
    if FULL:
        heroku_bin = _fresh_environment(where / "heroku-python", HEROKU_INSTALL, clone)
        render_bin = _fresh_environment(where / "render-venv", render_build, clone)
        return Build(clone, image, heroku_bin, render_bin)
    # Both platforms' install command, run in the clone on the environment just built from the lock.
    built = image.root / "opt" / "stripeline" / "bin"
    for command in dict.fromkeys((HEROKU_INSTALL, render_build)):
        done = deploy.run(command, env={**image.env, "PATH": f"{built}:{os.environ['PATH']}"}, cwd=clone, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    return Build(clone, image, built, built)


def _host_env(bin_dir: Path, **extra: str) -> dict[str, str]:
    keep = ("LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE")
    return {**{k: os.environ[k] for k in keep if k in os.environ}, "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin", **extra}


def _services(database_url: str, redis_url: str) -> dict[str, str]:
    return {
        # Heroku's form of the URL: postgres://
        "DATABASE_URL": database_url.replace("postgresql://", "postgres://", 1),
        "REDIS_URL": redis_url,
        "STRIPE_WEBHOOK_SECRET": SECRET,
        "STRIPELINE_API_TOKEN": TOKEN,
        # The session's Redis db is shared by the platforms started at once: a queue each.
        "STRIPELINE_QUEUE": f"stripeline:deploy:{uuid.uuid4().hex[:8]}",
    }


@dataclass
class Platform:
    name: str
    release: str
    web: str
    worker: str
    health_path: str
    env: dict[str, str]
    web_env: dict[str, str]
    cwd: Path
    port: int
    database_url: str


def heroku(build: Build, database_url: str, redis_url: str) -> Platform:
    processes = deploy.procfile(build.clone)
    port = closed_port()
    # The buildpack's profile.d script sets HOME's code on PYTHONPATH, and guesses WEB_CONCURRENCY
    # on web dynos (2 on the smallest) unless the app set it.
    env = _host_env(build.heroku_bin, HOME=str(build.clone), PYTHONPATH=str(build.clone), PORT=str(port),
                    **_services(database_url, redis_url))  # fmt: skip
    web_env = {**env, "DYNO": "web.1", "WEB_CONCURRENCY": "2", "WEB_CONCURRENCY_SET_BY": "heroku/python"}
    return Platform("heroku", processes["release"], processes["web"], processes["worker"], "/readyz", env, web_env,
                    build.clone, port, database_url)  # fmt: skip


def render(build: Build, database_url: str, redis_url: str) -> Platform:
    blueprint = deploy.render_yaml(build.clone)
    web, worker = deploy.render_service(blueprint, "web"), deploy.render_service(blueprint, "worker")
    values = {item["key"]: str(item["value"]) for item in web["envVars"] if "value" in item}
    for group in blueprint.get("envVarGroups", []):
        values |= {item["key"]: str(item["value"]) for item in group["envVars"] if "value" in item}
    port = closed_port()
    env = _host_env(build.render_bin, RENDER="true", PORT=str(port), **values, **_services(database_url, redis_url))
    return Platform("render", web["preDeployCommand"], web["startCommand"], worker["startCommand"],
                    web["healthCheckPath"], env, env, build.clone, port, database_url)  # fmt: skip


def fly(build: Build, database_url: str, redis_url: str) -> Platform:
    config = deploy.fly_toml(build.clone)
    image = build.image
    port = closed_port()  # the image listens on $PORT; this machine's 8000 may be taken
    env = {**_host_env(Path("/nonexistent")), **image.declared, **config["env"], **_services(database_url, redis_url),
           "PORT": str(port)}  # fmt: skip
    [check] = config["http_service"]["checks"]
    return Platform("fly", config["deploy"]["release_command"], config["processes"]["web"],
                    config["processes"]["worker"], check["path"], env, env, image.workdir, port, database_url)  # fmt: skip


async def _states(database_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT status, count(*) AS n FROM stripeline.stripe_events GROUP BY status")
        return {row["status"]: row["n"] for row in rows}
    finally:
        await conn.close()


def _wait(check, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_every_platform_builds_releases_serves_and_processes_webhooks_from_a_clean_clone(
    build, fresh_databases, redis_url
):
    platforms = [
        maker(build, await fresh_databases(), redis_url) for maker in (heroku, render, fly)
    ]
    events = generate(seed=13, actions=6).events[:12]

    releases = [deploy.start(f"{p.name} release", p.release, p.env, p.cwd) for p in platforms]
    for release in releases:
        code, output = release.wait()
        assert code == 0 and f"migrations: {len(load_migrations())} applied" in output, (release.name, output)

    started = []
    try:
        for platform in platforms:
            started.append(deploy.start(f"{platform.name} web", platform.web, platform.web_env, platform.cwd))
            started.append(deploy.start(f"{platform.name} worker", platform.worker, platform.env, platform.cwd))
        for platform in platforms:
            base = f"http://127.0.0.1:{platform.port}"
            _wait(lambda: httpx.get(base + "/readyz", timeout=2).status_code == 200, what=f"{platform.name} /readyz")
            assert httpx.get(base + platform.health_path, timeout=2).status_code == 200
            for payload in events:
                body, headers = signed(payload, SECRET)
                answer = httpx.post(base + "/webhooks/stripe", content=body, headers=headers, timeout=5)
                assert answer.status_code == 200, (platform.name, answer.text)
        for platform in platforms:
            deadline = time.monotonic() + 30
            while (states := await _states(platform.database_url)).get("pending") and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert states == {"processed": len(events)}, (platform.name, states)

        # Docker's HEALTHCHECK, run in the image's environment against the image's web.
        image_web = platforms[-1]
        healthy = deploy.run(" ".join(build.image.healthcheck), env=image_web.env, cwd=image_web.cwd, timeout=30)
        assert healthy.returncode == 0, healthy.stderr
    finally:
        stopped = {process.name: process.stop() for process in started}
    for name, (code, output) in stopped.items():
        assert code == 0, (name, output[-2000:])
        assert "Traceback" not in output, (name, output[-2000:])
    # Heroku's buildpack guessed WEB_CONCURRENCY=2: one web process all the same (see stripeline.settings).
    assert stopped["heroku web"][1].count("Started server process") == 1


def test_the_image_is_built_as_the_dockerfile_says(build):
    image = build.image
    assert image.command == ["stripeline", "web"] and image.healthcheck == ["stripeline", "healthcheck"]
    assert image.user == "stripeline" and image.exposed == [int(image.env["PORT"])]
    # Its base pins an exact Python release of the version the buildpacks are asked for.
    python_version = (build.clone / ".python-version").read_text().strip()
    assert image.base.startswith(f"python:{python_version}.") and image.base.split(":")[1][len(python_version) + 1].isdigit()
    installed = subprocess.run([str(image.root / "opt/stripeline/bin/pip"), "freeze"], capture_output=True, text=True)
    locked = {_pin(line) for line in (build.clone / "requirements.txt").read_text().splitlines() if "==" in line}
    assert locked <= {_pin(line) for line in installed.stdout.splitlines() if "==" in line}


def _pin(line: str) -> tuple[str, str]:
    from packaging.utils import canonicalize_name

    name, version = line.split("==")
    return canonicalize_name(name), version.strip()
