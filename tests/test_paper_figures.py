"""The paper's figures as the paper draws them.

Each figure of config/paper.yaml (merged on config/demo.yaml as snakemake merges them) is drawn from small synthetic
tables of the workflow's schemas at the config's settings, its layout is read back from the drawn axes, and compared
with PAPER_LAYOUT: the paper's layout as its text states it (the captions and column headers of the GRETSI 2025
version; arXiv:2508.02923 is the long one). tests/test_paper_smoke.py reads the smoke run's Figures 4-5 with the
same readers.
"""

import numpy as np
import pandas as pd
import pytest

from diractrap import figures
from diractrap.datasets import DATASETS, ImageSet
from diractrap.deconv import _snapshot_set, preset
from diractrap.problems import pair_kernel, pair_title
from test_config import resolved

FAMILIES = ["gaussian", "motion", "airy", "defocus"]
PAPER_LAYOUT = {
    # "FIGURE 1 : Variation du potentiel q(hθ ⋆ x) avec un flou gaussien": one image, Gaussian blur
    "fig1": {"family": "gaussian", "images": 1},
    # "FIGURE 2 : ... De haut en bas : gaussien, mouvement, Airy, défocalisation."
    "fig2": {"rows": FAMILIES},
    # "FIGURE 3 : ... En haut : FFHQ-256, ImageNet-64. En bas : FFHQ-64 et AFHQ-64." One curve per family, the
    # diffusion priors only
    "fig3": {"grid": [["ffhq256", "imagenet64"], ["ffhq64", "afhq64"]], "curves": FAMILIES, "baselines": False},
    # "FIGURE 4": four blocks "Initialisation  Iteration: ...  Vrai signal"; the iterations of each block
    "fig4": {"first": "Initialisation", "last": "true signal", "rows": ["x", "h"], "blocks": [
        [200, 400, 600, 900, 1300, 1700, 2300, 2600, 2900],
        [200, 400, 600, 900, 1300, 1700, 2300, 3300, 4300],
        [100, 200, 300, 400, 500, 700, 900, 1600, 2100],
        [100, 200, 300, 400, 500, 700, 900, 1600, 2100]],
        "starts": {"wide", "small"}},  # "l'influence de l'initialisation": both starts appear
    # "FIGURE 5": rows x̄, h̄, y, x̂, ĥ; "On utilise 4 noyaux de convolution différents"; wide start; FFHQ-256
    "fig5": {"rows": ["x̄", "h̄", "y", "x̂", "ĥ"], "columns": 4, "start": "wide", "model": "ffhq256"},
}


@pytest.fixture(scope="module")
def paper():
    return resolved("demo.yaml", "paper.yaml")


# ---------------------------------------------------------------------------------------------------------------
# Layout readers: what a drawn figure shows, read from its axes
# ---------------------------------------------------------------------------------------------------------------


def fig4_layout(fig) -> list[dict]:
    """Figure 4's blocks as drawn: per block its column titles (on the image row), its label and its row count.
    Axes come in pairs per column (x, then h), block after block."""
    blocks = []
    for ax_x, ax_h in zip(fig.axes[::2], fig.axes[1::2]):
        assert ax_x.get_images() and ax_h.get_images()  # every column has an image row and a kernel row
        if ax_x.get_title() == "Initialisation":
            label = [t.get_text() for t in ax_x.texts]
            blocks.append({"titles": [], "label": label[0], "rows": [ax_x.get_ylabel(), ax_h.get_ylabel()]})
        blocks[-1]["titles"].append(ax_x.get_title())
    return blocks


def fig5_layout(fig) -> dict:
    top = fig.axes[0].get_position().y0
    n_cols = sum(1 for ax in fig.axes if ax.get_position().y0 == top)  # the panels of the first row
    rows = [ax.get_ylabel() for ax in fig.axes[::n_cols]]
    return {"rows": rows, "columns": n_cols, "titles": [ax.get_title() for ax in fig.axes[:n_cols]]}


def check_fig4(fig, blocks_config, pairs):
    """Figure 4 drawn from ``blocks_config`` has the paper's structure: per block the Initialisation column, the
    configured iterations, the true signal; two rows (x, h); a label naming the pair's kernel and the start."""
    layout = fig4_layout(fig)
    assert len(layout) == len(blocks_config)
    for got, block in zip(layout, blocks_config):
        assert got["titles"] == [PAPER_LAYOUT["fig4"]["first"], *[f"n = {n}" for n in block["iterations"]],
                                 PAPER_LAYOUT["fig4"]["last"]]
        assert got["rows"] == PAPER_LAYOUT["fig4"]["rows"]
        assert pair_title(pairs[block["pair"]]) in got["label"] and f"{block['start']} start" in got["label"]


def check_fig5(fig, n_columns):
    layout = fig5_layout(fig)
    assert layout["rows"] == PAPER_LAYOUT["fig5"]["rows"] and layout["columns"] == n_columns


# ---------------------------------------------------------------------------------------------------------------
# Synthetic tables of the workflow's schemas, at the config's settings
# ---------------------------------------------------------------------------------------------------------------


def sweep_table(config, model, n_images=3, seed=0):
    """A merged sweep table (diractrap.sweeps.COLUMNS' core) with the config's families and thetas; rows of the
    classical baselines only when the config computes them (sweep.baselines)."""
    rng = np.random.default_rng(seed)
    rows = []
    for prior in ["diffusion", *config["sweep"].get("baselines", [])]:
        for g in config["sweep"]["families"]:
            for i in range(n_images):
                q0 = rng.normal(-1e5, 1e3)
                rows += [dict(model=model, prior=prior, family=g["family"], angle=g.get("angle", np.nan), item=i,
                              theta=float(t), q=q0 - 500 * t + rng.normal(0, 10)) for t in g["thetas"]]
    return pd.DataFrame(rows)


def run_record(params, snapshots, shape, K, seed):
    """What a run file holds for one problem (diractrap.problems.load_result): the iterations Algorithm 1 records
    (its own rule, deconv._snapshot_set), random iterates."""
    rng = np.random.default_rng(seed)
    its = np.array(sorted(_snapshot_set(snapshots, params.n_ext)))
    return {"traj_iteration": its, "traj_x": rng.random((len(its), 1, *shape)).astype(np.float32),
            "traj_h": rng.random((len(its), 1, K, K)).astype(np.float32)}


def run_params(config, run):
    spec = {k: v for k, v in config["deconv"]["algorithm1"][run].items() if k not in ("pairs", "starts")}
    return preset(spec.pop("preset"), **spec, sigma=config["deconv"]["sigma"])


def fig4_blocks(config, shape=(3, 40, 40)):
    """Figure 4's inputs as workflow/scripts/fig4.py assembles them, from synthetic runs of the config's runs."""
    d = config["deconv"]
    K = d["kernel_size"]
    out = []
    for i, b in enumerate(config["figures"]["fig4"]["blocks"]):
        pair = d["pairs"][b["pair"]]
        out.append(dict(iterations=b["iterations"], label=f"{pair_title(pair)}, {b['start']} start",
                        run=run_record(run_params(config, b["run"]), d["snapshots"], shape, K, seed=i),
                        x_true=np.random.default_rng(i).random(shape),
                        h_true=pair_kernel(pair["family"], pair["theta"], K, pair.get("angle")).numpy(),
                        y=np.random.default_rng(i).random((shape[0], shape[1] - K + 1, shape[2] - K + 1))))
    return out


# ---------------------------------------------------------------------------------------------------------------
# The paper's five figures
# ---------------------------------------------------------------------------------------------------------------


def test_fig1_one_image_under_gaussian_blur(paper):
    f = paper["figures"]["fig1"]
    assert f["family"] == PAPER_LAYOUT["fig1"]["family"]
    R = DATASETS[paper["image_sets"][paper["models"][f["model"]]["images"]]["source"]].resolution
    images = ImageSet(np.random.default_rng(0).integers(0, 256, (f["image"] + 1, R, R, 3), dtype=np.uint8),
                      np.full(f["image"] + 1, -1), [str(i) for i in range(f["image"] + 1)], np.arange(f["image"] + 1))
    table = sweep_table(paper, f["model"])
    fig = figures.fig1(table, images, item=f["image"], thetas=f["thetas"], family=f["family"],
                       kernel_size=paper["sweep"]["kernel_size"], boundary=paper["sweep"]["boundary"])
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.get_title().splitlines()[0] for ax in panels] == [f"θ = {t:g}" for t in f["thetas"]]
    assert fig.axes[-1].get_xlabel().startswith(f"θ ({PAPER_LAYOUT['fig1']['family']} blur")


def test_fig2_the_four_families_top_to_bottom(paper):
    families = {g["family"]: {"thetas": g["thetas"], "angle": g.get("angle")}
                for g in paper["figures"]["fig2"]["families"]}
    fig = figures.fig2(figures.kernel_gallery(families, paper["sweep"]["kernel_size"]))
    ncol = max(len(g["thetas"]) for g in families.values())
    assert [fig.axes[i * ncol].get_ylabel() for i in range(len(families))] == PAPER_LAYOUT["fig2"]["rows"]
    assert all(fig.axes[i * ncol].get_title() == "θ = 0" for i in range(len(families)))  # each row starts at δ


def test_fig3_four_panels_one_curve_per_family_no_baselines(paper):
    grid = PAPER_LAYOUT["fig3"]["grid"]
    assert paper["figures"]["fig3"]["models"] == [m for row in grid for m in row]
    assert (paper["sweep"].get("baselines", []) != []) == PAPER_LAYOUT["fig3"]["baselines"]
    panels = [(paper["models"][m]["title"], sweep_table(paper, m, seed=k))
              for k, m in enumerate(paper["figures"]["fig3"]["models"])]
    fig = figures.fig3(panels, relative=paper["figures"]["fig3"]["relative"], band=paper["figures"]["fig3"]["band"])
    shown = [ax for ax in fig.axes if ax.axison]
    by_place = sorted(shown, key=lambda ax: (-round(ax.get_position().y0, 3), ax.get_position().x0))
    titles = [[paper["models"][m]["title"] + " (3 images)" for m in row] for row in grid]
    assert [ax.get_title() for ax in by_place] == [t for row in titles for t in row]
    assert by_place[0].get_position().y0 == pytest.approx(by_place[1].get_position().y0)  # two rows of two
    assert by_place[2].get_position().y0 < by_place[0].get_position().y0
    for ax in shown:
        assert [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")] == FAMILIES
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == FAMILIES  # no baseline entry, no line-style key


def test_fig4_the_paper_blocks_and_iterations(paper):
    blocks = paper["figures"]["fig4"]["blocks"]
    assert [b["iterations"] for b in blocks] == PAPER_LAYOUT["fig4"]["blocks"]
    assert {b["start"] for b in blocks} == PAPER_LAYOUT["fig4"]["starts"]
    fig = figures.fig4(fig4_blocks(paper))  # raises if a run does not record an iteration its block shows
    check_fig4(fig, blocks, paper["deconv"]["pairs"])


def test_fig4_long_iterations_are_run_only_where_drawn(paper):
    """The paper draws one block to 4300: only that block's problem runs past the authors' 3000 iterations."""
    d = paper["deconv"]
    blocks = paper["figures"]["fig4"]["blocks"]
    long_problems = {(b["pair"], b["start"]) for b in blocks if max(b["iterations"]) > 3000}
    for run in d["runs"]:
        p = run_params(paper, run)
        spec = d["algorithm1"][run]
        problems = {(i, s) for i in spec.get("pairs", range(len(d["pairs"])))
                    for s in spec.get("starts", d["starts"])}
        if p.n_ext > 3000:
            assert problems <= long_problems, (run, problems)
    drawn_by = {(b["pair"], b["start"]): run_params(paper, b["run"]).n_ext for b in blocks}
    assert all(drawn_by[k] >= 4300 for k in long_problems) and len(long_problems) == 1


def test_fig5_four_pairs_five_rows_from_the_wide_start(paper):
    d = paper["deconv"]
    assert len(d["pairs"]) == PAPER_LAYOUT["fig5"]["columns"] == len(paper["figures"]["fig5"]["pairs"])
    assert d["model"] == PAPER_LAYOUT["fig5"]["model"] and d["sigma"] == 0.01 and "wide" in d["starts"]
    K = d["kernel_size"]
    rng = np.random.default_rng(5)
    columns = []
    for p in paper["figures"]["fig5"]["pairs"]:
        pair = d["pairs"][p]
        h = pair_kernel(pair["family"], pair["theta"], K, pair.get("angle")).numpy()
        columns.append(dict(x_true=rng.random((3, 48, 48)), h_true=h, y=rng.random((3, 48 - K + 1, 48 - K + 1)),
                            x_hat=rng.random((3, 48, 48)), h_hat=h, title=pair_title(pair)))
    fig = figures.fig5(columns)
    check_fig5(fig, PAPER_LAYOUT["fig5"]["columns"])
    # the kernels are of the authors' kinds: two straight motions and two camera shakes (Levin et al.)
    assert sorted(d["pairs"][p]["family"] for p in paper["figures"]["fig5"]["pairs"]) == ["levin", "levin", "motion",
                                                                                          "motion"]


def test_the_demo_draws_figure4_in_the_paper_layout():
    """config/demo.yaml draws Figure 4 in the paper's block layout too (its own iterations)."""
    demo = resolved("demo.yaml")
    fig = figures.fig4(fig4_blocks(demo, shape=(3, 48, 48)))
    check_fig4(fig, demo["figures"]["fig4"]["blocks"], demo["deconv"]["pairs"])
