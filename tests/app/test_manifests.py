"""Every deploy manifest parses and says the same thing: the Procfile's three processes, the
environment stripeline reads, the port, the health routes. tests/app/test_deploy.py runs them."""

from __future__ import annotations

import re

import pytest

from stripeline.settings import Settings
from tests.app import deploy_support as deploy

CONTRACT_PROCESSES = {"release": "stripeline migrate", "web": "stripeline web", "worker": "stripeline worker"}
# Variables the platform itself reads, not stripeline.
PLATFORM_VARIABLES = {"PYTHON_VERSION"}


class Recorder(dict):
    """An environment that remembers every variable asked for."""

    def __init__(self, values=()):
        super().__init__(values)
        self.asked: set[str] = set()

    def get(self, key, default=None):
        self.asked.add(key)
        return super().get(key, default)


def variables_stripeline_reads() -> set[str]:
    recorder = Recorder({"DATABASE_URL": "postgres://h/d"})
    Settings.from_env(recorder)
    return recorder.asked


def test_procfile_declares_the_contracts_processes():
    assert deploy.procfile() == CONTRACT_PROCESSES


def test_app_json_provisions_postgres_and_redis_and_runs_web_and_worker():
    manifest = deploy.app_json()
    plans = [addon["plan"].split(":")[0] for addon in manifest["addons"]]
    assert plans == ["heroku-postgresql", "heroku-redis"]
    assert [addon["as"] for addon in manifest["addons"]] == ["DATABASE", "REDIS"]  # DATABASE_URL, REDIS_URL
    assert set(manifest["formation"]) == {"web", "worker"} <= set(deploy.procfile())
    assert all(process["quantity"] >= 1 for process in manifest["formation"].values())
    assert manifest["buildpacks"] == [{"url": "heroku/python"}]
    env = manifest["env"]
    assert set(env) <= variables_stripeline_reads()
    assert all(spec["description"] for spec in env.values())
    assert env["STRIPE_WEBHOOK_SECRET"]["required"] is True
    assert env["STRIPELINE_API_TOKEN"]["generator"] == "secret"


def test_render_blueprint_builds_from_the_lock_and_runs_the_procfiles_commands():
    blueprint = deploy.render_yaml()
    web, worker = deploy.render_service(blueprint, "web"), deploy.render_service(blueprint, "worker")
    processes = deploy.procfile()
    assert web["buildCommand"] == worker["buildCommand"] == "pip install -r requirements.txt"
    assert web["preDeployCommand"] == processes["release"]
    assert (web["startCommand"], worker["startCommand"]) == (processes["web"], processes["worker"])
    assert web["runtime"] == worker["runtime"] == "python" and web["healthCheckPath"] == "/healthz"
    [database] = blueprint["databases"]
    keyvalue = deploy.render_service(blueprint, "keyvalue")
    assert keyvalue["maxmemoryPolicy"] == "noeviction"  # queued jobs are never evicted
    for service in (web, worker):
        wired = {item["key"]: item for item in service["envVars"] if "key" in item}
        assert wired["DATABASE_URL"]["fromDatabase"] == {"name": database["name"], "property": "connectionString"}
        assert wired["REDIS_URL"]["fromService"]["name"] == keyvalue["name"]
        assert set(wired) - PLATFORM_VARIABLES <= variables_stripeline_reads()
    assert {"STRIPE_WEBHOOK_SECRET", "STRIPELINE_API_TOKEN"} <= {item.get("key") for item in web["envVars"]}
    for group in blueprint["envVarGroups"]:
        assert {item["key"] for item in group["envVars"]} <= variables_stripeline_reads()


def test_fly_config_builds_the_image_releases_with_migrate_and_serves_the_web_process():
    config = deploy.fly_toml()
    processes = deploy.procfile()
    assert config["build"]["dockerfile"] == "Dockerfile"
    assert config["deploy"]["release_command"] == processes["release"]
    assert config["processes"] == {"web": processes["web"], "worker": processes["worker"]}
    service = config["http_service"]
    assert service["processes"] == ["web"] and service["auto_stop_machines"] == "off"
    assert str(service["internal_port"]) == config["env"]["PORT"]
    assert [check["path"] for check in service["checks"]] == ["/healthz"]
    assert set(config["env"]) <= variables_stripeline_reads()


def test_dockerfile_pins_its_base_installs_from_the_lock_and_checks_health():
    steps = deploy.dockerfile()
    [base] = [step.arguments for step in steps if step.keyword == "FROM"]
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base)
    runs = " ".join(step.arguments for step in steps if step.keyword == "RUN")
    assert "requirements.txt" in runs and "pip check" in runs
    assert any(step.keyword == "HEALTHCHECK" for step in steps)
    [user] = [step.arguments for step in steps if step.keyword == "USER"]
    assert user != "root"
    [expose] = [step.arguments for step in steps if step.keyword == "EXPOSE"]
    assert expose == deploy.fly_toml()["env"]["PORT"]


def _env_example() -> dict[str, str]:
    values = {}
    for line in (deploy.ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    return values


def test_env_example_names_every_variable_of_the_contract_and_nothing_stripeline_ignores():
    example = _env_example()
    contract = {
        "DATABASE_URL", "REDIS_URL", "STRIPE_WEBHOOK_SECRET", "STRIPE_API_KEY", "STRIPELINE_API_TOKEN",
        "STRIPELINE_DELETED_CUSTOMERS", "STRIPELINE_WEBHOOK_TOLERANCE", "STRIPELINE_SCHEMA", "STRIPELINE_DB_POOL_SIZE",
        "PORT", "LOG_LEVEL", "LOG_FORMAT", "WEB_CONCURRENCY",
    }  # fmt: skip
    assert contract <= set(example) <= variables_stripeline_reads()
    settings = Settings.from_env(example)  # as `docker run --env-file .env` would pass it
    settings.require("DATABASE_URL", "REDIS_URL", "STRIPE_WEBHOOK_SECRET", "STRIPELINE_API_TOKEN")


@pytest.mark.parametrize("name", [".python-version", "requirements.txt", "Procfile", "app.json", "render.yaml",
                                  "fly.toml", "Dockerfile", ".env.example"])  # fmt: skip
def test_every_manifest_is_committed(name):
    import subprocess

    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", name], cwd=deploy.ROOT, capture_output=True)
    if tracked.returncode != 0 and not (deploy.ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    assert tracked.returncode == 0, f"{name} is not committed: a platform builds from the repository"


def _readme_section(title: str) -> str:
    readme = (deploy.ROOT / "README.md").read_text()
    start = readme.index(f"\n## {title}\n")
    return readme[start : readme.index("\n## ", start + 1)]


def test_readme_connect_stripe_lists_every_handled_event_type_with_what_its_handler_does():
    from stripeline.handlers import WHY

    section = _readme_section("Connect Stripe").split("Copy the endpoint")[0]
    rows = re.findall(r"^\| `([a-z_]+(?:\.[a-z_]+)+)` \| (.+) \|$", section, re.M)
    expected = [(event_type, why) for event_type, why in WHY.items()]
    assert rows == expected, "\n".join(f"| `{t}` | {why} |" for t, why in expected)


def test_readme_connect_stripe_asks_read_access_to_exactly_what_backfill_lists():
    from stripeline.commands.backfill import LISTINGS

    section = _readme_section("Connect Stripe")
    resources = re.findall(r"^\| (\w+) \| lists", section, flags=re.MULTILINE)
    assert sorted(resources) == sorted(listing.resource.capitalize() for listing in LISTINGS)


def test_readme_deploy_gives_steps_for_every_platform():
    section = _readme_section("Deploy")
    for platform, command in [("Heroku", "git push heroku"), ("Render", "render.yaml"), ("Fly", "fly deploy"),
                              ("Docker", "docker build")]:  # fmt: skip
        assert f"**{platform}" in section and command in section
