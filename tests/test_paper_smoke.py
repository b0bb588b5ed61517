"""The paper's workflow executed: `snakemake --configfile config/paper.yaml config/smoke.yaml` from a clean copy, on
full-size stand-in checkpoints in their real formats (tests/standins.py: random weights) served from 127.0.0.1
through the real download code -- checkpoints from a mirror ($DIRACTRAP_MIRRORS), dataset shards from a local hub
($HF_ENDPOINT) -- then verified against pinned hashes, loaded, swept, Algorithm 1, Statement 1, the five figures.
And a corrupted stand-in on the mirror (a changed byte, a truncated copy) stops the download job with one line
naming the URL and the file, leaving no file behind.
"""

import json
import os
import resource
import shutil
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
import pytest
import yaml

from test_workflow import clean_copy, environment, job_counts, snakemake

pytestmark = pytest.mark.slow  # minutes: full-size networks at 256 x 256 on a CPU
MODELS = ["ffhq256", "imagenet64", "ffhq64", "afhq64"]  # the paper's panel order
CONFIGS = ["--configfile", "config/paper.yaml", "config/smoke.yaml", "pins.yaml"]


# ---------------------------------------------------------------------------------------------------------------
# The stand-ins and a server for them: /mirror/<file> (checkpoints), /datasets/<repo>/resolve/<rev>/<file> (a hub)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def standins():
    from standins import make_standins

    start = time.monotonic()
    manifest = make_standins()
    print(f"\nstand-ins: {manifest['root']} ({time.monotonic() - start:.0f} s)")
    return manifest


class _Handler(SimpleHTTPRequestHandler):
    """Files under ``mirror`` at /mirror/..., under ``hub`` at /datasets/...; the hub's headers on every answer
    (huggingface_hub reads the ETag and the commit of a file before fetching it)."""

    mirror: Path
    hub: Path

    def translate_path(self, path):
        path = unquote(path.split("?", 1)[0])
        if path.startswith("/mirror/"):
            return str(self.mirror / path.removeprefix("/mirror/"))
        if path.startswith("/datasets/"):
            return str(self.hub / path.removeprefix("/"))
        return str(self.mirror / "nonexistent")

    def end_headers(self):
        parts = self.path.split("/")
        if "resolve" in parts:
            self.send_header("X-Repo-Commit", parts[parts.index("resolve") + 1])
        self.send_header("ETag", f'"{abs(hash(self.path))}"')
        super().end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    servers = []

    def start(mirror: Path, hub: Path) -> str:
        handler = type("Handler", (_Handler,), {"mirror": Path(mirror), "hub": Path(hub)})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(mirror)))
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def smoke_repo(tmp_path: Path, standins: dict) -> Path:
    """A clean copy with pins.yaml: each model's checkpoint hash pinned to its stand-in's."""
    repo = clean_copy(tmp_path / "repo")
    pins = {"models": {m: {"sha256": standins["checkpoints"][m]["sha256"]} for m in MODELS}}
    (repo / "pins.yaml").write_text(yaml.safe_dump(pins))
    return repo


def smoke_env(repo: Path, url: str, tmp_path: Path) -> dict:
    env = environment(repo, DIRACTRAP_MIRRORS=f"{url}/mirror", DIRACTRAP_MIRRORS_ONLY="1", HF_ENDPOINT=url,
                      HF_HOME=str(tmp_path / "hf-home"))
    env["HF_HUB_OFFLINE"] = "0"  # the local hub is the only one reachable (HF_ENDPOINT)
    return env


# ---------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------


def test_paper_workflow_runs_end_to_end_on_full_size_standins(standins, serve, tmp_path, capsys):
    root = Path(standins["root"])
    url = serve(root / "checkpoints", root / "hub")
    repo = smoke_repo(tmp_path, standins)
    env = smoke_env(repo, url, tmp_path)
    start, cpu0 = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    out = snakemake(repo, "--cores", "all", *CONFIGS, env=env, timeout=3000).stdout
    wall, cpu1 = time.monotonic() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)  # snakemake and every job it ran
    counts = job_counts(out)
    with capsys.disabled():
        print(f"\npaper smoke run: {wall:.0f} s wall, {cpu:.0f} CPU-s, {os.cpu_count()} cores, load average "
              f"{os.getloadavg()[0]:.1f}, {sum(counts.values())} jobs: " + ", ".join(f"{k} {v}" for k, v in counts.items()))

    paper = yaml.safe_load((repo / "config/paper.yaml").read_text())
    smoke = yaml.safe_load((repo / "config/smoke.yaml").read_text())
    # every checkpoint came through the mirror and is the stand-in, byte for byte (verified against the pins;
    # a pinned hash needs no lock record)
    from diractrap.models.download import sha256sum

    for m in MODELS:
        c = standins["checkpoints"][m]
        assert sha256sum(repo / "data/checkpoints" / c["file"]) == c["sha256"]
        assert (repo / "data/checkpoints" / c["file"]).stat().st_size == c["size"]
    from diractrap.datasets import plan_shards
    from test_config import resolved

    merged = resolved("demo.yaml", "paper.yaml", "smoke.yaml")
    sets = {merged["models"][m]["images"] for m in MODELS} | {merged["deconv"]["images"]}
    planned = {s for name in sets for s in plan_shards(merged["image_sets"][name]["source"],
                                                       merged["image_sets"][name]["count"])}
    assert counts["download_checkpoint"] == 4 and counts["dataset_shard"] == len(planned) == 22

    # the sweeps ran the real networks at their real resolutions on the files just downloaded
    n_thetas = sum(len(f["thetas"]) for f in smoke["sweep"]["families"])
    for m in MODELS:
        full = pd.read_parquet(repo / f"results/paper/potential/{m}.parquet")
        assert full.groupby("prior").size().to_dict() == {"diffusion": n_thetas}  # no baselines: paper's Figure 3
        table = full
        assert table["q"].notna().all()
        assert set(table["checkpoint_sha256"]) == {standins["checkpoints"][m]["sha256"]}
        assert set(table["family"]) == {"gaussian", "motion", "airy", "defocus"}
    assert set(pd.read_parquet(repo / "results/paper/potential/imagenet64.parquet")["label"]) != {-1}  # own class

    # Algorithm 1 at 256 x 256 with K = 21 for the paper's four pairs and two starts; the Statement 1 table
    runs = pd.read_csv(repo / "results/paper/deconv/ffhq256/algorithm1.csv")
    d = paper["deconv"]  # both presets, both starts and each run's continuation, for the four pairs; and the one
    assert len(runs) == 2 * len(d["pairs"]) * (len(d["starts"]) + 1) + 1 == 25  # problem of Figure 4's long block
    assert set(runs["preset"]) == {"authors", "paper"}
    assert runs[runs["run"] == "authors-4300"][["pair", "start"]].values.tolist() == [[2, "small"]]
    import numpy as np

    with np.load(repo / "results/paper/deconv/ffhq256/authors/pair0/wide.npz") as z:
        assert z["x"].shape[-2:] == (256, 256) and z["h"].shape[-2:] == (21, 21)
    s1 = pd.read_csv(repo / "results/paper/deconv/ffhq256/statement1.csv")
    assert len(s1) == 4 and s1[["L_true", "L_delta", "L_hat"]].notna().all().all()

    # the five figures, and Figure 3 with the paper's four model panels in the paper's order
    for i in range(1, 6):
        for fmt in paper["figures"]["formats"]:
            assert (repo / f"figures/paper/fig{i}.{fmt}").stat().st_size > 1000
    from diractrap import figures

    titles = [paper["models"][m]["title"] for m in paper["figures"]["fig3"]["models"]]
    panels = [(t, pd.read_parquet(repo / f"results/paper/potential/{m}.parquet")) for t, m in zip(titles, MODELS)]
    fig = figures.fig3(panels)
    shown = [ax.get_title() for ax in fig.axes if ax.axison]
    assert shown == [f"{t} (1 images)" for t in titles]

    check_figures_4_5(repo, merged, paper)

    assert not list(repo.rglob("*.part"))
    assert "Nothing to be done" in snakemake(repo, "-n", *CONFIGS, env=env).stdout


def check_figures_4_5(repo: Path, merged: dict, paper: dict) -> None:
    """Figures 4 and 5 redrawn from a run's files as their scripts draw them: the paper's blocks (with the smoke run's
    iterations) and the paper's rows and columns (tests/test_paper_figures.py holds the paper's layout)."""
    import numpy as np

    from diractrap import figures
    from diractrap.problems import pair_title
    from test_paper_figures import check_fig4, check_fig5

    d, out = merged["deconv"], repo / "results/paper/deconv/ffhq256"
    blocks = merged["figures"]["fig4"]["blocks"]
    assert [(b["run"], b["pair"], b["start"]) for b in blocks] == [(b["run"], b["pair"], b["start"])
                                                                    for b in paper["figures"]["fig4"]["blocks"]]
    drawn = []
    for b in blocks:
        with np.load(out / f"pair{b['pair']}/problem.npz") as z:
            truth = {k: z[k] for k in ("x_true", "h_true", "y")}
        drawn.append(dict(truth, run=figures.load_run(out / f"{b['run']}/pair{b['pair']}/{b['start']}.npz"),
                          iterations=b["iterations"], label=f"{pair_title(d['pairs'][b['pair']])}, {b['start']} start"))
    check_fig4(figures.fig4(drawn), blocks, d["pairs"])
    columns = []
    for p in paper["figures"]["fig5"]["pairs"]:
        r = figures.load_run(out / f"{paper['figures']['fig5']['run']}/pair{p}/wide.npz")
        with np.load(out / f"pair{p}/problem.npz") as z:
            columns.append(dict(x_true=z["x_true"], h_true=z["h_true"], y=z["y"], x_hat=r["x"][0], h_hat=r["h"][0]))
    check_fig5(figures.fig5(columns), len(d["pairs"]))


# ---------------------------------------------------------------------------------------------------------------
# Corrupted files on the mirror
# ---------------------------------------------------------------------------------------------------------------


def test_corrupted_standins_on_the_mirror_stop_with_one_line(standins, serve, tmp_path):
    root = Path(standins["root"])
    bad = tmp_path / "bad-mirror"
    bad.mkdir()
    truncated, changed = standins["checkpoints"]["ffhq64"]["file"], standins["checkpoints"]["afhq64"]["file"]
    with open(root / "checkpoints" / truncated, "rb") as f:  # the first third of the file, served completely
        (bad / truncated).write_bytes(f.read(standins["checkpoints"]["ffhq64"]["size"] // 3))
    shutil.copyfile(root / "checkpoints" / changed, bad / changed)  # the same size, one byte changed
    with open(bad / changed, "r+b") as f:
        f.seek(standins["checkpoints"]["afhq64"]["size"] // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    url = serve(bad, root / "hub")
    repo = smoke_repo(tmp_path, standins)
    targets = [f"data/checkpoints/{truncated}", f"data/checkpoints/{changed}"]
    res = snakemake(repo, *targets, "--cores", "2", "--keep-going", *CONFIGS, env=smoke_env(repo, url, tmp_path),
                    check=False)  # targets first: --configfile takes every argument after it
    assert res.returncode != 0, res.stdout[-3000:]
    for name in (truncated, changed):
        log = (repo / f"results/paper/logs/checkpoint/{name}.log").read_text()
        last = log.strip().splitlines()[-1]
        assert last.startswith("DownloadError: ") and f"the file from {url}/mirror/{name} has " in last, log[-2000:]
        assert str(repo / "data/checkpoints" / name) in last and "expected hash pinned" in last
        assert "Traceback" not in log
        assert not (repo / "data/checkpoints" / name).exists()
        assert not (repo / "data/checkpoints" / f"{name}.part").exists()
    lock = repo / "data/checkpoints/checkpoints.lock"
    assert not lock.exists() or not set(json.loads(lock.read_text())) & {truncated, changed}
