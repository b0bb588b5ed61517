"""The design rules of docs/DESIGN.md, checked on the tree: short modules, one definition per name, every module
on the maps of README.md and docs/DESIGN.md (and nothing on them that is not a module), the output directories."""

import ast
import re
import subprocess
from collections import defaultdict

import pytest

from conftest import ROOT

PACKAGE = ROOT / "src" / "diractrap"
MAX_LINES = 700  # docs/DESIGN.md, "Code": one short module per paper concept

# Names defined at the top level of more than one module on purpose: {name: the modules (relative to PACKAGE)}.
MIRRORED = {
    # Each network file rebuilds its original's FIR filter the way that code builds it (EDM: f f^T / (sum f)^2 as a
    # buffer; score_sde: k / sum(k) * gain, cast to the input); the two differ in signature and normalisation.
    "_fir_2d": {"models/edm.py", "models/ncsnpp.py"},
}
# Duplicates on main that issue 16 removes (another branch). Empty it as they go: an entry that is no longer a
# duplicate fails the test as surely as a new duplicate does.
KNOWN_DUPLICATES: dict[str, set[str]] = {}  # none left (issue 16 removed item_generator's and psnr's copies)


def _modules() -> dict[str, str]:
    """{dotted name relative to the package: path relative to PACKAGE}, e.g. {"models.edm": "models/edm.py"}.
    A package's __init__.py stands for the package (``models``); the top-level one is the package itself."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        parts = rel.with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            out[".".join(parts)] = rel.as_posix()
    return out


def _section(path, heading: str) -> str:
    """The text under the ``## heading`` of a markdown file, up to the next ``## ``."""
    text = path.read_text()
    m = re.search(rf"^## {re.escape(heading)}.*?$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"{path.relative_to(ROOT)} has no section '## {heading}'"
    return m.group(1)


def _module_name(token: str) -> str:
    """A backticked mention as a dotted module name: ``src/diractrap/models/edm.py``, ``diractrap.models.edm``,
    ``models/edm.py`` and ``models.edm`` all give ``models.edm``; a bare ``kernels`` stays ``kernels``."""
    token = token.strip().removeprefix("src/").removesuffix(".py").removesuffix("/")
    token = token.replace("/", ".").removeprefix("diractrap").lstrip(".")
    return token


def _resolve(token: str, modules: dict[str, str]) -> str | None:
    """The module a mention names: its dotted name, or the bare name of exactly one module inside a sub-package."""
    name = _module_name(token)
    if name in modules:
        return name
    if "." not in name:
        inside = [m for m in modules if m.rsplit(".", 1)[-1] == name]
        if len(inside) == 1:
            return inside[0]
    return None


def _first_column(table: str, section: str) -> list[str]:
    """The backticked names in the first column of a markdown table (header rows skipped), and every
    src/diractrap path written anywhere in its section."""
    cells = [line.split("|")[1] for line in table.strip().splitlines()[2:]]
    return [t for cell in cells for t in re.findall(r"`([^`]+)`", cell)] + re.findall(r"src/diractrap/[\w/]+\.py",
                                                                                     section)


def _readme_mentions() -> list[str]:
    """README.md, "What is where": the library's table (the one headed ``| module |``)."""
    section = _section(ROOT / "README.md", "What is where")
    tables = re.split(r"\n(?!\|)", section)  # blocks of consecutive table lines, and the prose between
    library = [block for block in tables if block.strip().startswith("| module |")]
    assert len(library) == 1, "README.md, 'What is where': expected one table headed '| module |' (the library)"
    return _first_column(library[0], section)


def _design_mentions() -> list[str]:
    """docs/DESIGN.md, "Module map": its one table."""
    section = _section(ROOT / "docs" / "DESIGN.md", "Module map")
    return _first_column("\n".join(line for line in section.splitlines() if line.startswith("|")), section)


# ---------------------------------------------------------------------------------------------------------------
# Module size and one definition per name
# ---------------------------------------------------------------------------------------------------------------


def test_no_source_file_is_over_700_lines():
    long = {str(p.relative_to(ROOT)): n for p in sorted((ROOT / "src").rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines (split by concept, docs/DESIGN.md): {long}"


def test_no_top_level_name_is_defined_in_two_modules():
    where = defaultdict(set)
    for rel in _modules().values():
        for node in ast.parse((PACKAGE / rel).read_text(), filename=rel).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                where[node.name].add(rel)
    found = {name: mods for name, mods in where.items() if len(mods) > 1}
    expected = MIRRORED | KNOWN_DUPLICATES
    new = {name: sorted(mods) for name, mods in found.items() if expected.get(name) != mods}
    stale = {name: sorted(mods) for name, mods in expected.items() if found.get(name) != mods}
    assert not new, f"defined in more than one module (keep one and import it): {new}"
    assert not stale, f"no longer defined in exactly these modules: remove or update their entries here: {stale}"


# ---------------------------------------------------------------------------------------------------------------
# The module maps of README.md and docs/DESIGN.md
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where, mentions", [("README.md, 'What is where'", _readme_mentions),
                                             ("docs/DESIGN.md, 'Module map'", _design_mentions)])
def test_module_maps_name_every_module_and_only_modules(where, mentions):
    modules = _modules()
    tokens = mentions()
    named = {_resolve(t, modules) for t in tokens}
    unknown = sorted(t for t in tokens if _resolve(t, modules) is None)
    missing = sorted(m for m in modules if m not in named)
    assert not unknown, f"{where} names modules that do not exist: {unknown}"
    assert not missing, f"{where} does not name these modules of src/diractrap: {missing}"


# ---------------------------------------------------------------------------------------------------------------
# The output directories: in the checkout, each with a README saying what lands there
# ---------------------------------------------------------------------------------------------------------------


def _ignored(rel: str) -> bool:
    """Whether .gitignore keeps ``rel`` out of commits (the path need not exist); skips outside a git checkout."""
    res = subprocess.run(["git", "check-ignore", "-q", "--no-index", rel], cwd=ROOT, capture_output=True)
    if res.returncode not in (0, 1):
        pytest.skip(f"not a git checkout: {res.stderr.decode().strip()}")
    return res.returncode == 0


@pytest.mark.parametrize("directory", ["data", "results", "figures"])
def test_output_directory_is_in_the_checkout_with_a_readme(directory):
    readme = ROOT / directory / "README.md"
    assert readme.is_file(), f"{readme.relative_to(ROOT)} is missing"
    assert not _ignored(f"{directory}/README.md"), f"{directory}/README.md is ignored: it would never be committed"
    for generated in ("x.csv", "sub/x.pdf", "x.npz.part"):  # what the workflow writes there stays out of git
        assert _ignored(f"{directory}/{generated}"), f"{directory}/{generated} is not ignored"
