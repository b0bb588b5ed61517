"""The Snakemake workflow, run for real in clean copies of the repository.

Lint; the paper's DAG resolved offline; config errors named at parse time; the demo end to end (five figures, the
Statement 1 table, nothing left to do, one figure redrawn alone, the report); a reduced demo interrupted during a
sweep job and resumed; the same reduced demo through a one-node SLURM cluster (sbatch), compared with a local run.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT

REDUCED = {  # a few seconds per job: 2 families x 2 chunks of 2 images, 3 thetas each
    "image_sets": {"demo32": {"source": "demo", "split": "test", "resolution": 32, "count": 4}},
    "sweep": {"chunk": 2, "families": [{"family": "gaussian", "thetas": [0, 1.0, 2.0]},
                                       {"family": "defocus", "thetas": [0, 1.0, 2.0]}],
              "potential": {"solver": "heun", "steps": 12, "n_probes": 1}},  # given: no calibration job
    "figures": {"fig1": {"thetas": [0, 1.0, 2.0]}},  # Figure 1's thetas must lie on the sweep's grid
}
REDUCED_TARGET = "results/potential/demo.parquet"


def clean_copy(dst: Path) -> Path:
    """The repository as a fresh clone would have it: tracked and not-ignored files only (no results, caches)."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                         capture_output=True).stdout.decode()
    for rel in filter(None, out.split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


def environment(repo: Path, **extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(repo / "src"), HF_HUB_OFFLINE="1", **extra)  # the copy's library
    env.pop("DIRACTRAP_CHECKPOINTS", None)
    return env


def default_signals() -> None:
    """In a child before exec: SIGINT, SIGTERM and SIGHUP back to their default dispositions.

    A background job of a non-interactive shell (``nohup make test &``, a scheduler) starts with SIGINT ignored, and
    an ignored disposition survives exec: snakemake would never see the Ctrl-C a test sends it.
    """
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def spawn(args, **kwargs) -> subprocess.Popen:
    """Popen in a new process group with default signal dispositions, however the test session was started."""
    return subprocess.Popen(args, start_new_session=True, preexec_fn=default_signals, **kwargs)


def snakemake(repo: Path, *args, timeout=120, env=None, check=True) -> subprocess.CompletedProcess:
    """Run snakemake in ``repo`` in its own process group; on timeout the whole group is killed (jobs included)."""
    p = spawn([sys.executable, "-m", "snakemake", *args], cwd=repo, env=env or environment(repo),
              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        pytest.fail(f"snakemake {' '.join(args)} ran over {timeout} s:\n{out[-3000:]}")
    result = subprocess.CompletedProcess(p.args, p.returncode, out, "")
    if check and p.returncode != 0:
        pytest.fail(f"snakemake {' '.join(args)} failed ({p.returncode}):\n{out[-5000:]}")
    return result


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a snakemake run or dry run."""
    block = output.split("Job stats:")[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M) if m[1] != "total"}


@pytest.fixture(scope="module")
def repo_factory(tmp_path_factory):
    def make(name):
        return clean_copy(tmp_path_factory.mktemp(name))
    return make


def _snapshot(repo: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file outside .snakemake/ (snakemake's own bookkeeping)."""
    return {str(p.relative_to(repo)): (p.stat().st_size, p.stat().st_mtime_ns) for p in repo.rglob("*")
            if p.is_file() and p.relative_to(repo).parts[0] != ".snakemake"}


@pytest.fixture(scope="module")
def parse_repo(repo_factory):
    """One clean copy shared by the parse-time tests (lint, dry runs): they read it and write nothing into it, which
    is checked when the module's tests are done. A test that runs jobs or writes a file takes its own copy."""
    repo = repo_factory("parse")
    before = _snapshot(repo)
    yield repo
    after = _snapshot(repo)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"a parse-time test wrote into the shared copy: {changed[:10]}"


# ---------------------------------------------------------------------------------------------------------------
# Parse-time checks: lint, the paper's DAG, config validation
# ---------------------------------------------------------------------------------------------------------------


def test_lint_is_clean(parse_repo):
    out = snakemake(parse_repo, "--lint").stdout
    assert "Lints for" not in out, out


def test_paper_dag_resolves_offline(parse_repo, capsys):
    repo = parse_repo
    out = snakemake(repo, "-n", "--configfile", "config/paper.yaml").stdout
    counts = job_counts(out)
    with capsys.disabled():
        print("\npaper DAG:", ", ".join(f"{k} {v}" for k, v in counts.items()), f"(total {sum(counts.values())})")
    paper = yaml.safe_load((repo / "config/paper.yaml").read_text())
    models, families = paper["sweep"]["models"], paper["sweep"]["families"]
    chunks = sum(-(-paper["image_sets"][paper["models"][m]["images"]]["count"] // paper["sweep"]["chunk"])
                 for m in models)
    assert counts["sweep_chunk"] == chunks * len(families)
    assert counts["merge_sweep"] == len(models)
    # one batched job per complete run and start (all pairs), plus the continuation from the wide start of each; a
    # run that selects pairs and starts (Figure 4's long block) one job per pair and start
    d = paper["deconv"]
    complete = [r for r in d["runs"] if not {"pairs", "starts"} & set(d["algorithm1"][r])]
    assert counts["algorithm1"] == len(complete) * (len(d["starts"]) + 1)
    assert counts.get("algorithm1_pair", 0) == sum(len(d["algorithm1"][r]["pairs"]) * len(d["algorithm1"][r]["starts"])
                                                   for r in d["runs"] if r not in complete)
    # one download per prior, one image set per model's images, one download per shard its selection plans (the
    # FFHQ-256 and -64 sets share theirs)
    from diractrap.datasets import plan_shards

    image_sets = {paper["models"][m]["images"] for m in models}
    assert counts["download_checkpoint"] == len({paper["models"][m]["prior"] for m in models})
    assert counts["image_set"] == len(image_sets)
    planned = {s for name in image_sets for s in plan_shards(paper["image_sets"][name]["source"],
                                                             paper["image_sets"][name]["count"])}
    assert counts["dataset_shard"] == len(planned)
    assert all(counts[f"fig{i}"] == 1 for i in range(1, 6)) and counts["statement1"] == 1
    assert "demo" not in "".join(re.findall(r"output: (.*)", out))  # the paper's selections replace the demo's
    assert [p.name for p in (repo / "data").iterdir()] == ["README.md"]  # nothing was downloaded while parsing


@pytest.mark.parametrize("overlay, named", [
    ({"sweep": {"chunck": 4}}, "chunck"),  # a misspelt key
    ({"sweep": {"chunk": "four"}}, "chunk"),  # a wrong type
    ({"deconv": {"algorithm1": {"authors-demo": {"n_ext": 2.5}}}}, "n_ext"),
    ({"deconv": {"algorithm1": {"authors-demo": {"gamma_h_scale": 3}}}}, "gamma_h_scale"),  # above 2 / L_h
    ({"deconv": {"runs": ["authors-demo", "nonexistent"]}}, "deconv.runs[1]"),
    ({"figures": {"fig3": {"models": ["nonexistent"]}}}, "figures.fig3.models[0]"),  # a dangling reference
    ({"figures": {"fig4": {"blocks": [{"run": "authors-demo", "pair": 2, "start": "wide", "iterations": [300]}]}}},
     "figures.fig4.blocks[0].iterations: [300] lie beyond"),  # the run stops at n_ext = 200
    ({"figures": {"fig4": {"blocks": [{"run": "authors-demo", "pair": 2, "start": "wide", "iterations": [30]}]}}},
     "figures.fig4.blocks[0].iterations: [30] are not in deconv.snapshots"),
    ({"sweeep": 3}, "config key sweeep: unknown key; allowed under (top level): " + ", ".join(sorted(
        yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())["properties"]))),  # was 666 lines
    ({"models": {"demo": {"prior": "demoo"}}}, "models.demo.prior: 'demoo' is neither a registered prior"),  # was a
])                                                                               # missing input file
def test_config_errors_name_the_key(parse_repo, tmp_path, overlay, named):
    bad = tmp_path / "bad.yaml"  # outside the shared copy: private to this case
    bad.write_text(yaml.safe_dump(overlay))
    res = snakemake(parse_repo, "-n", "--configfile", str(bad), check=False)
    assert res.returncode != 0
    assert named in res.stdout, res.stdout[-2000:]
    assert len(res.stdout.splitlines()) <= 12, res.stdout[-3000:]  # a few lines, never the schema


# ---------------------------------------------------------------------------------------------------------------
# The demo, end to end from a clean copy (what `make demo` runs)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(repo_factory):
    repo = repo_factory("demo")
    start = time.monotonic()
    out = snakemake(repo, timeout=1500).stdout
    print(f"\ndemo workflow: {time.monotonic() - start:.0f} s wall, {sum(job_counts(out).values())} jobs")
    return repo


@pytest.mark.slow  # the whole demo workflow: minutes on 2 cores (the acceptance test of `make demo`)
def test_demo_writes_five_figures_and_the_statement1_table(demo):
    config = yaml.safe_load((demo / "config/demo.yaml").read_text())
    for i in range(1, 6):
        for fmt in config["figures"]["formats"]:
            assert (demo / f"figures/fig{i}.{fmt}").stat().st_size > 1000
    s1 = pd.read_csv(demo / "results/deconv/demo/statement1.csv")
    assert len(s1) == len(config["deconv"]["pairs"])
    assert {"L_true", "L_delta", "L_hat", "delta_beats_true"} <= set(s1.columns)
    a1 = pd.read_csv(demo / "results/deconv/demo/algorithm1.csv")
    d = config["deconv"]
    assert len(a1) == len(d["runs"]) * len(d["pairs"]) * (len(d["starts"]) + 1)  # + the continuation
    assert set(a1["preset"]) == {d["algorithm1"][r]["preset"] for r in d["runs"]}
    assert {"run", "start", "kernel_error", "final_grad_x_rel", "max_step_L"} <= set(a1.columns)
    records = json.loads((demo / "results/deconv/demo/algorithm1.provenance.json").read_text())
    assert set(a1["provenance"]) <= set(records)  # every row's key names a record, written once beside the table
    assert all(records[k]["sha256"] == sha for k, sha in zip(a1["provenance"], a1["checkpoint_sha256"]))
    table = pd.read_parquet(demo / "results/potential/demo.parquet")
    n_thetas = sum(len(f["thetas"]) for f in config["sweep"]["families"])
    n_priors = 1 + len(config["sweep"].get("baselines", []))  # the diffusion prior's rows and each baseline's
    assert len(table) == config["image_sets"]["demo32"]["count"] * n_thetas * n_priors
    assert set(table["prior"]) == {"diffusion", *config["sweep"].get("baselines", [])}
    assert not list(demo.rglob("*.part"))  # no temporary file left behind
    assert "Nothing to be done" in snakemake(demo, "-n").stdout


@pytest.mark.slow  # needs the demo run above
def test_one_figure_is_redrawn_from_cached_tables_alone(demo):
    for f in (demo / "figures").glob("fig3.*"):
        f.unlink()
    assert job_counts(snakemake(demo, "-n", "fig3").stdout) == {"fig3": 1}
    snakemake(demo, "fig3")
    assert (demo / "figures/fig3.pdf").is_file()
    assert "Nothing to be done" in snakemake(demo, "-n").stdout


@pytest.mark.slow  # needs the demo run above
def test_report_has_a_caption_per_figure(demo):
    snakemake(demo, "--report", "report.html", timeout=300)
    html = (demo / "report.html").read_text(errors="replace")
    for i in range(1, 6):
        assert f"fig{i}.png" in html
    assert "Figure 3" in html


# ---------------------------------------------------------------------------------------------------------------
# A reduced demo: interrupted and resumed, and through SLURM, each equal to an uninterrupted local run
# ---------------------------------------------------------------------------------------------------------------


def reduced_repo(repo_factory, name) -> Path:
    repo = repo_factory(name)
    (repo / "reduced.yaml").write_text(yaml.safe_dump(REDUCED))
    return repo


@pytest.fixture(scope="module")
def reduced_reference(repo_factory):
    repo = reduced_repo(repo_factory, "reference")
    snakemake(repo, REDUCED_TARGET, "--configfile", "reduced.yaml", timeout=600)
    return pd.read_parquet(repo / REDUCED_TARGET)


def _interrupt_during_a_sweep_job(repo: Path, sig) -> None:
    """Start the reduced run and send ``sig`` to its process group while a sweep job is running."""
    p = spawn([sys.executable, "-m", "snakemake", REDUCED_TARGET, "--cores", "1", "--configfile", "reduced.yaml"],
              cwd=repo, env=environment(repo), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    logs, deadline = repo / "results/logs/sweep/demo", time.monotonic() + 300
    try:
        while time.monotonic() < deadline:  # a job is running: its log exists, its table does not
            running = [log for log in logs.glob("*/chunk*.log")
                       if not (repo / "results/potential/demo" / log.parent.name / f"{log.stem}.parquet").exists()]
            if running:
                time.sleep(1.0)  # well inside the job: its network is evaluating
                break
            assert p.poll() is None, "the run ended before a sweep job could be interrupted"
            time.sleep(0.1)
        else:
            pytest.fail("no sweep job started within 300 s")
        os.killpg(p.pid, sig)
        p.wait(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    for table in (repo / "results/potential").rglob("*.parquet"):  # whatever exists is complete
        pd.read_parquet(table)


def test_ctrl_c_reaches_a_child_even_when_the_session_ignores_it():
    """`nohup pytest &` starts with SIGINT ignored; the children that tests interrupt must still receive it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a background job of a non-interactive shell
    try:
        p = spawn([sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)"],
                  stdout=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        assert p.stdout.readline().strip() == "ready"  # Python has installed its SIGINT handler by now
        os.killpg(p.pid, signal.SIGINT)
        rc = p.wait(timeout=20)  # an ignored SIGINT would leave it sleeping for 60 s
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert rc != 0  # KeyboardInterrupt: status 1 (or -SIGINT), never a clean exit


@pytest.mark.slow  # three partial runs of the reduced demo (~1-2 minutes)
def test_interrupted_sweep_resumes_to_identical_tables(repo_factory, reduced_reference):
    repo = reduced_repo(repo_factory, "interrupt")
    _interrupt_during_a_sweep_job(repo, signal.SIGINT)  # Ctrl-C: snakemake stops its jobs and cleans up
    _interrupt_during_a_sweep_job(repo, signal.SIGKILL)  # a hard kill of everything (power cut, OOM killer)
    assert not (repo / REDUCED_TARGET).exists()
    snakemake(repo, REDUCED_TARGET, "--configfile", "reduced.yaml", timeout=600)
    pd.testing.assert_frame_equal(pd.read_parquet(repo / REDUCED_TARGET), reduced_reference)


# ---------------------------------------------------------------------------------------------------------------
# SLURM for real: slurmctld + slurmd + munge on this machine (.ci/slurm.sh), the workflow through the slurm profile
# ---------------------------------------------------------------------------------------------------------------


def _slurm_available() -> str | None:
    missing = [exe for exe in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "runuser") if not shutil.which(exe)]
    if missing:
        return f"SLURM binaries missing: {', '.join(missing)} (apt-get install slurmctld slurmd slurm-client munge)"
    if os.geteuid() != 0:
        return "starting munged and slurmd needs root"
    return None


@pytest.mark.slow  # starts a cluster and runs 4 jobs through sbatch (~1 minute)
def test_reduced_demo_through_slurm_equals_the_local_run(repo_factory, reduced_reference, tmp_path):
    why = _slurm_available()
    if why:
        if os.environ.get("DIRACTRAP_REQUIRE_SLURM") == "1":
            pytest.fail(f"DIRACTRAP_REQUIRE_SLURM=1 but {why}")
        pytest.skip(why)
    repo = reduced_repo(repo_factory, "slurm")
    cluster = tmp_path / "slurm"
    env = environment(repo)
    env.pop("SLURM_CONF", None)  # the cluster's config is at the default place (.ci/slurm.sh says why)
    up = subprocess.run(["timeout", "-k", "10", "90", "bash", str(repo / ".ci/slurm.sh"), "start", str(cluster)],
                        env=env, capture_output=True, text=True)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        out = snakemake(repo, REDUCED_TARGET, "--profile", "profiles/slurm", "--configfile", "reduced.yaml",
                        env=env, timeout=900).stdout
        submitted = re.findall(r"_slurm_rpc_submit_batch_job: JobId=(\d+)", (cluster / "log/slurmctld.log").read_text())
        assert len(submitted) == job_counts(out)["sweep_chunk"] == 4, out[-3000:]  # every sweep job went to sbatch
        for job_id in submitted:  # and snakemake tracked each one by its SLURM job id
            assert re.search(rf"has been submitted with SLURM jobid {job_id}\b", out), f"job {job_id}: {out[-3000:]}"
        pd.testing.assert_frame_equal(pd.read_parquet(repo / REDUCED_TARGET), reduced_reference)
    finally:
        subprocess.run(["timeout", "-k", "10", "60", "bash", str(repo / ".ci/slurm.sh"), "stop", str(cluster)])


def test_schema_knows_every_algorithm1_parameter():
    """A run's keys are a preset name, Algorithm1Params' fields (sigma excepted: it is deconv.sigma) and the
    selection of pairs and starts it runs (common.smk's RUN_SELECTIONS, popped before the preset is built)."""
    import dataclasses

    from diractrap.deconv import PRESETS, Algorithm1Params

    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    run = schema["$defs"]["algorithm1_run"]["properties"]
    selections = {"pairs", "starts"}
    assert set(run) == {f.name for f in dataclasses.fields(Algorithm1Params)} - {"sigma"} | {"preset"} | selections
    assert not selections & {f.name for f in dataclasses.fields(Algorithm1Params)}  # never a parameter's name
    assert set(run["preset"]["enum"]) == set(PRESETS)
