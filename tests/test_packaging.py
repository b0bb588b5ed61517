"""The declared environment is one environment: pyproject.toml and environment.yml list the same dependencies with
the same bounds, constraints.txt pins torch once, and what is installed satisfies all of them."""

import importlib.metadata
import re
import sys
import tomllib

from packaging.requirements import Requirement
from packaging.version import Version

from conftest import ROOT


def _requirement(text: str) -> tuple[str, str]:
    m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*(.*?)\s*", text)
    assert m, text
    return m.group(1).lower().replace("_", "-"), m.group(2).replace(" ", "")


def _environment_requirements() -> dict[str, str]:
    reqs = {}
    text = (ROOT / "environment.yml").read_text().split("\ndependencies:", 1)[1]
    for line in text.splitlines():
        m = re.match(r"\s*-\s+(.*)", line)
        if not m or m.group(1).endswith(":") or m.group(1).startswith("-e"):
            continue
        name, spec = _requirement(m.group(1))
        reqs[name] = spec
    return reqs


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _declared() -> list[Requirement]:
    project = _project()
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]


def _constraints() -> list[Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in (ROOT / "constraints.txt").read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def test_environment_matches_pyproject():
    project = _project()
    wanted = dict(_requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"])
    env = _environment_requirements()
    env.pop("pip")
    assert env.pop("python") == project["requires-python"].replace(" ", "")  # conda's python and pip's agree
    assert env == wanted, {"only in environment.yml": env.keys() - wanted.keys(),
                           "only in pyproject": wanted.keys() - env.keys(),
                           "different bounds": {k for k in env.keys() & wanted.keys() if env[k] != wanted[k]}}


def test_running_python_satisfies_requires_python():
    running = ".".join(map(str, sys.version_info[:3]))
    assert Requirement(f"python{_project()['requires-python']}").specifier.contains(running), running


def test_constraints_pin_the_installed_torch_within_the_declared_bounds():
    # one exact version of torch: the CPU wheel the suite runs on (a second or a range would let pip choose a CUDA one)
    torch_pins = [r for r in _constraints() if r.name == "torch"]
    assert len(torch_pins) == 1, torch_pins
    (spec,) = torch_pins[0].specifier
    assert spec.operator == "==" and "*" not in spec.version, str(spec)
    pinned = Version(spec.version)
    installed = Version(importlib.metadata.version("torch"))  # "2.13.0+cpu": the local label names the build
    assert installed.public == pinned.public, f"constraints.txt pins torch {pinned}, the environment has {installed}"
    (declared,) = [r for r in _declared() if r.name == "torch"]
    assert declared.specifier.contains(pinned), f"the pin {pinned} is outside pyproject's torch{declared.specifier}"


def test_installed_distributions_satisfy_the_declared_bounds():
    outside = {}
    for req in _declared():
        installed = importlib.metadata.version(req.name)  # PackageNotFoundError: a declared package is missing
        if not req.specifier.contains(Version(installed).public, prereleases=True):
            outside[req.name] = f"{installed} (declared {req.specifier})"
    assert not outside, outside
