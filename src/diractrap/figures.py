"""Figures 1-5 of the paper, drawn from result tables only (no network evaluation: CPU, seconds).

Inputs are what the workflow's compute rules write: the sweep tables (:mod:`diractrap.sweeps`), image sets
(:mod:`diractrap.datasets`), the kernel gallery, and Algorithm 1's snapshot files (:func:`diractrap.deconv.save_result`,
read with :func:`load_run`). Every figure uses the one style file ``diractrap.mplstyle`` and is written atomically by
:func:`save` (PDF without a creation date, so that reruns give identical files).

Sections: style and saving; drawing helpers; Figure 1 (one image, Gaussian blur, its potentials); Figure 2 (the
four families); Figure 3 (q against theta over images); Figures 4 and 5 (Algorithm 1); the demo prior's samples.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed on a cluster node

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from .data import atomic_path  # noqa: E402
from .problems import load_result  # noqa: E402

__all__ = ["STYLE", "use_style", "save", "kernel_gallery", "load_run", "fig1", "fig2", "fig3", "fig4",
           "fig5", "fig_theorem1", "samples_figure"]

STYLE = Path(__file__).with_name("diractrap.mplstyle")
WIDTH = 7.0  # inches: a two-column paper's text width


# ---------------------------------------------------------------------------------------------------------------
# Style and saving
# ---------------------------------------------------------------------------------------------------------------


def use_style() -> None:
    """Apply the project's matplotlib style (every figure function calls it)."""
    plt.style.use(str(STYLE))


def save(fig, *paths) -> list[Path]:
    """Write ``fig`` to each path (format from the suffix: .pdf, .png, ...) atomically, then close it."""
    out = []
    for path in map(Path, paths):
        fmt = path.suffix.lstrip(".").lower()
        meta = {"CreationDate": None} if fmt == "pdf" else {}  # no timestamp: identical files on rerun
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, metadata=meta)
        out.append(path)
    plt.close(fig)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Drawing helpers: images (C, H, W) in [0, 1] and kernels (K, K) scaled to their maximum
# ---------------------------------------------------------------------------------------------------------------


def _image(ax, x) -> None:
    a = np.clip(np.asarray(x, dtype=np.float64), 0, 1)
    ax.imshow(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0), cmap="gray" if a.shape[0] == 1 else None,
              vmin=0, vmax=1)
    _bare(ax)


def _kernel(ax, h) -> None:
    h = np.asarray(h, dtype=np.float64)
    ax.imshow(h, cmap="inferno", vmin=0, vmax=max(h.max(), 1e-12))
    _bare(ax)


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for s in ax.spines.values():
        s.set_visible(False)


def kernel_gallery(families: dict, kernel_size: int = 21) -> dict[str, np.ndarray]:  # paper: K = 21
    """The kernels Figure 2 draws: ``families`` maps a family to {"thetas": [...], "angle": deg (motion)};
    returns arrays ``<family>_thetas`` (T,) and ``<family>_kernels`` (T, K, K) float64 (a table for the figure)."""
    from .kernels import kernel

    out = {}
    for family, spec in families.items():
        thetas = np.asarray(spec["thetas"], dtype=np.float64)
        out[f"{family}_thetas"] = thetas
        h = kernel(family, thetas.tolist(), kernel_size, spec.get("angle"), dtype=torch.float64)
        out[f"{family}_kernels"] = h.numpy()
    return out


# ---------------------------------------------------------------------------------------------------------------
# Figure 1: one image under Gaussian blur and its potentials (Section 2.2)
# ---------------------------------------------------------------------------------------------------------------


def fig1(table: pd.DataFrame, images, *, item: int, thetas, family: str = "gaussian", kernel_size: int = 21,
         boundary: str = "reflect", angle: float | None = None, title: str | None = None):
    """Blurred versions h_theta * x of image ``item`` of the image set ``images`` (:class:`ImageSet`) for the shown
    ``thetas``, each with its potential, above the curve q(h_theta * x) - q(x) over the table's whole theta grid."""
    from .blur import blur_same
    from .kernels import kernel

    use_style()
    table = _diffusion_rows(table)
    rows = table[(table["item"] == item) & (table["family"] == family)].sort_values("theta")
    if rows.empty:
        raise ValueError(f"the table has no rows for image {item} and family {family!r}")
    missing = sorted(set(map(float, thetas)) - set(rows["theta"]))
    if missing or 0.0 not in set(rows["theta"]):
        raise ValueError(f"Figure 1 shows thetas {missing or [0.0]} that the sweep table lacks: add them to its grid")
    q0 = rows.loc[rows["theta"] == 0, "q"].item()
    x = images.tensor([item]).double()
    n = len(thetas)
    fig = plt.figure(figsize=(WIDTH, 0.95 * WIDTH / n + 1.9))
    grid = fig.add_gridspec(2, n, height_ratios=[WIDTH / n, 1.9], hspace=0.45)
    for j, t in enumerate(thetas):
        ax = fig.add_subplot(grid[0, j])
        h = kernel(family, float(t), kernel_size, angle, dtype=torch.float64)
        _image(ax, blur_same(x, h, boundary)[0].numpy())
        q = rows.loc[rows["theta"] == float(t), "q"].item()
        ax.set_title(f"θ = {t:g}\nq − q(x) = {q - q0:+.1f}", fontsize=7 if n <= 4 else 6)
    ax = fig.add_subplot(grid[1, :])
    ax.plot(rows["theta"], rows["q"] - q0, marker="o", color="C0")
    ax.plot(list(map(float, thetas)), [rows.loc[rows["theta"] == float(t), "q"].item() - q0 for t in thetas],
            "o", mfc="none", ms=7, color="C1", label="shown above")
    ax.set_xlabel(f"θ ({family} blur, pixels)")
    ax.set_ylabel("q(h_θ ⋆ x) − q(x)  [nats]")
    ax.legend(loc="upper right")
    if title:
        fig.suptitle(title, y=1.04)  # above the two-line panel titles
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Figure 2: the four blur families for increasing theta, one row each
# ---------------------------------------------------------------------------------------------------------------


def fig2(gallery: dict):
    """One row per family of ``gallery`` (:func:`kernel_gallery`), one column per theta, kernels scaled to their max."""
    use_style()
    families = [k.removesuffix("_thetas") for k in gallery if k.endswith("_thetas")]
    ncol = max(len(gallery[f"{f}_thetas"]) for f in families)
    size = WIDTH / (ncol + 0.6)
    fig, axes = plt.subplots(len(families), ncol, figsize=(WIDTH, size * len(families) * 1.15), squeeze=False)
    for i, f in enumerate(families):
        thetas, hs = gallery[f"{f}_thetas"], gallery[f"{f}_kernels"]
        for j in range(ncol):
            ax = axes[i, j]
            if j >= len(thetas):
                ax.axis("off")
                continue
            _kernel(ax, hs[j])
            ax.set_title(f"θ = {thetas[j]:g}", fontsize=7)
        axes[i, 0].set_ylabel(f, fontsize=8)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Figure 3: q(h_theta * x) against theta, mean and spread over images, one curve per family, one panel per model
# ---------------------------------------------------------------------------------------------------------------


BASELINE_STYLES = {"gaussian": ("--", "fitted stationary Gaussian"), "tv": (":", "total variation λ·TV")}


def _diffusion_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The diffusion prior's rows of a sweep table (all rows of a table without a ``prior`` column)."""
    return df[df["prior"] == "diffusion"] if "prior" in df else df


def fig3(panels, *, relative: bool = True, band=(0.1, 0.9), ncols: int = 2):
    """``panels``: a list of (title, sweep table). Each panel: per family, the mean over images of
    q(h_theta * x) - q(x) (``relative``, nats) or of q, with a band between the ``band`` quantiles over images.
    Baseline rows of the table (``prior`` "gaussian", "tv": :func:`diractrap.sweeps.baseline_sweep`) are drawn as
    their mean over the same images, in the family's colour, dashed (fitted Gaussian) or dotted (TV)."""
    from matplotlib.lines import Line2D

    from .kernels import FAMILIES
    from .sweeps import relative as dq

    use_style()
    n = len(panels)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(WIDTH * ncols / 2, 2.3 * nrows), squeeze=False)
    families, baselines = [], set()
    for ax, (title, df) in zip(axes.flat, panels):
        df = df.assign(value=dq(df) if relative else df["q"])
        main = _diffusion_rows(df)
        present = set(main["family"])
        for k, family in enumerate(f for f in (*FAMILIES, *sorted(present - set(FAMILIES))) if f in present):
            stats = main[main["family"] == family].groupby("theta")["value"]
            mean = stats.mean()
            lo, hi = stats.quantile(band[0]), stats.quantile(band[1])
            ax.plot(mean.index, mean.to_numpy(), marker="o", color=f"C{k}", label=family)
            ax.fill_between(mean.index, lo.to_numpy(), hi.to_numpy(), color=f"C{k}", alpha=0.18, lw=0)
            for name, (style, label) in BASELINE_STYLES.items():
                rows = df[(df["prior"] == name) & (df["family"] == family)] if "prior" in df else df.iloc[:0]
                if len(rows):
                    base = rows.groupby("theta")["value"].mean()
                    ax.plot(base.index, base.to_numpy(), ls=style, lw=1.0, color=f"C{k}", label=f"{family}, {label}")
                    baselines.add(name)
            if family not in families:
                families.append(family)
        images = main["item"].nunique()
        ax.set_title(f"{title} ({images} images)")
        ax.set_xlabel("θ (pixels)")
        ax.set_ylabel("q(h_θ ⋆ x) − q(x)  [nats]" if relative else "q(h_θ ⋆ x)  [nats]")
        if relative:
            ax.axhline(0, color="0.5", lw=0.6)
    for ax in axes.flat[n:]:
        ax.axis("off")
    # one legend under all panels: a colour per family, a line style per prior
    handles = [Line2D([], [], color=f"C{k}", marker="o", label=f) for k, f in enumerate(families)]
    if baselines:
        handles.append(Line2D([], [], color="0.2", ls="-", label="diffusion prior"))
        handles += [Line2D([], [], color="0.2", ls=BASELINE_STYLES[b][0], label=BASELINE_STYLES[b][1])
                    for b in BASELINE_STYLES if b in baselines]
    rows_legend = 2 if baselines else 1
    fig.tight_layout(rect=(0, 0.07 * rows_legend, 1, 1))
    fig.legend(handles=handles, loc="lower center", ncol=-(-len(handles) // rows_legend))
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Figures 4 and 5: Algorithm 1 (Section 4)
# ---------------------------------------------------------------------------------------------------------------


load_run = load_result  # the arrays of an Algorithm 1 result file (diractrap.problems owns the format)


def _y_offset(x_shape, y_shape) -> tuple[int, int]:
    """Where y (the valid part of h * x) sits in x's pixel grid: (top, left) = ((H - h) // 2, (W - w) // 2), i.e.
    K - 1 - K // 2 for a K x K kernel, as diractrap.problems.make_problem crops it."""
    return (x_shape[-2] - y_shape[-2]) // 2, (x_shape[-1] - y_shape[-1]) // 2


def _mark_footprint(ax, x_shape, y_shape, **style) -> None:
    """A dashed rectangle around the part of an image of x's size that y covers (y's footprint)."""
    from matplotlib.patches import Rectangle

    top, left = _y_offset(x_shape, y_shape)
    ax.add_patch(Rectangle((left - 0.5, top - 0.5), y_shape[-1], y_shape[-2], fill=False,
                           **{"ls": "--", "lw": 0.6, "ec": "white", **style}))


def _observation(ax, y, x_shape) -> None:
    """y (C, h, w) at its true scale in a panel the size of x (C, H, W): the pixels y does not see are left blank
    (light grey), so the columns of x̄, y and x̂ line up pixel for pixel."""
    a = np.clip(np.asarray(y, dtype=np.float64), 0, 1)
    top, left = _y_offset(x_shape, a.shape)
    h, w = a.shape[-2:]
    ax.imshow(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0), cmap="gray" if a.shape[0] == 1 else None, vmin=0,
              vmax=1, extent=(left - 0.5, left + w - 0.5, top + h - 0.5, top - 0.5))
    ax.set_xlim(-0.5, x_shape[-1] - 0.5)
    ax.set_ylim(x_shape[-2] - 0.5, -0.5)
    ax.set_facecolor("0.88")
    _bare(ax)


def fig4(blocks):
    """Algorithm 1's iterates as the paper's Figure 4 draws them: blocks one above the other, each under its label,
    two rows (the images x_n and the kernels h(θ_n), kernels scaled to their maximum) and the columns
    "Initialisation" (n = 0: x_0 and h(θ_0), y's footprint dashed on x_0), the block's iterations n, and "true
    signal" (x̄, h̄).

    ``blocks``: dicts with ``run`` (a :func:`load_run` dict of one problem), ``x_true`` (C, H, W), ``h_true``
    (K, K), ``y`` (C, H - K + 1, W - K + 1), ``iterations`` (the outer iterations shown; each must have been
    recorded), ``label`` (the block's name) and optionally ``item`` (the problem's index in the run, default 0).
    """
    use_style()
    ncol = max(len(b["iterations"]) for b in blocks) + 2
    rows = 2 * len(blocks)
    fig = plt.figure(figsize=(WIDTH, WIDTH / ncol * (rows + 0.55 * len(blocks))))
    outer = fig.add_gridspec(len(blocks), 1, hspace=0.42)
    for r, block in enumerate(blocks):
        run, item = block["run"], block.get("item", 0)
        its = [int(i) for i in run["traj_iteration"]]
        missing = [n for n in [0, *block["iterations"]] if n not in its]
        if missing:
            raise ValueError(f"Figure 4 block {block['label']!r} shows iterations {missing} that its run did not "
                             f"record (recorded: {its}); add them to deconv.snapshots and check the run's n_ext")
        grid = outer[r].subgridspec(2, ncol, wspace=0.06, hspace=0.06)
        columns = [("Initialisation", its.index(0))] + [(f"n = {n}", its.index(n)) for n in block["iterations"]]
        for j, (title, k) in enumerate(columns):
            ax_x, ax_h = fig.add_subplot(grid[0, j]), fig.add_subplot(grid[1, j])
            _image(ax_x, run["traj_x"][k, item])
            _kernel(ax_h, run["traj_h"][k, item])
            ax_x.set_title(title, fontsize=6)
            if j == 0:
                _mark_footprint(ax_x, run["traj_x"].shape[-2:], np.shape(block["y"])[-2:])
                ax_x.set_ylabel("x", fontsize=6)
                ax_h.set_ylabel("h", fontsize=6)
                ax_x.text(0, 1.32, block["label"], transform=ax_x.transAxes, ha="left", va="bottom", fontsize=6.5,
                          weight="bold")  # the block's heading, above its column titles
        ax_x, ax_h = fig.add_subplot(grid[0, ncol - 1]), fig.add_subplot(grid[1, ncol - 1])
        _image(ax_x, block["x_true"])
        _kernel(ax_h, block["h_true"])
        ax_x.set_title("true signal", fontsize=6)
    return fig


def fig5(columns):
    """One column per pair, rows x̄, h̄, y, x̂, ĥ. ``columns``: dicts with x_true, h_true, y, x_hat, h_hat and an
    optional title ((C, H, W) images in [0, 1], (K, K) kernels; y (C, H - K + 1, W - K + 1) is drawn at its true
    scale, in a panel the size of x̄ whose border it does not see is left blank)."""
    use_style()
    rows = [("x̄", "x_true"), ("h̄", "h_true"), ("y", "y"), ("x̂", "x_hat"), ("ĥ", "h_hat")]
    n = len(columns)
    fig, axes = plt.subplots(len(rows), n, figsize=(WIDTH * min(n, 4) / 4, WIDTH * min(n, 4) / 4 / n * 5.4),
                             squeeze=False)
    for j, col in enumerate(columns):
        for i, (label, key) in enumerate(rows):
            ax = axes[i, j]
            if key == "y":
                _observation(ax, col["y"], np.shape(col["x_true"]))
            elif key.startswith("h"):
                _kernel(ax, col[key])
            else:
                _image(ax, col[key])
            if j == 0:
                ax.set_ylabel(label, fontsize=9, rotation=0, labelpad=12, va="center")
        if col.get("title"):
            axes[0, j].set_title(col["title"], fontsize=7)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# The demo prior's samples (a check that the embedded prior learned images)
# ---------------------------------------------------------------------------------------------------------------


def samples_figure(samples, *, ncols: int = 8, title: str | None = None):
    """A grid of samples (N, C, H, W) in [0, 1]."""
    use_style()
    samples = np.asarray(samples)
    n = len(samples)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(WIDTH, WIDTH / ncols * nrows), squeeze=False)
    for ax in axes.flat:
        _bare(ax)
    for ax, s in zip(axes.flat, samples):
        _image(ax, s)
    if title:
        fig.suptitle(title)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Theorem 1 in numbers: Ly along Statement 1's path, and the final kernels of each start (mixture prior)
# ---------------------------------------------------------------------------------------------------------------


def fig_theorem1(path: pd.DataFrame, runs: pd.DataFrame, kernels: dict):
    """Left: Ly(x_t, h_t) - Ly(truth) against t for each truth (``path``: columns truth, t, L_minus_true, and
    truth_name). Right: a grid of final kernels, one row per (algorithm, truth), one column per start, and the true
    kernel (``kernels``: h_true (K, K), starts, algorithms, h_<algorithm> (S * P, K, K), start-major)."""
    use_style()
    starts = [str(s) for s in kernels["starts"]]
    algos = [str(a) for a in kernels["algorithms"]]
    truths = sorted(path["truth"].unique())
    names = path.drop_duplicates("truth").set_index("truth")["truth_name"].to_dict() if "truth_name" in path else {}
    P = len(truths)
    nrow, ncol = len(algos) * P, len(starts) + 1
    fig = plt.figure(figsize=(WIDTH, WIDTH * 0.45))
    grid = fig.add_gridspec(nrow, ncol + 4, wspace=0.15, hspace=0.25)
    ax = fig.add_subplot(grid[:, :3])
    for p in truths:
        d = path[path["truth"] == p].sort_values("t")
        ax.plot(d["t"], d["L_minus_true"], marker="o", ms=3, label=names.get(p, f"truth {p}"))
    ax.axhline(0, color="0.5", lw=0.6)
    near = path[path["t"] >= 0.9]
    if near["t"].nunique() > 2:  # the barrier of a critical truth sits just below t = 1: zoom on it
        inset = ax.inset_axes([0.1, 0.38, 0.5, 0.42])
        for p in truths:
            d = near[near["truth"] == p].sort_values("t")
            inset.plot(d["t"], d["L_minus_true"], marker="o", ms=2, label=names.get(p, f"truth {p}"))
        inset.axhline(0, color="0.5", lw=0.6)
        inset.set_ylim(-0.012, 0.006)
        inset.tick_params(labelsize=5)
        inset.legend(fontsize=5, loc="lower left")
    else:
        ax.legend(fontsize=7)
    ax.set_xlabel("t (1: the truth, 0: Dirac kernel)")
    ax.set_ylabel("Ly(x_t, h_t) - Ly(truth)")
    for a, alg in enumerate(algos):
        H = kernels[f"h_{alg}"]
        for p in truths:
            r = a * P + p
            for j, s in enumerate(starts):
                k = fig.add_subplot(grid[r, 4 + j])
                _kernel(k, H[j * P + p])
                if r == 0:
                    k.set_title(s, fontsize=7)
            k = fig.add_subplot(grid[r, 4 + len(starts)])
            _kernel(k, kernels["h_true"])
            if r == 0:
                k.set_title("h̄", fontsize=7)
            fig.axes[-len(starts) - 1].set_ylabel(f"{alg}\n{names.get(p, p)}", fontsize=6, rotation=0, ha="right",
                                                  va="center")
    return fig
