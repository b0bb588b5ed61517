"""Synthetic blind deconvolution problems, Algorithm 1 over batches of pairs, and the result files.

A problem is (x_true, h_true, y) with y = valid(h_true * x_true) + sigma n (:func:`make_problem`); Algorithm 1's
results are written as one compressed .npz (:func:`save_result`) and tidy table rows (:func:`table_rows`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .blur import blur_same, conv
from .checks import check_images
from .data import atomic_path
from .deconv import Algorithm1Params, Algorithm1Result, algorithm1, initial_kernels
from .kernels import kernel, levin_kernel
from .metrics import metrics
from .rng import ItemGenerators

__all__ = ["pair_kernel", "pair_title", "make_problem", "save_problem", "load_problem", "PairsRun", "run_pairs",
           "save_result", "load_result", "provenance_key", "table_rows", "summary", "run_job"]


# ---------------------------------------------------------------------------------------------------------------
# Synthetic problems: y = valid(h * x) + sigma n, with one noise generator per item
# ---------------------------------------------------------------------------------------------------------------


def pair_kernel(family: str, theta, kernel_size: int, angle=None, *, dtype=torch.float64) -> Tensor:
    """A deconvolution pair's true kernel (K, K): a family of diractrap.kernels at theta (motion: ``angle``), or
    ``family="levin"``: Levin et al.'s camera-shake kernel number theta (kernels.levin_kernel)."""
    if family == "levin":
        return levin_kernel(int(theta), kernel_size, dtype=dtype)
    return kernel(family, theta, kernel_size, angle, dtype=dtype)


def pair_title(pair: dict) -> str:
    """A deconvolution pair's kernel in words, from its definition (family, theta, angle): "motion 45°, θ = 10",
    "Levin et al. #1" (a camera shake), "gaussian, θ = 3" (the figures' column and block titles)."""
    if pair["family"] == "levin":
        return f"Levin et al. #{int(pair['theta'])}"
    angle = f" {pair['angle']:g}°" if pair.get("angle") is not None else ""
    return f"{pair['family']}{angle}, θ = {pair['theta']:g}"


def make_problem(
    x: Tensor,
    h: Tensor,
    *,
    sigma: float = 0.01,  # paper: sigma 0.01
    seed: int = 0,
    item_ids: Sequence[int] | None = None,
    full: bool = False,
    boundary: str = "reflect",
):
    """y = valid(h * x) + sigma n for x (B, C, H, W) in [0, 1], h (K, K) or (B, K, K); n ~ N(0, I) per item.

    With ``full``, also the blurry image at the size of x, as a camera that sees past the border would record it
    (the geometry of the authors' code, where x starts from it): its valid centre is y exactly, its border is
    h * x with ``boundary`` extension plus noise drawn after y's from the same per-item generator. Returns y, or
    (y, y_full).
    """
    clean = conv(x, h, "valid")
    ids = list(range(x.shape[0]) if item_ids is None else item_ids)
    gens = ItemGenerators(seed, ids, scheme="affine")  # the problem files' historical noise stream
    noise = gens.randn(clean.shape[1:], dtype=torch.float64)
    y = clean + sigma * noise.to(clean)
    if not full:
        return y
    K = h.shape[-1]
    top, left = K - 1 - K // 2, K - 1 - K // 2
    border = gens.randn(x.shape[1:], dtype=torch.float64)
    y_full = blur_same(x, h, boundary) + sigma * border.to(x)
    y_full[..., top : top + y.shape[-2], left : left + y.shape[-1]] = y
    return y, y_full


def save_problem(path, x_true: Tensor, h_true: Tensor, y: Tensor, y_full: Tensor, *, label: int = -1,
                 image: str = "") -> None:
    """One problem file (.npz): x_true (C, H, W), h_true (K, K), y (C, h, w), y_full (C, H, W), label, image."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, x_true=x_true.numpy(), h_true=h_true.numpy(), y=y.numpy(), y_full=y_full.numpy(),
                            label=np.int64(label), image=np.asarray(image))


def load_problem(path) -> dict:
    """A problem file as a dict: tensors x_true, h_true, y, y_full (float64), and ``label`` (int), ``image`` (str)."""
    with np.load(path, allow_pickle=False) as z:
        out = {k: torch.from_numpy(z[k]) for k in ("x_true", "h_true", "y", "y_full")}
        out.update(label=int(z["label"]), image=str(z["image"]))
    return out


@dataclass
class PairsRun:
    """Algorithm 1 on pairs x starts: the batched result (item b = start b // P, pair b % P), the
    blurry images y (P, C, h, w), the metrics and one tidy row per run."""

    result: Algorithm1Result
    y: Tensor
    scores: dict[str, Tensor]
    rows: list[dict]


def run_pairs(
    denoiser,
    x_true: Tensor,
    h_true: Tensor,
    *,
    starts: Sequence[str] = ("wide", "small"),  # paper: the wide start recovers the kernel, the small one falls to delta
    params: Algorithm1Params = Algorithm1Params(),
    seed: int = 0,
    pair_ids: Sequence[int] | None = None,
    labels: Tensor | None = None,
    snapshots: int | Sequence[int] | None = None,
    progress: bool = True,
    **columns,
) -> PairsRun:
    """Blur P sharp images x_true (P, C, H, W) with their kernels h_true (P, K, K), add noise of std params.sigma
    (one generator per pair id), and run Algorithm 1 from every start on all pairs in one batch.

    Rows carry ``pair`` (the pair id), ``start``, the settings, the final objective terms, the metrics
    (:func:`metrics`) and ``columns`` (per pair: sequences of length P, or scalars).
    """
    check_images(x_true, "x_true")
    if not isinstance(h_true, Tensor) or h_true.ndim not in (2, 3) or h_true.shape[-1] != h_true.shape[-2]:
        raise ValueError(f"h_true must be square kernels (P, K, K) or one (K, K), got "
                         f"{tuple(h_true.shape) if isinstance(h_true, Tensor) else type(h_true).__name__}")
    P, K = x_true.shape[0], h_true.shape[-1]
    if h_true.ndim == 3 and h_true.shape[0] != P:
        raise ValueError(f"h_true has {h_true.shape[0]} kernels for {P} images")
    H, W = x_true.shape[-2:]
    if K >= min(H, W):
        raise ValueError(f"h_true is {K}x{K}, not smaller than x_true ({H}x{W}): y = valid(h * x) would be empty")
    ids = list(range(P)) if pair_ids is None else [int(i) for i in pair_ids]
    y = make_problem(x_true, h_true, sigma=params.sigma, seed=seed, item_ids=ids)
    n = len(starts)
    h0 = torch.cat([initial_kernels(s, K, P, dtype=y.dtype, device=y.device) for s in starts])
    lab = None if labels is None else labels.repeat(n)
    res = algorithm1(denoiser, y.repeat(n, 1, 1, 1), h0, params=params, labels=lab, snapshots=snapshots,
                     progress=progress)
    scores = metrics(res.x, res.h, x_true.cpu().repeat(n, 1, 1, 1), h_true.cpu().repeat(n, 1, 1))
    per_pair = {k: list(v) * n if isinstance(v, (list, tuple, np.ndarray, Tensor)) else v for k, v in columns.items()}
    rows = table_rows(res, scores, pair=ids * n, start=[s for s in starts for _ in range(P)], seed=seed, **per_pair)
    return PairsRun(result=res, y=y.cpu(), scores=scores, rows=rows)


# ---------------------------------------------------------------------------------------------------------------
# Saving: compressed snapshots (npz) and a JSON summary, written atomically
# ---------------------------------------------------------------------------------------------------------------


def save_result(path, result: Algorithm1Result, **extra: np.ndarray) -> None:
    """Write the final iterates, the trajectory and the per-iteration history to one compressed .npz (keys: x, h,
    theta, traj_<name>, hist_<name>, and
    any extra arrays such as the true image and kernel); the settings go in as a JSON string under 'settings'."""
    arrays = {"x": result.x.float().numpy(), "h": result.h.float().numpy(), "theta": result.theta.float().numpy()}
    arrays.update({f"traj_{k}": v for k, v in result.trajectory.items()})
    arrays.update({f"hist_{k}": v for k, v in result.history.items()})
    arrays.update({k: np.asarray(v) for k, v in extra.items()})
    arrays["settings"] = np.asarray(json.dumps(result.settings, default=str))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def load_result(path) -> dict[str, np.ndarray]:
    """The arrays of a result file written by :func:`save_result` (the settings JSON excluded)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k != "settings"}


def provenance_key(record: dict) -> str:
    """A short, stable name for a provenance record (the denoiser's description: model, checkpoint sha256,
    architecture): the first 12 hex digits of the sha256 of its canonical JSON. Tables carry the key; the record
    itself is written once, in a sidecar JSON. ``config`` (the path the record was read from) is left out: where a
    file lies on one machine does not change what was computed."""
    canonical = json.dumps({k: v for k, v in record.items() if k != "config"}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


_FINAL = ("data", "grad_x", "grad_theta", "spread", "h_max", "q", "total")  # trajectory columns reported at the end


def table_rows(result: Algorithm1Result, scores: dict[str, Tensor] | None = None, **columns) -> list[dict]:
    """One tidy row per problem of the batch: the scalar settings, the step sizes used, the final objective
    terms, the metrics (``scores`` from :func:`metrics`) and any extra ``columns`` (scalars, or sequences of length
    B such as pair ids and initialisations)."""
    B = result.x.shape[0]
    st = result.settings
    fixed = {k: v for k, v in st.items() if isinstance(v, (int, float, str, bool)) or v is None}
    fixed["rel_step"] = str(tuple(st["rel_step"]))
    if st.get("rel_step_used") is not None:  # (r_0, r_end) of a log-relative run's schedule, as rel_step
        fixed["rel_step_used"] = str(tuple(st["rel_step_used"]))
    record = st.get("denoiser") or {}
    fixed["checkpoint_sha256"] = record.get("sha256", "")
    fixed["provenance"] = provenance_key(record)  # the full record: summary()["provenance"], the table's sidecar
    rows = []
    for b in range(B):
        row = dict(fixed)
        for k in ("gamma_h_used", "kernel_steps_clamped"):
            v = st.get(k)
            row[k] = v[b] if isinstance(v, list) else v
        hist = result.history
        if len(hist.get("step_L", ())):
            row["final_grad_x_rel"] = float(hist["grad_x_rel"][-1][b])  # was the last x-subproblem solved?
            row["max_grad_x_rel"] = float(np.nanmax(hist["grad_x_rel"][:, b]))
            row["max_step_L"] = float(hist["step_L"][:, b].max())  # < 2: every kernel step could decrease
        for k in _FINAL:
            if k in result.trajectory:
                row[f"final_{k}"] = float(result.trajectory[k][-1][b])
        for k, v in (scores or {}).items():
            row[k] = torch.as_tensor(v)[b].item()
        for k, v in columns.items():
            row[k] = v[b] if isinstance(v, (list, tuple, np.ndarray, Tensor)) else v
            if isinstance(row[k], (Tensor, np.generic)):
                row[k] = row[k].item()
        rows.append(row)
    return rows


def summary(result: Algorithm1Result, scores: dict[str, Tensor] | None = None) -> dict:
    """A JSON-ready summary: the settings, the provenance record under its key (:func:`provenance_key`, the
    ``provenance`` column of the table rows), the final objective terms per item, and the metrics if given."""
    t = result.trajectory
    record = result.settings.get("denoiser") or {}
    out = {
        "settings": result.settings,
        "provenance": {provenance_key(record): record},
        "iterations": int(t["iteration"][-1]),
        "final": {k: t[k][-1].tolist() for k in _FINAL if k in t},
    }
    if scores is not None:
        out["metrics"] = {k: torch.as_tensor(v).tolist() for k, v in scores.items()}
    return out


# ---------------------------------------------------------------------------------------------------------------
# One workflow job: a run (complete parameters) from one start on every problem file, batched
# ---------------------------------------------------------------------------------------------------------------


def run_job(denoiser, problem_files, start, job: dict, run_files, summary_files, *, start_name: str,
            progress: bool = True) -> list[dict]:
    """Algorithm 1 on the problems in ``problem_files`` (pair b = file b) in one batch, from ``start`` (a start name,
    or result files whose final kernels start the run), with ``job["algorithm1"]`` (every field of
    Algorithm1Params). Writes per pair a result file and a JSON summary with its table row; returns the rows.

    ``job`` also carries: device, labels (diractrap.datasets.class_labels mode), kernel_size, snapshots, run and
    preset (the table's names), model, pairs (the config's pair definitions of these files: family, theta,
    angle) and pair_ids (their indices in the config; default 0, 1, ...).
    """
    from .datasets import class_labels

    probs = [load_problem(f) for f in problem_files]
    ids = job.get("pair_ids", range(len(probs)))  # the config's pair index of each problem file
    dev = job["device"]

    def stack(key):
        return torch.stack([p[key] for p in probs])

    y, y_full = stack("y").float().to(dev), stack("y_full").float().to(dev)
    labels = class_labels(job["labels"], [p["label"] for p in probs])
    h0 = start if isinstance(start, str) else torch.stack([torch.from_numpy(load_result(f)["h"][0]) for f in start])
    params = Algorithm1Params(**{**job["algorithm1"], "rel_step": tuple(job["algorithm1"]["rel_step"])})
    res = algorithm1(denoiser, y, h0, kernel_size=job["kernel_size"], params=params, y_full=y_full,
                     labels=None if labels is None else labels.to(dev), snapshots=job["snapshots"], progress=progress)
    scores = metrics(res.x, res.h, stack("x_true"), stack("h_true"))
    rows = []
    for b, (run_path, summary_path) in enumerate(zip(run_files, summary_files)):
        r, s, d = res.item(b), {k: v[b : b + 1] for k, v in scores.items()}, job["pairs"][b]
        save_result(run_path, r, x_true=probs[b]["x_true"].numpy(), h_true=probs[b]["h_true"].numpy(),
                    y=probs[b]["y"].numpy())
        row = table_rows(r, s, pair=ids[b], start=start_name, run=job["run"], preset=job["preset"],
                         image=probs[b]["image"], family=d["family"], theta=d["theta"], angle=d.get("angle"),
                         model=job["model"])[0]
        with atomic_path(summary_path) as tmp:
            tmp.write_text(json.dumps({"summary": summary(r, s), "rows": [row]}, indent=1, default=str))
        rows.append(row)
        print(json.dumps(row, default=str))
    return rows
