"""The image potential q(x) = -log p(x) of a diffusion prior, through the probability-flow ODE (Section 2).

For a denoiser D (the prior, :mod:`diractrap.priors`) the sigma-marginals p_sigma = p * N(0, sigma^2 I) are
transported into one another by the probability-flow ODE, in EDM's sigma parameterisation

    dz/dsigma = (z - D(z, sigma)) / sigma,        z(sigma_min) = z0 (the image, in the denoiser's native range),

and the instantaneous change of variables gives the log-density along the path:

    q_native(z0) = -log p_{sigma_min}(z0) = -log N(z(sigma_max); 0, sigma_max^2 I)
                   - int_{sigma_min}^{sigma_max} (N - div D(z(sigma), sigma)) / sigma dsigma.          (Section 2)

The end-point density p_{sigma_max} is replaced by N(0, sigma_max^2 I): this ignores the data's mean and covariance,
an error of about |mean| / sigma_max nats per dimension; :func:`gaussian_flow_potential` computes, for a Gaussian
prior, the exact value the ODE converges to, which separates this error from the solver's. Optionally
(``tail_sigma``) the path above a level sigma_c is replaced by the closed form of a Gaussian of the data, which
removes that bias and the evaluations above sigma_c -- exact only where that Gaussian is the prior (BENCHMARKS.md).

How q is computed is one frozen :class:`PotentialOptions` (solver, tolerances, what the step size controls, probes,
seed), shared by this module, :func:`diractrap.sweeps.sweep`, :func:`diractrap.deconv.statement1` and the CLI.

All solvers integrate in s = ln sigma, where the equations read dz/ds = z - D(z, e^s) and
d(ell)/ds = N - div D: the Jacobian of the drift, I - dD/dz, has eigenvalues in [0, 1] for any MMSE denoiser of a
Gaussian, so the problem is not stiff on this scale (score_sde's VE time t is the same variable up to an affine
map). The divergence integral ell is carried in float64 alongside the state, whose dtype is the image's.

Units: the denoiser works in its native range and sigma units; the result is converted once, at the end, to nats
for images in [0, 1]: for a prior on [-1, 1] (z = 2x - 1), q(x) = q_native(2x - 1) - N ln 2.

Sections: the options; the result; probes (per-item generators, common random numbers); the drift and its
divergence; the solvers (Heun on EDM's rho-schedule; adaptive Dormand-Prince and Tsitouras 5(4) pairs, with the
error controlled on the state or on q); the public entry point; the Gaussian oracle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .checks import (check_count, check_images, check_memory, check_model_input, check_nonnegative, check_positive,
                     memory_need, network_peak)
from .numerics import PRECISIONS, REDUCED, at_precision, precision_scope
from .priors import check_denoiser, from_native, range_scale, to_native
from .rng import ItemGenerators

__all__ = [
    "PotentialOptions",
    "PotentialResult",
    "potential",
    "make_probes",
    "rho_schedule",
    "gaussian_flow_potential",
    "SOLVERS",
    "PROBES",
]

SOLVERS = ("heun", "dopri5", "tsit5")
CONTROLS = ("q", "state")
PROBES = ("rademacher", "gaussian")
DIVERGENCES = ("hutchinson", "exact")
MAX_EXACT_DIM = 4096  # exact divergence costs N VJPs per evaluation: beyond this, use Hutchinson
_EXACT_ITEMS_PER_PASS = 512  # replicated images per forward pass of the exact divergence
_MAX_ADAPTIVE_STEPS = 20_000  # accepted + rejected steps before dopri5 gives up
REDUCED_MAX_NFE = 2_000  # an adaptive solve on a reduced-precision network stops here (see PotentialOptions.max_nfe)
BITS_OFFSET_8BIT = 8.0  # log2(256): bits/dim for pixel values on the 8-bit scale, as score_sde reports them


# ---------------------------------------------------------------------------------------------------------------
# The options: one frozen object shared by potential, sweeps.sweep, deconv.statement1 and the CLI
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PotentialOptions:
    """How q(x) is computed: the library's defaults are an accurate general-purpose choice (BENCHMARKS.md
    "potential"); a sweep calibrates cheaper ones against its error budget (:mod:`diractrap.calibration`).

    solver:     "dopri5" (adaptive Dormand-Prince 5(4)), "tsit5" (adaptive Tsitouras 5(4)) or "heun" (fixed grid of
                ``steps`` steps on EDM's rho-schedule, 2 evaluations each).
    steps:      Heun's number of steps (ignored by the adaptive solvers).
    rho:        the exponent of Heun's rho-schedule (EDM's 7; inf: uniform in ln sigma).
    rtol:       adaptive solvers: the error allowed relative to the solution's size (see ``control``).
    atol:       adaptive solvers: the absolute error allowed; with ``control = "q"`` in nats per dimension.
    control:    which error the adaptive step size controls. "q": each image's divergence integral's local error
                must stay below atol * N + rtol * |integral| nats. "state": the scaled RMS error of the whole state
                (image and integral, scale atol + rtol |y|, as scipy and torchdiffeq).
    divergence: "hutchinson" (``n_probes`` probes per image; q is their mean, stderr their standard error) or
                "exact" (N VJPs per evaluation, N <= MAX_EXACT_DIM).
    probe:      the kind of Hutchinson probe: "rademacher" (+-1 entries) or "gaussian" (:func:`make_probes`).
    n_probes:   Hutchinson probes per image; 2 or more give a standard error.
    seed:       seeds the probes of each item (with its item id), so every blur level of an image shares them.
    tail_sigma: None (integrate to sigma_max, end point N(0, sigma_max^2 I)) or a noise level in units of [0, 1]
                images above which the path is replaced by the closed form of a Gaussian of the data (``tail=`` of
                :func:`potential`): q = -log N(x(sigma_c); m, Sigma + sigma_c^2 I) - int_{sigma_min}^{sigma_c}.
    precision:  the network's evaluations (:data:`diractrap.numerics.PRECISIONS`): "fp32", "tf32", "bf16" or
                "fp16"; the ODE state stays in the image's dtype and the divergence integral in float64.
    max_nfe:    an adaptive solve needing more network evaluations stops with an error naming its settings. None:
                no limit at fp32 (only the step count's), REDUCED_MAX_NFE otherwise -- an adaptive step control fed
                a reduced-precision network shrinks its steps down to the network's rounding noise and would not end.
    """

    solver: str = "tsit5"  # the default: <= 1e-3 nats/dim on every benchmark prior with the fewest evaluations
    steps: int = 128
    rho: float = 7.0
    rtol: float = 1e-4
    atol: float = 1e-4
    control: str = "state"  # "q" is cheaper on trained priors but trusts (z - D) / sigma^2 to be a gradient
    divergence: str = "hutchinson"
    probe: str = "rademacher"
    n_probes: int = 2
    seed: int = 0
    tail_sigma: float | None = None  # off: the Gaussian tail needs the data's mean and covariance
    precision: str = "fp32"
    max_nfe: int | None = None

    def __post_init__(self):
        for name, allowed in (("solver", SOLVERS), ("control", CONTROLS), ("divergence", DIVERGENCES),
                              ("probe", PROBES), ("precision", PRECISIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        check_count(1, steps=self.steps, n_probes=self.n_probes, max_nfe=self.max_nfe)  # one message per value
        check_count(0, seed=self.seed)
        check_nonnegative(rtol=self.rtol, atol=self.atol)
        check_positive(rho=self.rho, tail_sigma=self.tail_sigma)
        if self.rtol + self.atol == 0:
            raise ValueError("rtol and atol are both 0: an adaptive solver needs a tolerance")

    @classmethod
    def make(cls, options=None, **overrides) -> "PotentialOptions":
        """Options from a :class:`PotentialOptions`, a dict of its fields or None (the defaults), with ``overrides``
        (None values ignored) replacing fields; an unknown name is an error that lists the valid ones."""
        base = {} if options is None else (options.as_dict() if isinstance(options, cls) else dict(options))
        base.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(base) - set(cls.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown potential option(s) {sorted(unknown)}: valid are "
                            f"{sorted(cls.__dataclass_fields__)}")
        return cls(**base)

    @property
    def nfe_limit(self) -> int | None:
        """The evaluation cap of an adaptive solve: ``max_nfe``, or its default for the precision."""
        if self.max_nfe is not None:
            return self.max_nfe
        return REDUCED_MAX_NFE if self.precision in REDUCED else None

    def as_dict(self) -> dict:
        """The fields as a plain dict (for tables, JSON and the workflow's config)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}



# ---------------------------------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PotentialResult:
    """q(x) for a batch of images, with its Monte-Carlo error and the settings that produced it.

    q:            (B,) float64, nats, q(x) = -log p_{sigma_min}(x) for images x in [0, 1] (smaller = more probable;
                  often negative: densities at small sigma_min are >> 1).
    stderr:       (B,) float64, Monte-Carlo standard error of q: std across the M probes / sqrt(M); 0 for the exact
                  divergence; NaN for one probe (not estimable: use n_probes >= 2).
    nfe:          denoiser evaluations of the solve (for the whole batch: the batch shares them).
    bits_per_dim: (B,) q / (N ln 2) + 8, the likelihood literature's bits/dim (pixel values on the 8-bit scale,
                  no dequantisation; comparable with score_sde's reports).
    settings:     everything needed to reproduce the numbers (solver, steps / tolerances, probes, precision, seed,
                  sigmas).
    q_probes:     (B, M) float64, the potential for each probe alone (q is their mean; M = 1 for the exact
                  divergence): probe m of an item is the same for any n_probes > m, so a solve with more probes
                  contains the answers of the solves with fewer (diractrap.calibration uses it).
    Tensors are on the CPU whatever the device of the solve.
    """

    q: Tensor
    stderr: Tensor
    nfe: int
    bits_per_dim: Tensor
    settings: dict = field(default_factory=dict)
    q_probes: Tensor | None = None


# ---------------------------------------------------------------------------------------------------------------
# Probes: one generator per (seed, item), so q(h_theta * x_i) at every theta reuses the same probes
# ---------------------------------------------------------------------------------------------------------------


def make_probes(shape, n_probes: int, *, seed: int = 0, item_ids=None, kind: str = "rademacher",
                dtype=torch.float32, device=None) -> Tensor:
    """Hutchinson probes for a batch of images of shape (B, C, H, W): a tensor (B, M, C, H, W).

    Item i's M probes come from its own generator (:class:`diractrap.rng.ItemGenerators`, scheme "seedsequence",
    drawn on the CPU, then moved), so they do not depend on the batch an item is in nor on the device.
    ``item_ids`` defaults to arange(B); pass the image's index to reuse the same probes for every blurred version
    of that image (common random numbers).
    ``kind``: "rademacher" (+-1, so |eps|^2 = N exactly) or "gaussian" (N(0, 1) entries).
    """
    if kind not in PROBES:
        raise ValueError(f"probe kind must be one of {PROBES}, got {kind!r}")
    if n_probes < 1:
        raise ValueError(f"n_probes must be >= 1, got {n_probes}")
    B, *item_shape = tuple(shape)
    ids = range(B) if item_ids is None else [int(i) for i in item_ids]
    if len(ids) != B:
        raise ValueError(f"item_ids has {len(ids)} entries for a batch of {B}")
    gens = ItemGenerators(seed, ids, scheme="seedsequence")
    if kind == "rademacher":
        return gens.rademacher((n_probes, *item_shape), dtype=dtype).to(device)
    return gens.randn((n_probes, *item_shape), dtype=torch.float64).to(dtype).to(device)


# ---------------------------------------------------------------------------------------------------------------
# The drift z - D(z, sigma) and the divergence integrand N - div D (both per unit of s = ln sigma)
# ---------------------------------------------------------------------------------------------------------------


class _Drift:
    """Evaluates (z - D(z, sigma), N - div_z D(z, sigma)) and counts the denoiser evaluations.

    The divergence is (B, M) float64: one Hutchinson estimate per probe (N - eps^T J eps, one VJP per probe
    through a single forward pass), or (B, 1) exact, from N VJPs with the basis vectors in replicated batches.
    """

    def __init__(self, denoiser, labels, probes: Tensor | None, max_nfe: int | None = None, what: str = ""):
        self.denoiser, self.labels, self.probes, self.nfe = denoiser, labels, probes, 0
        self.max_nfe, self.what = max_nfe, what

    def __call__(self, z: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
        self.nfe += 1
        if self.max_nfe is not None and self.nfe > self.max_nfe:
            raise RuntimeError(f"{self.what} stopped after {self.max_nfe} network evaluations at sigma = {sigma:.3g} "
                               "(max_nfe): a reduced-precision network's rounding noise keeps an adaptive step "
                               "control from ending; use solver='heun' (a fixed grid), precision='fp32' or looser "
                               "rtol/atol")
        if self.probes is None:
            return self._exact(z, sigma)
        B, M = self.probes.shape[:2]
        N = z[0].numel()
        with torch.enable_grad():
            zg = z.detach().requires_grad_(True)
            D = self.denoiser(zg, z.new_full((B,), sigma), self.labels)
            div = torch.empty(B, M, dtype=torch.float64, device=z.device)
            for m in range(M):
                eps = self.probes[:, m]
                (v,) = torch.autograd.grad(D, zg, eps, retain_graph=m < M - 1)
                div[:, m] = (v * eps).flatten(1).sum(1, dtype=torch.float64)
        return (z - D).detach(), N - div

    def _exact(self, z: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
        B, N = z.shape[0], z[0].numel()
        k = max(1, min(N, _EXACT_ITEMS_PER_PASS // B))  # basis vectors per pass
        div = torch.zeros(B, dtype=torch.float64, device=z.device)
        labels = self.labels
        D0 = None
        for start in range(0, N, k):
            idx = torch.arange(start, min(start + k, N), device=z.device)
            kk = len(idx)
            basis = torch.zeros(kk, N, dtype=z.dtype, device=z.device)
            basis[torch.arange(kk), idx] = 1
            basis = basis.view(1, kk, *z.shape[1:]).expand(B, -1, -1, -1, -1).reshape(B * kk, *z.shape[1:])
            with torch.enable_grad():
                zr = z.detach().repeat_interleave(kk, dim=0).requires_grad_(True)  # (B * kk, C, H, W), item-major
                lr = None if labels is None else labels.repeat_interleave(kk, dim=0)
                D = self.denoiser(zr, z.new_full((B * kk,), sigma), lr)
                (v,) = torch.autograd.grad(D, zr, basis)
            div += v.reshape(B, kk, N)[:, torch.arange(kk), idx].sum(1, dtype=torch.float64)
            if D0 is None:
                D0 = D.detach().reshape(B, kk, *z.shape[1:])[:, 0]
        return z - D0, (N - div)[:, None]


# ---------------------------------------------------------------------------------------------------------------
# Solvers in s = ln sigma: state (z, ell), z in the image dtype, ell (B, M) float64
# ---------------------------------------------------------------------------------------------------------------


def rho_schedule(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0, *,  # EDM: rho = 7
                 descending: bool = False) -> Tensor:
    """EDM's noise levels sigma_i = (sigma_min^(1/rho) + i/n (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho, i = 0..n,
    increasing from sigma_min to sigma_max (float64, (steps + 1,)), end points exactly sigma_min and sigma_max.
    ``rho = inf`` is the limit: evenly spaced in ln sigma (a geometric sequence).

    ``descending``: the same levels from sigma_max down to sigma_min, in the arithmetic of EDM's sampler
    (Karras et al. 2022, Eq. 5): (sigma_max^(1/rho) + i/n (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho with the
    end points not pinned. It differs from the reversed ascending schedule by rounding only, and is kept so that
    :func:`diractrap.train.edm_sampler` draws the same samples as before; ``steps = 0`` gives [sigma_max].
    """
    if steps < (0 if descending else 1):
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not rho > 0:
        raise ValueError(f"rho must be > 0 (or inf), got {rho}")
    if descending and not math.isinf(rho):
        i = torch.arange(steps + 1, dtype=torch.float64)
        lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
        return (hi + i / max(steps, 1) * (lo - hi)) ** rho
    if descending:
        return rho_schedule(sigma_min, sigma_max, max(steps, 1), rho)[-steps - 1 :].flip(0)
    t = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    if math.isinf(rho):
        s = torch.exp(math.log(sigma_min) + t * math.log(sigma_max / sigma_min))
    else:
        lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
        s = (lo + t * (hi - lo)) ** rho
    s[0], s[-1] = sigma_min, sigma_max
    return s


def _heun(drift: _Drift, z: Tensor, sigmas: Tensor, M: int, pbar) -> tuple[Tensor, Tensor]:
    """Heun's predictor-corrector on the grid ``sigmas`` with the linear part of dz/ds = z - D integrated exactly
    (the exponential Heun method ETD2RK, Cox & Matthews 2002): 2 evaluations per step, second order.

    With h = s1 - s0 and e^h = sigma1 / sigma0, the variation of constants gives
    z1 = e^h z0 - int_0^h e^(h - t) D dt. The predictor freezes D at D0 -- z~ = e^h z0 - (e^h - 1) D0, which is
    EDM's Euler step in sigma -- and the corrector takes D linear between D0 and D1 = D(z~, sigma1):
    z1 = z~ - (e^h - 1 - h) / h (D1 - D0). The divergence integral takes the trapezoid in s. Integrating z - D
    directly (plain Heun in s) is ~3x less accurate at equal cost (BENCHMARKS.md): the exponential growth of the
    noise-dominated components is then approximated instead of exact. Every image follows the same grid, so results
    depend on the batch composition only through the denoiser's floating-point rounding (a float32 network's batched
    kernels: ~1e-7 relative of q, tests/test_potential.py), unlike the adaptive solvers' shared step sizes.
    """
    ell = torch.zeros(z.shape[0], M, dtype=torch.float64, device=z.device)
    sig = sigmas.tolist()
    for i in range(len(sig) - 1):
        growth, h = sig[i + 1] / sig[i], math.log(sig[i + 1] / sig[i])
        g0, a0 = drift(z, sig[i])
        D0 = z - g0
        z_pred = growth * z - (growth - 1) * D0
        g1, a1 = drift(z_pred, sig[i + 1])
        z = z_pred - (math.expm1(h) - h) / h * ((z_pred - g1) - D0)
        ell = ell + (0.5 * h) * (a0 + a1)
        pbar.update(1)
    return z, ell


# Embedded 5(4) pairs with 7 stages whose last stage is the first of the next step (FSAL): nodes c, stages a,
# 5th-order weights b (the step taken: local extrapolation) and error weights e = b - b* (b* the embedded 4th-order
# weights). tests/test_potential.py checks every order condition of both pairs up to order 5 (and 4 for b*).
@dataclass(frozen=True)
class _Tableau:
    c: tuple
    a: tuple
    b: tuple
    e: tuple


_DP_B5 = (Fraction(35, 384), 0, Fraction(500, 1113), Fraction(125, 192), Fraction(-2187, 6784), Fraction(11, 84), 0)
_DP_B4 = (Fraction(5179, 57600), 0, Fraction(7571, 16695), Fraction(393, 640), Fraction(-92097, 339200),
          Fraction(187, 2100), Fraction(1, 40))
TABLEAUS = {
    # Dormand & Prince (1980): scipy's RK45, torchdiffeq's dopri5
    "dopri5": _Tableau(
        c=(0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1, 1),
        a=((), (1 / 5,), (3 / 40, 9 / 40), (44 / 45, -56 / 15, 32 / 9),
           (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
           (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656)),
        b=tuple(float(b) for b in _DP_B5),
        e=tuple(float(b - bs) for b, bs in zip(_DP_B5, _DP_B4)),
    ),
    # Tsitouras (2011), "Runge-Kutta pairs of order 5(4) satisfying only the first column simplifying assumption",
    # with the corrected sign of the last error weight (-1/66)
    "tsit5": _Tableau(
        c=(0, 0.161, 0.327, 0.9, 0.9800255409045097, 1, 1),
        a=((), (0.161,), (-0.008480655492356989, 0.335480655492357),
           (2.8971530571054935, -6.359448489975075, 4.3622954328695815),
           (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
           (5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401, -0.02826905039406838)),
        b=(0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081,
           2.324710524099774, 0),
        e=(0.0017800110522257773, 0.0008164344596567469, -0.007880878010261995, 0.1447110071732629,
           -0.5823571654525552, 0.45808210592918697, -1 / 66),
    ),
}


def _combine(y, h: float, weights, ks):
    """y + h * sum_j w_j k_j, skipping zero weights."""
    out = y
    for w, k in zip(weights, ks):
        if w:
            out = out + (h * w) * k
    return out


def _error_ratio(err_z, err_l, z0, z1, l0, l1, rtol: float, atol: float, control: str = "state",
                 grad_q=None) -> Tensor:
    """Per-image error norm, shape (B,); a step is accepted when it is <= 1 for every image.

    "state": the larger of the RMS scaled errors of the image and of the divergence integrals (scale
    atol + rtol * max(|y0|, |y1|), as scipy and torchdiffeq). "q": the error of the reported q, |err_ell| +
    |<grad_q, err_z>| per probe (RMS over probes), scaled by atol * N + rtol * max(|ell0|, |ell1|), N = C*H*W (atol
    in nats per dimension). ``grad_q`` = (z - D(z, sigma)) / sigma^2 = grad(-log p_sigma)(z) at the step's end: the
    rest of the solve maps z to -log p_sigma(z) (up to the integral already made), so an error dz in the image
    changes the final q by <grad_q, dz> to first order -- what an error of the image costs in the result.
    """
    if control == "q":
        N = z0[0].numel()
        sl = atol * N + rtol * torch.maximum(l0.abs(), l1.abs())
        e = err_l.abs()
        if grad_q is not None:
            e = e + (grad_q * err_z).flatten(1).sum(1, dtype=torch.float64).abs()[:, None]
        return (e / sl).pow(2).mean(1).sqrt()
    sz = atol + rtol * torch.maximum(z0.abs(), z1.abs())
    sl = atol + rtol * torch.maximum(l0.abs(), l1.abs())
    rz = (err_z / sz).double().flatten(1).pow(2).mean(1).sqrt()
    rl = (err_l / sl).pow(2).mean(1).sqrt()
    return torch.maximum(rz, rl)


def _adaptive(drift: _Drift, z: Tensor, s0: float, s1: float, M: int, rtol: float, atol: float, pbar, *,
              tableau: str = "dopri5", control: str = "state"):
    """An adaptive embedded 5(4) pair (:data:`TABLEAUS`) with local extrapolation and FSAL (6 evaluations per step)
    from s0 to s1; the error norm is :func:`_error_ratio` with ``control``.

    Step sizes are shared by the batch: a step is accepted when the worst image's error norm is <= 1. Each image
    is therefore solved at least as accurately as alone, but its q depends, within the tolerance, on which other
    images share its batch (tests/test_potential.py measures it); numbers independent of the batch need batch 1
    or the fixed-grid Heun solver.
    """
    tab = TABLEAUS[tableau]
    ell = torch.zeros(z.shape[0], M, dtype=torch.float64, device=z.device)
    span = s1 - s0

    def ratio(ez, el, za, zb, la, lb, grad_q=None):
        return _error_ratio(ez, el, za, zb, la, lb, rtol, atol, control, grad_q)

    k1 = drift(z, math.exp(s0))
    # initial step (Hairer, Norsett & Wanner, Sec. II.4): h ~ 0.01 |y| / |f|, checked by one Euler step. Under
    # control "q" the integral starts at 0 (no |y| scale): the Euler probe is taken at h0 = 0.01 (s = ln sigma has
    # its features on a scale ~1), and the step from the estimated derivatives alone.
    g0 = k1[0] / math.exp(2 * s0)  # grad(-log p_sigma) at the start, for control "q"
    d1 = ratio(k1[0], k1[1], z, z, ell, ell, g0).max()
    if control == "q":
        h0 = min(1e-2, span)
    else:
        d0 = ratio(z, ell, z, z, ell, ell).max()
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else float(0.01 * d0 / d1)
        h0 = min(h0, span)
    k_e = drift(z + h0 * k1[0], math.exp(s0 + h0))
    d2 = ratio(k_e[0] - k1[0], k_e[1] - k1[1], z, z, ell, ell, g0).max() / h0
    h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else float((0.01 / max(d1, d2)) ** (1 / 5))
    h = min(100 * h0, h1, span)
    s, n_accept, n_reject = s0, 0, 0
    while s < s1:
        if n_accept + n_reject >= _MAX_ADAPTIVE_STEPS:
            raise RuntimeError(f"{tableau} took more than {_MAX_ADAPTIVE_STEPS} steps (rtol={rtol}, atol={atol}): "
                               "loosen the tolerances or use solver='heun'")
        h = min(h, s1 - s)
        last = s + h >= s1 or (s1 - s - h) < 1e-12 * span
        if last:
            h = s1 - s
        ks = [k1]
        for i in range(1, 6):
            zi = _combine(z, h, tab.a[i], [k[0] for k in ks])
            ks.append(drift(zi, math.exp(s + tab.c[i] * h)))
        z_new = _combine(z, h, tab.b, [k[0] for k in ks])
        l_new = _combine(ell, h, tab.b, [k[1] for k in ks])
        k7 = drift(z_new, math.exp(s + h))
        ks.append(k7)
        err = ratio(_combine(torch.zeros_like(z), h, tab.e, [k[0] for k in ks]),
                    _combine(torch.zeros_like(ell), h, tab.e, [k[1] for k in ks]),
                    z, z_new, ell, l_new, k7[0] / math.exp(2 * (s + h))).max().item()
        if err <= 1.0:
            s = s1 if last else s + h
            z, ell, k1 = z_new, l_new, k7
            n_accept += 1
            pbar.update(h / span)
            factor = 10.0 if err == 0 else min(10.0, 0.9 * err ** (-1 / 5))
        else:
            n_reject += 1
            factor = max(0.2, 0.9 * err ** (-1 / 5))
        h = h * factor
        if h < 1e-12 * span:
            raise RuntimeError(f"{tableau} step size underflow at sigma = {math.exp(s):.3g}: is the denoiser finite?")
    return z, ell, {"accepted_steps": n_accept, "rejected_steps": n_reject}


# ---------------------------------------------------------------------------------------------------------------
# The public entry point: q(x) for images in [0, 1]
# ---------------------------------------------------------------------------------------------------------------


def _end_point_nll(z_T: Tensor, sigma_max: float) -> Tensor:
    """-log N(z_T; 0, sigma_max^2 I) per image, float64: the end-point prior that stands in for p_{sigma_max}."""
    N = z_T[0].numel()
    return 0.5 * z_T.double().flatten(1).pow(2).sum(1) / sigma_max**2 + 0.5 * N * math.log(2 * math.pi * sigma_max**2)


def potential(
    denoiser,
    x: Tensor,
    *,
    labels: Tensor | None = None,
    options: PotentialOptions | dict | None = None,
    item_ids=None,
    probes: Tensor | None = None,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    tail=None,
    progress: bool = False,
    **overrides,
) -> PotentialResult:
    """q(x) = -log p_{sigma_min}(x) of a diffusion prior, in nats, for images x in [0, 1] (Section 2).

    Args:
        denoiser: a prior following :class:`diractrap.priors.Denoiser` (native range, native sigma units).
        x: (B, C, H, W) images in [0, 1]; their dtype is the ODE state's dtype (the divergence integral is float64).
        labels: passed unchanged to the denoiser (class-conditional networks).
        options: a :class:`PotentialOptions` (or a dict of its fields); None gives the defaults, chosen in
            BENCHMARKS.md ("potential"): Tsitouras 5(4) at rtol = atol = 1e-4, 2 Rademacher probes, fp32 network.
        **overrides: any field of :class:`PotentialOptions` (``solver="heun", steps=64``, ``rtol=1e-5``, ...),
            replacing the one of ``options``.
        item_ids: the items' ids for the probes (see :func:`make_probes`), default arange(B). The same probe is
            used along the whole trajectory (as score_sde does).
        probes: an explicit (B, M, C, H, W) tensor of probes; overrides probe / n_probes / seed / item_ids.
        sigma_min, sigma_max: the integration range in native units (default: the denoiser's own).
        tail: with ``tail_sigma``, the Gaussian of the data for the path above it: an object with
            ``potential(x, sigma) -> (B,)`` nats for images x in [0, 1] and sigma in [0, 1] units
            (:meth:`diractrap.priors.GaussianPrior.fit` on the prior's training images).
        progress: show a tqdm bar over the steps.
    Returns:
        :class:`PotentialResult`. The network runs at ``precision`` (TF32 off unless "tf32", autocast for
        "bf16" / "fp16"), the caller's TF32 flags restored afterwards; the denoiser is
        never differentiated with respect to its parameters. With an adaptive solver a batch shares its step sizes:
        an image's q depends, within the tolerance, on the batch it is in (see :func:`_adaptive`).
    """
    opt = PotentialOptions.make(options, **overrides)
    solver, divergence = opt.solver, opt.divergence
    check_denoiser(denoiser)
    check_images(x, "x")  # a non-empty float batch (B, C, H, W), finite, in [0, 1]: before any solve
    check_model_input(denoiser, x)
    sigma_min = float(denoiser.sigma_min if sigma_min is None else sigma_min)
    sigma_max = float(denoiser.sigma_max if sigma_max is None else sigma_max)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    B, N = x.shape[0], x[0].numel()
    scale = range_scale(denoiser.data_range)
    sigma_end = sigma_max
    if opt.tail_sigma is not None:
        sigma_end = opt.tail_sigma * scale  # native units
        if tail is None:
            raise ValueError("tail_sigma needs tail=, the data's Gaussian (e.g. priors.GaussianPrior.fit(images))")
        if not sigma_min < sigma_end <= sigma_max:
            raise ValueError(f"tail_sigma = {opt.tail_sigma} ([0, 1] units) must lie in ({sigma_min / scale:g}, "
                             f"{sigma_max / scale:g}], the prior's range")
    settings = dict(solver=solver, divergence=divergence, sigma_min=sigma_min, sigma_max=sigma_max,
                    data_range=tuple(denoiser.data_range), dtype=str(x.dtype).removeprefix("torch."),
                    device=str(x.device))
    if solver == "heun":
        settings.update(steps=opt.steps, rho=opt.rho)
    else:
        settings.update(rtol=opt.rtol, atol=opt.atol, control=opt.control)
    settings.update(tail_sigma=opt.tail_sigma, precision=opt.precision)
    # memory, before any evaluation: one drift evaluation (a forward pass kept for M VJPs; the exact divergence
    # replicates each image k times per pass) plus the solver's state, ~12 batch copies (stages, error) and the probes
    M = 1 if divergence == "exact" else (opt.n_probes if probes is None else probes.shape[1])
    reps = max(1, min(N, _EXACT_ITEMS_PER_PASS // B)) if divergence == "exact" and N <= MAX_EXACT_DIM else 1
    peak = network_peak(denoiser, (B * reps, *x.shape[1:]), "vjp", n_vjp=M, dtype=x.dtype)
    check_memory(memory_need(peak, (12 + M) * x.numel() * x.element_size()), x.device,
                 f"q(x) of {B} image(s) of {'x'.join(map(str, x.shape[1:]))}")

    if divergence == "exact":
        if N > MAX_EXACT_DIM:
            raise ValueError(f"exact divergence needs N = {N} VJPs per evaluation (limit {MAX_EXACT_DIM}): "
                             "use divergence='hutchinson' with n_probes >= 2")
        eps = None
    elif probes is not None:
        if probes.ndim != 5 or probes.shape[0] != B or probes.shape[2:] != x.shape[1:]:
            raise ValueError(f"probes must be (B, M, C, H, W) = ({B}, M, {', '.join(map(str, x.shape[1:]))}), "
                             f"got {tuple(probes.shape)}")
        eps = probes.to(device=x.device, dtype=x.dtype)
        settings.update(probe="explicit", n_probes=probes.shape[1])
    else:
        eps = make_probes(x.shape, opt.n_probes, seed=opt.seed, item_ids=item_ids, kind=opt.probe, dtype=x.dtype,
                          device=x.device)
        settings.update(probe=opt.probe, n_probes=opt.n_probes, seed=opt.seed)
    M = 1 if eps is None else eps.shape[1]

    limit = None if solver == "heun" else opt.nfe_limit
    what = f"{solver} at rtol={opt.rtol:g}, atol={opt.atol:g} with the network in {opt.precision}"
    drift = _Drift(at_precision(denoiser, opt.precision), labels, eps, limit, what)
    z0 = to_native(x.detach(), denoiser.data_range)
    with precision_scope(opt.precision), torch.no_grad():  # TF32 flags for the forward and backward passes
        if solver == "heun":
            sigmas = rho_schedule(sigma_min, sigma_end, opt.steps, opt.rho)
            with tqdm(total=opt.steps, desc="potential (heun)", disable=not progress, leave=False) as pbar:
                z_T, ell = _heun(drift, z0, sigmas, M, pbar)
        else:
            with tqdm(total=1.0, desc=f"potential ({solver})", disable=not progress, leave=False,
                      bar_format="{l_bar}{bar}| {elapsed}") as pbar:
                z_T, ell, stats = _adaptive(drift, z0, math.log(sigma_min), math.log(sigma_end), M, opt.rtol,
                                            opt.atol, pbar, tableau=solver, control=opt.control)
            settings.update(stats)

    if opt.tail_sigma is None:
        # end-point prior N(0, sigma_max^2 I) in native units, minus the divergence integral (per probe)
        q_native = _end_point_nll(z_T, sigma_max)[:, None] - ell  # (B, M)
        # change of variables to images in [0, 1]: z = a x + b, p_[0,1](x) = p_native(z) a^N, so q = q_native - N ln a
        # (a = 2 for a prior on [-1, 1]: q(x) = q_native(2x - 1) - N ln 2)
        q_all = q_native - N * math.log(scale)
    else:
        # the rest of the path in closed form: -log p_{sigma_c}(z_c) of the data's Gaussian, taken in [0, 1] units
        # (-log p_native(z) = -log p_[0,1](x) + N ln a: the change of variables cancels the same term of q)
        x_c = from_native(z_T, denoiser.data_range)
        q_all = torch.as_tensor(tail.potential(x_c.double(), opt.tail_sigma), dtype=torch.float64,
                                device=ell.device)[:, None] - ell
    q = q_all.mean(1)
    if eps is None:
        stderr = torch.zeros_like(q)
    elif M == 1:
        stderr = torch.full_like(q, math.nan)
    else:
        stderr = q_all.std(1) / math.sqrt(M)
    bpd = q / (N * math.log(2)) + BITS_OFFSET_8BIT
    return PotentialResult(q=q.cpu(), stderr=stderr.cpu(), nfe=drift.nfe, bits_per_dim=bpd.cpu(), settings=settings,
                           q_probes=q_all.cpu())


# ---------------------------------------------------------------------------------------------------------------
# Oracle: the exact value the ODE estimate converges to for a Gaussian prior (closed-form flow + same end point)
# ---------------------------------------------------------------------------------------------------------------


def gaussian_flow_potential(prior, x: Tensor, *, probes: Tensor | None = None, sigma_min: float | None = None,
                            sigma_max: float | None = None) -> Tensor:
    """What :func:`potential` converges to as the solver error -> 0, for a Gaussian prior: (B,) float64 nats.

    For N(m, B diag(lam) B*) the flow is linear: in the eigenbasis c(sigma) - m = (c0 - m) sqrt((lam + sigma^2) /
    (lam + sigma_min^2)). So with the exact divergence q_ODE(x) = q_{sigma_min}(x) + log p_{sigma_max}(z_T)
    - log N(z_T; 0, sigma_max^2 I): the exact potential (``prior.potential``) plus the end-point approximation
    error, all in closed form. With ``probes`` (B, M, C, H, W), the limit of the Hutchinson estimate for those
    probes: div D does not depend on x, so each probe adds eps^T A eps - tr A, A = int J_D ds = B diag(a) B*,
    a = ln(sigma_max / sigma_min) - 1/2 ln((lam + sigma_max^2) / (lam + sigma_min^2)); the result is their mean.
    ``prior`` is a :class:`~diractrap.priors.GaussianPrior` or :class:`~diractrap.priors.DenseGaussianPrior` (any
    ``data_range``); x in [0, 1]; sigmas in native units.
    """
    sigma_min = float(prior.sigma_min if sigma_min is None else sigma_min)
    sigma_max = float(prior.sigma_max if sigma_max is None else sigma_max)
    z0 = to_native(x.double(), prior.data_range)
    N = z0[0].numel()
    m = prior.mean.to(z0)
    lam = prior.lam.to(z0)
    c_T = prior._analysis(z0 - m) * torch.sqrt((lam + sigma_max**2) / (lam + sigma_min**2))
    z_T = m + prior._synthesis(c_T)
    q_native = prior.potential(z0, sigma_min) + prior.log_prob(z_T, sigma_max) + _end_point_nll(z_T, sigma_max)
    if probes is not None:
        a = math.log(sigma_max / sigma_min) - 0.5 * torch.log((lam + sigma_max**2) / (lam + sigma_min**2))
        c = prior._analysis(probes.to(z0).flatten(0, 1))  # (B * M, ...) coefficients of every probe
        quad = (a * c.abs() ** 2).flatten(1).sum(1).view(probes.shape[:2])
        q_native = q_native + (quad - a.expand(c.shape[1:]).sum()).mean(1)
    return q_native - N * math.log(range_scale(prior.data_range))
