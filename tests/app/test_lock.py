"""requirements.txt, the lock every deploy installs from, agrees with pyproject.toml.

Regenerate it with `.ci/lock` after changing a dependency. The clean-clone deploy test installs
it with --no-deps and runs `pip check`, which proves it complete; this test needs no index.
"""

from __future__ import annotations

import tomllib
from importlib import metadata

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.app.deploy_support import ROOT


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _lock() -> tuple[dict[str, str], list[str]]:
    pins, others = {}, []
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "==" in line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
        else:
            others.append(line)
    return pins, others


def test_the_lock_pins_exact_versions_and_installs_the_project_itself():
    pins, others = _lock()
    assert others == ["."]  # the project, which puts `stripeline` on PATH
    assert pins and all(version and "*" not in version for version in pins.values())


def test_every_dependency_in_pyproject_is_pinned_there_and_locked_at_that_version():
    for line in _pyproject()["project"]["dependencies"]:
        requirement = Requirement(line)
        [specifier] = requirement.specifier
        assert specifier.operator == "==", f"{line}: pin it exactly in pyproject.toml"
        pins, _ = _lock()
        assert pins.get(canonicalize_name(requirement.name)) == specifier.version, (
            f"{requirement.name}: requirements.txt is out of step with pyproject.toml; run .ci/lock"
        )


def test_the_lock_holds_everything_its_packages_need_at_versions_they_accept():
    """Walk the requirements from pyproject through each locked package's own metadata (where this
    environment has that exact version installed) and find each one locked at an accepted version."""
    pins, _ = _lock()
    python = {**default_environment(), "sys_platform": "linux", "platform_system": "Linux"}
    wanted = [Requirement(line) for line in _pyproject()["project"]["dependencies"]]
    seen: set[tuple[str, frozenset]] = set()
    checked, unwalked = 0, set()
    while wanted:
        requirement = wanted.pop()
        name = canonicalize_name(requirement.name)
        if requirement.marker and not any(
            requirement.marker.evaluate({**python, "extra": extra}) for extra in ("", *requirement.extras)
        ):
            continue
        assert name in pins, f"{requirement} is needed but not in requirements.txt; run .ci/lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} breaks {requirement}"
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            unwalked.add(name)
            continue
        if distribution.version != pins[name]:
            unwalked.add(name)  # another version here: its metadata says nothing about the locked one
            continue
        checked += 1
        for line in distribution.requires or []:
            needed = Requirement(line)
            markers = [{**python, "extra": extra} for extra in ("", *requirement.extras)]
            if needed.marker is None or any(needed.marker.evaluate(marker) for marker in markers):
                needed.marker = None
                wanted.append(needed)
    assert checked >= len(_pyproject()["project"]["dependencies"])
    required = {name for name, _ in seen}
    if not unwalked:
        assert set(pins) == required, f"locked but needed by nothing: {sorted(set(pins) - required)}; run .ci/lock"


def test_python_version_file_names_a_version_the_project_accepts():
    from packaging.specifiers import SpecifierSet

    version = (ROOT / ".python-version").read_text().strip()
    assert SpecifierSet(_pyproject()["project"]["requires-python"]).contains(f"{version}.0")
