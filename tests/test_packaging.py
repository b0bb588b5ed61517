"""pyproject.toml and environment.yml declare the same dependencies (names and lower bounds)."""

import re
import tomllib

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


def test_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = dict(_requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"])
    env = _environment_requirements()
    env.pop("python"), env.pop("pip")
    assert env == wanted, {"only in environment.yml": env.keys() - wanted.keys(), "only in pyproject": wanted.keys() - env.keys()}
    assert project["requires-python"] == ">=3.11"


def test_torch_is_pinned_by_the_constraints_file():
    # the CPU wheel on our machines; any other version pulls gigabytes of CUDA packages
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text().split()
