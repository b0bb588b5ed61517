"""How accurately q must be computed for the sweep's figures, and the cheapest settings that get there (Section 2.2).

Figure 3 and the sweep tables read *differences* of the potential along a blur grid 0 = theta_0 < theta_1 < ...,
and their order in theta (Claim 1: q decreases as the blur grows), not q itself. So the accuracy a sweep needs is a
property of each image's grid: :class:`ErrorBudget` bounds the error of the quantity the figures read by a fraction
of the image's steps q(theta_{k+1}) - q(theta_k), small enough that no order in theta can flip.

An error of a computed difference has three parts, each estimated from the run's own numbers against a
reference solve (adaptive, tight tolerances, many probes, fp32; :data:`REFERENCE`) of the same images:

    solver      the candidate's ODE grid against the reference's, *with the same probes* (probe m of an item is
                the same in every solve, diractrap.potential.make_probes), so the probes' noise cancels;
    precision   the candidate's network precision against fp32 on the same grid and probes;
    Hutchinson  ``coverage`` standard errors of the mean over the candidate's M probes: the spread of the
                reference's per-probe values / sqrt(M) (the estimator is unbiased; its noise is what is left).

A candidate meets the budget when, on every calibration image and every difference, the sum of the three parts is
at most the allowed error (divided by ``headroom``, for images the calibration did not see). :func:`calibrate`
evaluates a :class:`Ladder` of cheaper settings (Heun grids x probes x precisions) and picks the cheapest that meets
it, the cost of a potential being evaluations x (1 + probes) x the time of one forward pass at that precision
(:class:`CostModel`). :func:`audit` re-checks a sweep chunk's first image
at the reference's settings; :func:`check_audits` fails a merge when one audit breaks the budget.

Sections: the budget; costs; the ladder and the calibration; the audit.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .blur import blur_same
from .kernels import kernel
from .numerics import PRECISIONS, check_precision
from .potential import PotentialOptions, potential

__all__ = ["ErrorBudget", "REFERENCE", "Ladder", "CostModel", "cost_model", "forward_flops", "calibrate",
           "solve_ladder", "assess", "pick", "choose", "LadderSolves",
           "Calibration", "CalibrationError", "audit", "check_audits", "AuditError", "blurred_grid", "read_calibration",
           "load_measurements"]

QUANTITIES = ("differences", "steps")


# ---------------------------------------------------------------------------------------------------------------
# The budget: the error of each difference the figures read, against beta x the image's smallest theta-step
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorBudget:
    """The error a sweep may make, per image, on the quantities its figures read: the order of q along the grid
    (Claim 1's verdict) and the differences q(theta_k) - q(theta_0) (Figure 3's curves).

    beta:     order. With ``quantity = "steps"`` (the default) each step q(theta_{k+1}) - q(theta_k) may be off by
              2 beta of itself: with beta = 1/4 every step is known to within half its size, so no order in theta
              can flip (margin 2). With ``"differences"`` (issue 20's first statement) each q(theta_k) - q(theta_0)
              may be off by beta s_min, s_min = the image's smallest step: the same guarantee on the smallest step,
              but every larger step is held to the smallest step's accuracy -- on the demo prior's defocus grid not
              even the 8-probe reference meets that (BENCHMARKS.md "potential"), while the probes' noise on a
              2000-nat step cannot flip it.
    epsilon:  values: each difference q(theta_k) - q(theta_0) may be off by epsilon of itself (None: unchecked).
    coverage: the Hutchinson part is counted at this many standard errors.
    headroom: a calibration candidate meets the budget when its error bound is at most 1 / headroom of the allowed
              error on the calibration images; audits hold the sweep's images to the budget itself. 1 (the default)
              for calibration images drawn from the sweep's own set, checked by the audits (demo prior: crops 0-3
              had 0.7-1.4x the ratios of calibration crop 5); images unlike the calibration's need about 2
              (photographs that are not demo crops: 1.7-2.6x; BENCHMARKS.md "potential", calibration_transfer).
    """

    beta: float = 0.25
    epsilon: float | None = 0.1
    quantity: str = "steps"
    coverage: float = 2.0
    headroom: float = 1.0

    def __post_init__(self):
        for name in ("beta", "epsilon"):
            v = getattr(self, name)
            if not (v is None and name == "epsilon") and not (isinstance(v, (int, float)) and math.isfinite(v)
                                                               and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        if self.quantity not in QUANTITIES:
            raise ValueError(f"quantity must be one of {QUANTITIES}, got {self.quantity!r}")
        if not (math.isfinite(self.coverage) and self.coverage >= 0):
            raise ValueError(f"coverage must be a finite number >= 0, got {self.coverage!r}")
        if not (isinstance(self.headroom, (int, float)) and math.isfinite(self.headroom) and self.headroom >= 1):
            raise ValueError(f"headroom must be a finite number >= 1, got {self.headroom!r}")

    def transform(self, q: np.ndarray, quantity: str | None = None) -> np.ndarray:
        """The quantity read from per-theta values q (..., T, M) along sorted thetas: (..., T - 1, M)."""
        quantity = quantity or self.quantity
        return q[..., 1:, :] - (q[..., :1, :] if quantity == "differences" else q[..., :-1, :])

    def allowed(self, q_ref: np.ndarray) -> np.ndarray:
        """(I, T - 1) nats: the allowed error of each image's order quantity, from reference values q_ref (I, T)
        or (I, T, M) (averaged over probes)."""
        q = q_ref.mean(-1) if q_ref.ndim == 3 else q_ref
        step = np.abs(np.diff(q, axis=-1))
        if self.quantity == "steps":
            return 2 * self.beta * step
        return np.broadcast_to(self.beta * step.min(-1, keepdims=True), step.shape).copy()

    def allowed_values(self, q_ref: np.ndarray) -> np.ndarray | None:
        """(I, T - 1) nats: epsilon x |q(theta_k) - q(theta_0)| of the reference (None when epsilon is None)."""
        if self.epsilon is None:
            return None
        q = q_ref.mean(-1) if q_ref.ndim == 3 else q_ref
        return self.epsilon * np.abs(q[..., 1:] - q[..., :1])

    def parts(self, ref: np.ndarray, cand: np.ndarray | None = None, cand_fp32: np.ndarray | None = None,
              n_probes: int | None = None, quantity: str | None = None) -> dict:
        """The error parts of a candidate, each (I, T - 1) nats, from per-probe values (I, T, M), for the order
        quantity (or ``quantity``: "differences" for the values).

        ``ref`` holds the reference's M_ref probes; ``cand`` the candidate's (at least ``n_probes`` of the same
        probes), ``cand_fp32`` the same grid in fp32 (default ``cand``: an fp32 candidate). ``cand=None`` assesses
        the reference itself (solver and precision parts 0). Also returns "measured": the candidate's mean against
        the reference's mean (one realisation of the total error, for the record).
        """
        M_ref = ref.shape[-1]
        if M_ref < 2:
            raise ValueError("the reference needs >= 2 probes to estimate the Hutchinson part")
        M = M_ref if cand is None else int(n_probes or cand.shape[-1])
        if cand is not None and (M > cand.shape[-1] or M > M_ref):
            raise ValueError(f"{M} probes asked, the candidate has {cand.shape[-1]} and the reference {M_ref}")
        d_ref = self.transform(ref, quantity)
        sd = d_ref.std(-1, ddof=1)
        hutch = self.coverage * sd / math.sqrt(M)
        if cand is None:
            zero = np.zeros_like(hutch)
            return dict(solver=zero, precision=zero, hutchinson=hutch, total=hutch, measured=zero, sd=sd)
        d_c = self.transform(cand, quantity)[..., :M]
        d_32 = self.transform(cand if cand_fp32 is None else cand_fp32, quantity)[..., :M]
        solver = np.abs((d_32 - d_ref[..., :M]).mean(-1))
        precision = np.abs((d_c - d_32).mean(-1))
        measured = np.abs(d_c.mean(-1) - d_ref.mean(-1))
        return dict(solver=solver, precision=precision, hutchinson=hutch, total=solver + precision + hutch,
                    measured=measured, sd=sd)

    def ratios(self, ref: np.ndarray, *args, **kwargs) -> tuple[float, float]:
        """(order, values): the largest error bound / allowed error of a candidate (arguments of :meth:`parts`);
        values is 0 when epsilon is None. A sweep's image meets the budget when both are <= 1; a calibration
        candidate when both are <= 1 / headroom."""
        order = (self.parts(ref, *args, **kwargs)["total"] / self.allowed(ref)).max()
        allowed = self.allowed_values(ref)
        if allowed is None:
            return float(order), 0.0
        values = self.parts(ref, *args, **kwargs, quantity="differences")["total"] / allowed
        return float(order), float(values.max())

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------------
# Costs: evaluations x (1 + probes) x the time of one forward pass at the precision
# ---------------------------------------------------------------------------------------------------------------

# Peak dense rates of an H100 SXM (TFLOP/s, NVIDIA's datasheet, no sparsity) and the fraction assumed sustained by
# these networks at batches 1-16. FP32 runs on the CUDA cores; TF32/BF16/FP16 on the tensor cores, which small
# batches and element-wise work keep far from their peak: 10 % is an assumption until benchmarks/gpu_paper_check.py
# has measured it (then pass its numbers as ``measured``).
GPU_PEAK_TFLOPS = {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}
GPU_UTILISATION = {"fp32": 0.30, "tf32": 0.10, "bf16": 0.10, "fp16": 0.10}
# Our 2-core CPUs (AMD EPYC, torch 2.13): fp32 rate from NCSN++ 256's 533 GFLOP forward in ~4 s (2 threads);
# bf16 autocast ~1.5x faster on the demo network (BENCHMARKS.md "potential"); no TF32 on a CPU; fp16 autocast ~60x
# slower than fp32 (issue 20's measurement).
CPU_FP32_TFLOPS = 0.13
CPU_SPEEDUP = {"fp32": 1.0, "tf32": 1.0, "bf16": 1.5, "fp16": 1 / 60}


@dataclass(frozen=True)
class CostModel:
    """Seconds of one forward pass of one image, per precision, with where each number comes from.

    A potential costs nfe x (1 + n_probes) forward-equivalents (one forward and one VJP per probe, a VJP costing
    about one forward: FlopCounterMode counts 2.0x for forward + VJP on the paper's networks).
    """

    seconds_per_forward: dict
    source: dict
    gflop: float = math.nan

    def seconds(self, nfe: float, n_probes: int, precision: str) -> float:
        return float(nfe) * (1 + n_probes) * self.seconds_per_forward[precision]


def forward_flops(denoiser, shape, device="cpu", labels=None) -> float:
    """FLOPs of one forward pass of one image of ``shape`` (C, H, W) (matmuls and convolutions, 2 per
    multiply-add; torch.utils.flop_counter), counted on a real evaluation at batch 1."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, *shape, device=device)
    sigma = torch.ones(1, device=device)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        denoiser(x, sigma, labels)
    return float(fc.get_total_flops())


def cost_model(device_type: str, gflop: float, measured: dict | None = None) -> CostModel:
    """The :class:`CostModel` of a network of ``gflop`` GFLOP per forward on ``device_type`` ("cuda" or "cpu").

    ``measured``: {precision: seconds per image-forward} from a GPU run of benchmarks/gpu_paper_check.py; the
    precisions it has are taken from it, the others from the rates above.
    """
    measured = measured or {}
    sec, src = {}, {}
    for p in PRECISIONS:
        if p in measured:
            sec[p], src[p] = float(measured[p]), "measured (benchmarks/gpu_paper_check.py)"
        elif device_type == "cuda":
            rate = GPU_PEAK_TFLOPS[p] * GPU_UTILISATION[p]
            sec[p] = gflop / (rate * 1e3)
            src[p] = f"{gflop:.1f} GFLOP / ({GPU_PEAK_TFLOPS[p]:g} TFLOP/s H100 peak x {GPU_UTILISATION[p]:.0%})"
        else:
            sec[p] = gflop / (CPU_FP32_TFLOPS * CPU_SPEEDUP[p] * 1e3)
            src[p] = f"{gflop:.3g} GFLOP / ({CPU_FP32_TFLOPS:g} TFLOP/s CPU x {CPU_SPEEDUP[p]:.3g})"
    return CostModel(seconds_per_forward=sec, source=src, gflop=gflop)


# ---------------------------------------------------------------------------------------------------------------
# The ladder and the calibration
# ---------------------------------------------------------------------------------------------------------------

# The reference: tight adaptive tolerances (score_sde's likelihood uses RK45 at 1e-5), 8 probes, fp32 network.
REFERENCE = PotentialOptions(solver="tsit5", rtol=1e-5, atol=1e-5, n_probes=8, precision="fp32")


@dataclass(frozen=True)
class Ladder:
    """The cheaper settings a calibration tries: every Heun grid x probe count x precision (each grid solved once
    per precision with max(n_probes) probes: fewer probes are the first ones of the same solve)."""

    steps: tuple = (8, 16, 32)  # Heun steps: 2 evaluations each
    rho: float = 7.0  # EDM's schedule exponent of the Heun grid
    n_probes: tuple = (1, 2)
    precisions: tuple = ("fp32", "bf16")

    def __post_init__(self):
        for p in self.precisions:
            check_precision(p)
        if not self.steps or not self.n_probes or min(self.steps) < 1 or min(self.n_probes) < 1:
            raise ValueError(f"a ladder needs steps >= 1 and n_probes >= 1, got {self.steps}, {self.n_probes}")

    def for_device(self, device_type: str) -> "Ladder":
        """On a CPU, TF32 does not exist (it would repeat fp32); fp32 is always solved (the precision part's base)."""
        precs = [p for p in self.precisions if not (device_type != "cuda" and p == "tf32")]
        precs = ["fp32"] + [p for p in precs if p != "fp32"]
        return Ladder(tuple(self.steps), self.rho, tuple(self.n_probes), tuple(precs))


class CalibrationError(RuntimeError):
    """No setting, the reference included, meets the budget."""


@dataclass(frozen=True)
class Calibration:
    """The result: every candidate (``table``, one row each, the chosen one marked), the chosen settings
    (``choice``, fields of PotentialOptions), and what an audit needs (``hutchinson_sd``: the largest per-probe
    standard deviation of the budget's quantity in the reference, nats)."""

    table: pd.DataFrame
    choice: dict
    budget: ErrorBudget
    reference: dict
    hutchinson_sd: float
    model: str = ""
    extra: dict = field(default_factory=dict)

    def record(self) -> dict:
        """JSON-ready: what the sweep chunks read and record."""
        return dict(model=self.model, choice=self.choice, budget=self.budget.as_dict(), reference=self.reference,
                    hutchinson_sd=self.hutchinson_sd, **self.extra)


def blurred_grid(images: Tensor, family: str, thetas, *, angle=None, kernel_size: int = 21,
                 boundary: str = "reflect") -> Tensor:
    """h_theta * x for every image and theta, image-major: (B * T, C, H, W) (as diractrap.sweeps.sweep forms them)."""
    h = kernel(family, [float(t) for t in thetas], kernel_size, angle, dtype=images.dtype).to(images.device)
    T = h.shape[0]
    return blur_same(images.repeat_interleave(T, 0), h.repeat(images.shape[0], 1, 1), boundary)


def _solve(denoiser, x: Tensor, ids, labels, options: PotentialOptions, batch_size: int):
    """Per-probe potentials (len(x), M) float64 numpy, and the largest evaluation count of the batches."""
    out, nfe = [], 0
    for s in range(0, len(x), batch_size):
        res = potential(denoiser, x[s : s + batch_size], labels=None if labels is None else labels[s : s + batch_size],
                        options=options, item_ids=ids[s : s + batch_size])
        out.append(res.q_probes.numpy())
        nfe = max(nfe, res.nfe)
    return np.concatenate(out), nfe


_PRECISION_RANK = {p: i for i, p in enumerate(PRECISIONS)}  # ties in cost go to the higher precision


@dataclass(frozen=True)
class LadderSolves:
    """Per-probe potentials of a calibration set: ``q[name]`` (I, T, M) for the reference ("reference") and every
    Heun grid x precision ("heun<steps>-<precision>"), their evaluation counts, and what a choice needs."""

    q: dict
    nfe: dict
    reference: PotentialOptions
    ladder: Ladder
    costs: CostModel
    family: str
    thetas: list
    items: list
    model: str = ""


def solve_ladder(denoiser, images: Tensor, family: str, thetas, *, item_ids=None, labels: Tensor | None = None,
                 angle=None, kernel_size: int = 21, boundary: str = "reflect", ladder: Ladder | None = None,
                 reference: PotentialOptions | dict | None = None, costs: CostModel | None = None,
                 measured: dict | None = None, batch_size: int = 16, model: str = "",
                 progress: bool = False) -> LadderSolves:
    """The solves a calibration compares (see :func:`calibrate` for the arguments): the reference once, and each
    Heun grid of the ladder once per precision with max(n_probes) probes of the same seed and item ids."""
    ref_opt = PotentialOptions.make(reference if reference is not None else REFERENCE)
    thetas = sorted(float(t) for t in thetas)
    if len(thetas) < 2 or thetas[0] != 0:
        raise ValueError(f"a calibration grid needs theta = 0 and at least one blur, got {thetas}")
    param = next(iter(denoiser.parameters()), None) if hasattr(denoiser, "parameters") else None
    device = images.device if param is None else param.device
    ladder = (ladder or Ladder()).for_device(device.type)
    if ref_opt.n_probes < max(2, max(ladder.n_probes)):
        raise ValueError(f"the reference's n_probes ({ref_opt.n_probes}) must be >= 2 and >= the ladder's "
                         f"{max(ladder.n_probes)}")
    I, T = images.shape[0], len(thetas)
    ids = list(range(I)) if item_ids is None else [int(i) for i in item_ids]
    x = blurred_grid(images, family, thetas, angle=angle, kernel_size=kernel_size, boundary=boundary).to(device)
    xid = [i for i in ids for _ in range(T)]
    xlab = None if labels is None else labels.repeat_interleave(T, 0).to(device)
    if costs is None:
        lab1 = None if labels is None else labels[:1].to(device)
        costs = cost_model(device.type, forward_flops(denoiser, x.shape[1:], device, lab1) / 1e9, measured)
    solves = [("reference", ref_opt)] + [
        (f"heun{s}-{p}", PotentialOptions.make(ref_opt, solver="heun", steps=s, rho=ladder.rho,
                                               n_probes=max(ladder.n_probes), precision=p))
        for s in ladder.steps for p in ladder.precisions]
    q, nfe = {}, {}
    for name, opt in tqdm(solves, desc=f"calibrate {model} {family}", disable=not progress):
        values, nfe[name] = _solve(denoiser, x, xid, xlab, opt, batch_size)
        q[name] = values.reshape(I, T, -1)
    return LadderSolves(q=q, nfe=nfe, reference=ref_opt, ladder=ladder, costs=costs, family=family, thetas=thetas,
                        items=ids, model=model)


def assess(solves: LadderSolves, budget: ErrorBudget | None = None) -> tuple[pd.DataFrame, dict]:
    """Every candidate of ``solves`` under ``budget``: the table (one row each, the reference last) and the
    reference's own error parts."""
    budget = budget or ErrorBudget()
    ref_opt, ladder, costs, q, nfe = solves.reference, solves.ladder, solves.costs, solves.q, solves.nfe
    model, family, thetas = solves.model, solves.family, solves.thetas
    ref = q["reference"]
    allowed = budget.allowed(ref)
    rows = []

    def add(solver, steps, M, precision, n, parts, ratios):
        ratio = max(ratios)
        rows.append(dict(
            model=model, family=family, solver=solver, steps=steps,
            rho=ladder.rho if solver == "heun" else math.nan,
            rtol=ref_opt.rtol if solver != "heun" else math.nan, atol=ref_opt.atol if solver != "heun" else math.nan,
            n_probes=M, precision=precision, nfe=n, forward_equivalents=n * (1 + M),
            seconds=costs.seconds(n, M, precision), cost_source=costs.source[precision],
            err_solver=parts["solver"].max(), err_precision=parts["precision"].max(),
            err_hutchinson=parts["hutchinson"].max(), err_bound=parts["total"].max(),
            err_measured=parts["measured"].max(), allowed=allowed.min(), ratio_order=ratios[0],
            ratio_values=ratios[1], ratio=ratio, meets=bool(ratio <= 1 / budget.headroom),
            images=ref.shape[0], thetas=" ".join(f"{t:g}" for t in thetas), quantity=budget.quantity,
            beta=budget.beta, epsilon=budget.epsilon, headroom=budget.headroom))

    for s in ladder.steps:
        for p in ladder.precisions:
            for M in ladder.n_probes:
                args = (ref, q[f"heun{s}-{p}"], q[f"heun{s}-fp32"], M)
                add("heun", s, M, p, nfe[f"heun{s}-{p}"], budget.parts(*args), budget.ratios(*args))
    ref_parts = budget.parts(ref)
    add(ref_opt.solver, -1, ref_opt.n_probes, ref_opt.precision, nfe["reference"], ref_parts, budget.ratios(ref))
    table = pd.DataFrame(rows)
    table["reference"] = [False] * (len(table) - 1) + [True]
    return table, ref_parts


def pick(table: pd.DataFrame):
    """The index of the cheapest row of an assessment table that meets the budget (ties, e.g. a closed-form prior
    with no FLOPs: fewer forward-equivalents, the higher precision, more steps, more probes); None if none does.
    benchmarks/paper_costs.py calls it on a table whose ``seconds`` were recomputed for another device."""
    ok = table[table["meets"]]
    if ok.empty:
        return None
    key = ok.assign(rank=ok["precision"].map(_PRECISION_RANK), neg_steps=-ok["steps"], neg_m=-ok["n_probes"])
    return key.sort_values(["seconds", "forward_equivalents", "rank", "neg_steps", "neg_m"]).index[0]


def choose(solves: LadderSolves, budget: ErrorBudget | None = None) -> Calibration:
    """Assess every candidate of ``solves`` under ``budget`` (:func:`assess`) and pick the cheapest that meets it
    (ties, e.g. a closed-form prior with no FLOPs: fewer forward-equivalents, the higher precision, more steps,
    more probes); the reference is the last rung (see :func:`calibrate`)."""
    budget = budget or ErrorBudget()
    table, ref_parts = assess(solves, budget)
    ref_opt, ladder, model, family = solves.reference, solves.ladder, solves.model, solves.family
    allowed = budget.allowed(solves.q["reference"])
    ok = table[table["meets"]]
    if ok.empty:
        ladder_rows = table[~table["reference"]]
        cheap = ladder_rows.loc[ladder_rows["ratio"].idxmin()]
        ref_row = table[table["reference"]].iloc[0]
        raise CalibrationError(
            f"calibration of {model or 'the model'} ({family}): no setting meets the budget (beta = {budget.beta:g} "
            f"on {budget.quantity}, epsilon = {budget.epsilon}, headroom = {budget.headroom:g}: a candidate needs "
            f"<= {1 / budget.headroom:.3g}): error bound / allowed error, order and values: "
            f"the reference ({ref_opt.solver} {ref_opt.rtol:g}, {ref_opt.n_probes} probes, its Hutchinson part "
            f"alone) {ref_row.ratio_order:.3g} and {ref_row.ratio_values:.3g}; the closest candidate ({cheap.solver} "
            f"{cheap.steps} steps, {cheap.n_probes} probes, {cheap.precision}) {cheap.ratio_order:.3g} and "
            f"{cheap.ratio_values:.3g}: add probes to the reference, loosen the budget, or set the potential's "
            "settings explicitly")
    best = pick(table)
    table["chosen"] = table.index == best
    row = table.loc[best]
    if row["reference"]:
        choice = ref_opt.as_dict()
    else:
        choice = PotentialOptions.make(ref_opt, solver="heun", steps=int(row["steps"]), rho=ladder.rho,
                                       n_probes=int(row["n_probes"]), precision=row["precision"]).as_dict()
    return Calibration(table=table, choice=choice, budget=budget, reference=ref_opt.as_dict(),
                       hutchinson_sd=float(ref_parts["sd"].max()), model=model,
                       extra=dict(family=family, thetas=solves.thetas, items=solves.items,
                                  allowed=float(allowed.min()), gflop=solves.costs.gflop))


def calibrate(denoiser, images: Tensor, family: str, thetas, *, budget: ErrorBudget | None = None,
              **kwargs) -> Calibration:
    """Pick the cheapest settings of a :class:`Ladder` whose errors stay within ``budget`` on these images.

    Args:
        denoiser: the prior (images are moved to its parameters' device when it has any).
        images: (I, C, H, W) in [0, 1], a few images of the sweep's set; ``item_ids`` seed their probes (as in the
            sweep); ``labels`` (I,) for a conditional prior.
        family, thetas, angle, kernel_size, boundary: one family's grid, as the sweep forms it (theta_0 = 0).
        budget, ladder, reference: :class:`ErrorBudget`, :class:`Ladder`, and the reference's PotentialOptions
            (default :data:`REFERENCE`; n_probes >= max(ladder.n_probes) and >= 2).
        costs: the :class:`CostModel`; default from the network's FLOPs at this image size on its device, with
            ``measured`` seconds where a GPU run of benchmarks/gpu_paper_check.py gave them.
        batch_size, model, progress: items per solve; the model's name (for messages and the table); a bar.
    Returns:
        :class:`Calibration` (:func:`solve_ladder`, then :func:`choose`). The reference is the ladder's last rung:
        if no cheaper candidate meets the budget it is chosen; if it does not meet it either,
        :class:`CalibrationError` names the model and the errors.
    """
    return choose(solve_ladder(denoiser, images, family, thetas, **kwargs), budget)


def read_calibration(path) -> tuple[dict, str]:
    """A calibration record written by the workflow (:meth:`Calibration.record` as JSON) and the provenance string
    the sweep rows carry: "calibrated <file name> sha256:<first 12 hex of the file's hash>"."""
    raw = Path(path).read_bytes()
    return json.loads(raw), f"calibrated {Path(path).name} sha256:{hashlib.sha256(raw).hexdigest()[:12]}"


def load_measurements(path, prior: str) -> dict:
    """{precision: seconds per image-forward} for ``prior`` from a JSON written by benchmarks/gpu_paper_check.py
    (``{"forward_seconds": {prior: {precision: s}}}``); {} when ``path`` is None or the prior is not in it."""
    if not path:
        return {}
    data = json.loads(Path(path).read_text())
    return {p: float(v) for p, v in data.get("forward_seconds", {}).get(prior, {}).items() if p in PRECISIONS}


# ---------------------------------------------------------------------------------------------------------------
# The audit: one image of a sweep chunk recomputed at the reference's solver and precision
# ---------------------------------------------------------------------------------------------------------------


class AuditError(RuntimeError):
    """A sweep chunk's audit broke the budget."""


def audit(denoiser, image: Tensor, q_chosen, family: str, thetas, *, calibration: dict, item_id: int = 0,
          label: Tensor | None = None, angle=None, kernel_size: int = 21, boundary: str = "reflect") -> dict:
    """Recompute one image of a sweep chunk with the reference's settings (solver, tolerances, precision, n_probes;
    the chunk's seed, so its probes are the reference's first ones) and check the budget on it.

    ``q_chosen``: (T,) the chunk's values for this image along the sorted ``thetas``. With the "steps" budget only
    the image's smallest step is recomputed (2 potentials): where an order would flip first; with "differences"
    every theta. Parts, as in :meth:`ErrorBudget.parts`: solver and
    precision together = the chunk's value against the reference's mean over the same M probes; Hutchinson =
    coverage x the reference's per-probe spread of this image's quantity / sqrt(M); allowed = the budget's on the
    reference's values. Returns one record (``passes``: bound <= allowed).
    """
    budget = ErrorBudget(**calibration["budget"])
    choice = PotentialOptions.make(calibration["choice"])
    ref = PotentialOptions.make(calibration["reference"], seed=choice.seed)
    M = choice.n_probes
    if ref.n_probes < max(2, M):
        raise ValueError(f"the reference's n_probes ({ref.n_probes}) must be >= 2 and >= the chunk's ({M})")
    thetas = sorted(float(t) for t in thetas)
    q_c = np.asarray(q_chosen, dtype=np.float64)
    if q_c.shape != (len(thetas),):
        raise ValueError(f"q_chosen must have one value per theta ({len(thetas)}), got shape {q_c.shape}")
    if budget.quantity == "steps":
        k = int(np.argmin(np.abs(np.diff(q_c))))
        idx = [k, k + 1]
    else:
        idx = list(range(len(thetas)))
    sub = [thetas[i] for i in idx]
    param = next(iter(denoiser.parameters()), None) if hasattr(denoiser, "parameters") else None
    device = image.device if param is None else param.device
    x = blurred_grid(image[None], family, sub, angle=angle, kernel_size=kernel_size, boundary=boundary)
    res = potential(denoiser, x.to(device), labels=None if label is None else label.expand(len(sub)).to(device),
                    options=ref, item_ids=[item_id] * len(sub))
    q_ref = res.q_probes.numpy().astype(np.float64)[None]  # (1, S, M_ref)
    d_ref = budget.transform(q_ref)[0]  # (S - 1, M_ref)
    d_c = budget.transform(q_c[idx][None, :, None])[0, :, 0]
    measured = np.abs(d_c - d_ref[:, :M].mean(-1))  # per difference or step
    hutch = budget.coverage * d_ref.std(-1, ddof=1) / math.sqrt(M)
    allowed = budget.allowed(q_ref)[0]
    ratios = (measured + hutch) / allowed
    k = int(np.argmax(ratios))  # the worst one is reported
    return dict(family=family, item=int(item_id), thetas=" ".join(f"{t:g}" for t in sub),
                err_solver_precision=float(measured[k]), err_hutchinson=float(hutch[k]),
                err_bound=float(measured[k] + hutch[k]), allowed=float(allowed[k]), ratio=float(ratios[k]),
                passes=bool(ratios[k] <= 1), audit_nfe=res.nfe,
                reference=(f"heun {ref.steps} steps" if ref.solver == "heun" else
                           f"{ref.solver} rtol={ref.rtol:g} atol={ref.atol:g}")
                + f" {ref.n_probes} probes {ref.precision}")


def check_audits(records) -> None:
    """Raise :class:`AuditError` naming every chunk whose audit broke the budget (records: dicts with ``chunk``
    or ``path``, and the fields of :func:`audit`)."""
    bad = [r for r in records if not r["passes"]]
    if bad:
        lines = [f"{r.get('chunk', r.get('path', '?'))}: item {r['item']}, error bound {r['err_bound']:.3g} nats "
                 f"(solver + precision {r['err_solver_precision']:.3g}, Hutchinson {r['err_hutchinson']:.3g}) > "
                 f"allowed {r['allowed']:.3g}" for r in bad]
        raise AuditError(f"{len(bad)} sweep chunk(s) broke the error budget:\n  " + "\n  ".join(lines))
