"""The paper-run cost scripts: the work counted from config/paper.yaml (closed forms), the FLOP projection's
arithmetic, and the GPU check's dry path on the CPU (tiny networks)."""

import json
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import paper_costs  # noqa: E402


@pytest.fixture(scope="module")
def paper():
    return paper_costs.load_config(ROOT / "config/paper.yaml")


def test_config_is_merged_as_snakemake_merges_it():
    demo = yaml.safe_load((ROOT / "config/demo.yaml").read_text())
    paper = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
    merged = paper_costs.load_config(ROOT / "config/paper.yaml")
    assert merged["sweep"]["families"] == paper["sweep"]["families"]  # lists are replaced
    assert set(merged["models"]) == set(demo["models"]) | set(paper["models"])  # dictionaries are merged
    for key, value in demo["deconv"]["algorithm1"].items():  # keys paper.yaml does not set come from the demo
        assert merged["deconv"]["algorithm1"][key] == paper["deconv"]["algorithm1"].get(key, value)


def test_work_counts_follow_the_config(paper):
    nfe = 100
    fp32 = paper_costs.fp32_config(paper)  # the run as costed before calibration
    work = paper_costs.paper_work(fp32, nfe)
    sweep, d = fp32["sweep"], fp32["deconv"]
    thetas = sum(len(f["thetas"]) for f in sweep["families"])
    probes = sweep["potential"]["n_probes"]
    for m in sweep["models"]:
        images = fp32["image_sets"][fp32["models"][m]["images"]]["count"]
        w = work[f"sweep_chunk {m}"]
        assert w["forwards"] == images * thetas * nfe and w["vjps"] == probes * w["forwards"]
        assert w["jobs"] == -(-images // sweep["chunk"]) * len(sweep["families"]) and w["precision"] == "fp32"
    # the paper's runs, written out from their definitions: 'authors' does max(10, floor(50 - k 40/15)) DR steps at
    # kernel step k after each reset of 100, plus one final D(z) per kernel step; 'paper' 10 gradient steps
    import numpy as np

    assert d["runs"] == ["authors", "paper", "authors-4300"] and d["continuation"]["n_ext"] == 1000
    per_reset = np.maximum(10, np.floor(50 - np.arange(100) * 40 / 15)) + 1
    authors = {n_ext: int(per_reset.sum() * n_ext // 100) for n_ext in (3000, 1000, 4300)}
    paper_steps = {n_ext: 10 * n_ext for n_ext in (3000, 1000)}
    pairs, starts = len(d["pairs"]), len(d["starts"])
    want = sum(pairs * starts * w[3000] + pairs * w[1000] for w in (authors, paper_steps))
    long_run = {k: v for k, v in d["algorithm1"]["authors-4300"].items() if k != "precision"}  # fp32_config's
    assert long_run == {"preset": "authors", "n_ext": 4300, "pairs": [2], "starts": ["small"]}
    want += authors[4300]  # Figure 4's long block: one problem, one job
    assert work["algorithm1"]["forwards"] == want
    assert work["algorithm1"]["jobs"] == 2 * (starts + 1) + 1 and work["algorithm1"]["vjps"] == 0
    pairs = len(d["pairs"])
    assert work["statement1"]["forwards"] == pairs * d["statement1"]["n_iter_delta"] + 3 * pairs * nfe


def test_calibrated_work_adds_the_calibration_and_the_audits(paper, tmp_path):
    nfe = 100
    table = tmp_path / "demo.calibration.csv"  # two candidates that meet: bf16 is cheaper on an H100, not on a CPU
    table.write_text("solver,steps,n_probes,precision,nfe,forward_equivalents,meets,reference\n"
                     "heun,16,1,fp32,32,64,True,False\nheun,16,1,bf16,32,64,True,False\n"
                     "heun,8,1,bf16,16,32,False,False\ntsit5,-1,8,fp32,180,1620,True,True\n")
    choice = paper_costs.sweep_choice(paper, nfe, table)
    assert (choice["nfe"], choice["n_probes"], choice["precision"]) == (32, 1, "bf16")
    work = paper_costs.paper_work(paper, nfe, choice)
    sweep = paper["sweep"]
    cal = sweep["calibration"]
    thetas = sum(len(f["thetas"]) for f in sweep["families"])
    t_cal = len(next(f["thetas"] for f in sweep["families"] if f["family"] == cal["family"]))
    for m in sweep["models"]:
        images = paper["image_sets"][paper["models"][m]["images"]]["count"]
        w = work[f"sweep_chunk {m}"]
        assert (w["forwards"], w["vjps"], w["precision"]) == (images * thetas * 32, images * thetas * 32, "bf16")
        ref = work[f"calibrate {m} (reference)"]
        assert ref["forwards"] == len(cal["images"]) * t_cal * nfe and ref["vjps"] == 8 * ref["forwards"]
        chunks = -(-images // sweep["chunk"]) * len(sweep["families"])
        audit = work[f"audit {m}"]  # the smallest step of one image per chunk, at the reference's settings
        assert audit["forwards"] == chunks * 2 * nfe and audit["vjps"] == 8 * audit["forwards"]


def test_projection_is_flops_over_the_assumed_rate_of_each_precision(paper):
    gflop = {k: {"forward_GFLOP": 10.0, "forward_vjp_GFLOP": 25.0} for k in ("ncsnpp", "ddpmpp", "adm")}
    tflops = {"fp32": 20.0, "tf32": 50.0, "bf16": 100.0, "fp16": 100.0}
    choice = dict(nfe=32, n_probes=1, precision="bf16", source="test")
    rows = {r["kind"]: r for r in paper_costs.projection(paper, gflop, 50, tflops, choice)}
    for kind, w in paper_costs.paper_work(paper, 50, choice).items():
        flop = 1e9 * (10.0 * w["forwards"] + 15.0 * w["vjps"])  # a VJP costs forward+VJP - forward
        rate = tflops[w["precision"]] * 1e12
        assert rows[kind]["gpu_hours"] == pytest.approx(flop / rate / 3600, rel=1e-12)
        assert rows[kind]["minutes_per_job"] == pytest.approx(flop / rate / 60 / max(w["jobs"], 1), rel=1e-12)


def test_gpu_check_dry_path_runs_on_the_cpu(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_paper_check.py"), "--device", "cpu", "--quick",
                          "--precisions", "fp32", "bf16", "--out", str(tmp_path / "check.json")],
                         capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    # 3 networks x 2 precisions x 2 batches, the potential in 2 precisions, Algorithm 1 in fp32 and bf16
    assert len(rows) == 3 * 2 * 2 + 2 + 2
    for line in rows:
        ms = float(line.split("|")[4])
        assert 0 < ms < 60_000
    from diractrap.calibration import load_measurements

    data = json.loads((tmp_path / "check.json").read_text())
    for prior in ("ffhq256", "ffhq64", "afhq64", "imagenet64"):  # what a calibration reads, per prior
        seconds = load_measurements(tmp_path / "check.json", prior)
        assert set(seconds) == {"fp32", "bf16"} and all(v > 0 for v in seconds.values())
    potential = [r for r in data["rows"] if r["kind"] == "potential"]
    assert [r["precision"] for r in potential] == ["fp32", "bf16"] and potential[0]["dq"] == 0
