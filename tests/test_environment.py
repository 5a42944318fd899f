"""pyproject.toml, constraints.txt and environment.yml describe one package set."""

import re
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ ;\[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["dev"]
    return {_name(r): r for r in reqs}


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[_name(name)] = version
    return pins


def _conda_pip_section() -> list[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = [d for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, "environment.yml must have one pip: section"
    return pip[0]["pip"]


def test_lower_bounds_only_in_pyproject():
    for req in _pyproject_requirements().values():
        assert ">=" in req and "==" not in req and "<" not in req, f"pyproject: {req} should be a lower bound"


def test_every_dependency_is_pinned_and_satisfies_its_bound():
    from packaging.requirements import Requirement

    pins = _constraints()
    for name, req in _pyproject_requirements().items():
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert Requirement(req).specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} vs {req}"
    assert pins["torch"] == "2.13.0" and pins["triton"] == "3.9.0"


def test_environment_yml_matches_pyproject_and_pins():
    pins = _constraints()
    conda = [line for line in _conda_pip_section() if not line.startswith("-e")]
    conda_pins = dict(line.split("==") for line in conda)
    conda_pins = {_name(k): v for k, v in conda_pins.items()}
    assert set(conda_pins) == set(_pyproject_requirements()), "environment.yml and pyproject list other packages"
    for name, version in conda_pins.items():
        assert pins[name] == version, f"environment.yml pins {name}=={version}, constraints.txt {pins[name]}"
    assert "-e ." in _conda_pip_section()


def test_installed_versions_are_the_pinned_ones():
    """The venv `make` built is the one constraints.txt describes (catches a stale .venv)."""
    from importlib.metadata import version

    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip("not running in the project's .venv (e.g. on the GPU machine's own torch)")
    pins = _constraints()
    for name in _pyproject_requirements():
        installed = version(name).split("+")[0]
        assert installed == pins[name], f"{name}: installed {installed}, pinned {pins[name]}"
