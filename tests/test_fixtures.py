"""The golden fixtures (tests/fixtures/golden) are what their README says: byte for byte the files the runs of the
original codes wrote (checked against SHA256SUMS and against the hashes those runs recorded themselves), and EDM
snapshot pickles that carry no source code (checked on the pickle's bytes and opcodes; nothing is unpickled)."""

import hashlib
import json
import pickletools
import re

from conftest import GOLDEN

NOT_FIXTURES = {"README.md", "SHA256SUMS", ".gitattributes"}  # the directory's own documentation and settings
# Longest run of printable ASCII allowed in a snapshot pickle. The placeholder that replaced the source is 70
# characters; the source a real EDM snapshot embeds (training/networks.py) is one string of about 36,000 characters,
# and the longest name of a class, module or attribute in the fixtures is 35.
MAX_TEXT_RUN = 200
# A line of Python that defines or imports something: what embedded module source is made of.
SOURCE_LINE = re.compile(r"^[ \t]*(def |class |import |from \S+ import |@)", re.M)


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _listed() -> dict[str, str]:
    """{file name: sha256} from SHA256SUMS (``sha256sum`` format: ``sha256sum -c SHA256SUMS`` checks it too)."""
    rows = (line.split() for line in (GOLDEN / "SHA256SUMS").read_text().splitlines() if line.strip())
    return {name: digest for digest, name in rows}


def test_every_fixture_is_listed_and_has_its_checksum():
    listed = _listed()
    present = {p.name for p in GOLDEN.iterdir() if p.name not in NOT_FIXTURES}
    assert present == set(listed), {"not in SHA256SUMS": present - set(listed), "missing": set(listed) - present}
    changed = sorted(name for name, digest in listed.items() if _sha256(GOLDEN / name) != digest)
    assert not changed, f"fixtures changed since they were copied (they never should): {changed}"


def test_checksums_are_the_ones_the_original_runs_recorded():
    """edm_index.json and ncsnpp_ve_tiny_config.json were written by the runs of NVlabs/edm and score_sde that made
    the binary fixtures, with the size and sha256 of each: a record independent of SHA256SUMS."""
    recorded = {}
    for entry in json.loads((GOLDEN / "edm_index.json").read_text())["fixtures"].values():
        recorded.update(entry["files"])
    recorded.update(json.loads((GOLDEN / "ncsnpp_ve_tiny_config.json").read_text())["files"])
    listed = _listed()
    binaries = {name for name in listed if not name.endswith(".json")}
    assert set(recorded) == binaries, "every binary fixture has a record from the run that wrote it"
    for name, meta in recorded.items():
        assert listed[name] == meta["sha256"], name
        assert (GOLDEN / name).stat().st_size == meta["bytes"], name


def test_edm_snapshot_pickles_carry_no_source():
    pickles = sorted(GOLDEN.glob("*.pkl"))
    assert [p.name for p in pickles] == ["edm_adm_snapshot_nosrc.pkl", "edm_ddpmpp_snapshot_nosrc.pkl"]
    for path in pickles:
        data = path.read_bytes()
        runs = [m.group()[:80] for m in re.finditer(rb"[\t\n\r\x20-\x7e]{%d,}" % MAX_TEXT_RUN, data)]
        assert not runs, f"{path.name} holds text runs over {MAX_TEXT_RUN} characters (source?): {runs[:3]}"
        strings = [arg for _, arg, _ in pickletools.genops(data) if isinstance(arg, str)]  # read, never executed
        # a persistence snapshot (records with a module_src field), or the checks above would prove nothing
        assert "torch_utils.persistence" in strings and "module_src" in strings, path.name
        source = [s[:80] for s in strings if SOURCE_LINE.search(s)]
        assert not source, f"{path.name} holds Python source: {source[:3]}"
