"""Accuracy and cost of the ODE potential: our solvers against score_sde's likelihood recipe, on the same images.

Usage: .venv/bin/python benchmarks/potential.py [--quick] [--ncsnpp] [--priors gaussian demo network]
       [--threads 1] [--json OUT.json]      (~15 min on a loaded 2-core machine; --quick ~10 s; --ncsnpp ~5 min)

Priors at the demo workflow's size (32 x 32 x 3):
- gaussian: the stationary Gaussian fitted to the demo training crops (sigma in [0.001, 40] on [0, 1]); the
  converged value is the closed form of the flow for the same probe (potential.gaussian_flow_potential);
- demo: the trained demo prior (EDM DDPM++ SongUNet, ~1.7 M parameters, [-1, 1], sigma in [0.002, 80]); the
  converged value is a dopri5 solve with state control at rtol = atol = --network-ref (1e-6);
- network (--priors network): the same architecture with random weights, every parameter perturbed by
  0.05 N(0, 1) as in tests/fixtures/golden (the table of issue 2); also measures the solver's overhead.
The batch: 3 demo test crops, then crop 1 blurred by Gaussians of std 0.5, 1, 2 px (reflect boundary) -- the
Claim-1 sweep in miniature: the blurred images reuse crop 1's probe (common random numbers), and "diff error" is
the largest relative error of the steps q(h_theta * x) - q(h_theta' * x) between consecutive thetas.
Every solve uses the same Rademacher probe per image, so the errors are solver errors.

Reference ("score_sde"): what score_sde's likelihood and the paper's authors do -- scipy solve_ivp RK45,
rtol = atol = 1e-5, the state [x, log p] flattened to a float64 numpy vector and copied to a float32 tensor at
every evaluation, VE time t in [0, 1] with sigma(t) = sigma_min (sigma_max / sigma_min)^t, one probe, batch 1.

Configurations: "state" / "q" = what the adaptive step controls (potential.PotentialOptions.control; under "q"
atol is in nats/dim); "+ tail s" = the path above sigma = s ([0, 1] units) in closed form from the Gaussian fitted
to the demo training crops (exact for the gaussian prior; for the network, the error column is then the mismatch
of that Gaussian against the network above s, end-point bias included); "default" = PotentialOptions().
Reported: denoiser evaluations (NFE), seconds per image, and the error |q - q_ref| / N in nats per dimension (max
over images). Numbers go into BENCHMARKS.md ("potential").
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import time

import numpy as np
import torch
from scipy.integrate import solve_ivp

from diractrap.potential import gaussian_flow_potential, make_probes, potential


# ---------------------------------------------------------------------------------------------------------------
# Priors and images
# ---------------------------------------------------------------------------------------------------------------


THETAS = (0.5, 1.0, 2.0)  # Gaussian blur std (px) applied to crop 1


def benchmark_batch() -> tuple[torch.Tensor, list[int]]:
    """3 demo test crops spread over the test pictures, then crop 1 blurred with each theta; and the item ids."""
    from diractrap.blur import blur_same
    from diractrap.data import demo_images
    from diractrap.kernels import kernel

    x = demo_images("test")
    x = x[torch.linspace(0, len(x) - 1, 3).long()]
    blurred = blur_same(x[1:2].expand(len(THETAS), -1, -1, -1), kernel("gaussian", list(THETAS), 21))
    return torch.cat([x, blurred]), [0, 1, 2] + [1] * len(THETAS)


SWEEP = [1, 3, 4, 5]  # batch rows of crop 1 at theta = 0, 0.5, 1, 2


def gaussian_prior():
    from diractrap.data import demo_images
    from diractrap.priors import GaussianPrior

    return GaussianPrior.fit(demo_images("train"))


def random_network(seed: int = 0):
    from diractrap.models.edm import freeze
    from diractrap.train import DEMO_ARCH, build_network

    torch.manual_seed(seed)
    net = build_network(DEMO_ARCH)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return freeze(net)


# ---------------------------------------------------------------------------------------------------------------
# The reference: score_sde's likelihood recipe (scipy RK45 on a flattened float64 numpy state, batch 1)
# ---------------------------------------------------------------------------------------------------------------


def score_sde_reference(denoiser, x: torch.Tensor, eps: torch.Tensor, rtol=1e-5, atol=1e-5):
    """q(x) in nats for images in [0, 1], one image x (1, C, H, W), probe eps (1, C, H, W): (q, nfe)."""
    lo, hi = denoiser.data_range
    z0 = (x * (hi - lo) + lo).double().numpy().ravel()
    shape, N = x.shape, x[0].numel()
    s_min, s_max = float(denoiser.sigma_min), float(denoiser.sigma_max)
    log_r = math.log(s_max / s_min)
    nfe = 0

    def rhs(t, y):  # VE SDE probability-flow drift in t: dz/dt = ln(r) (z - D); d(delta log p)/dt = div drift
        nonlocal nfe
        nfe += 1
        z = torch.from_numpy(y[:-1]).reshape(shape).float().requires_grad_(True)
        sigma = torch.full((1,), s_min * math.exp(log_r * t))
        with torch.enable_grad():
            drift = log_r * (z - denoiser(z, sigma))
            (v,) = torch.autograd.grad(drift, z, eps)
        div = float((v * eps).sum())
        return np.concatenate([drift.detach().double().numpy().ravel(), [div]])

    sol = solve_ivp(rhs, (0.0, 1.0), np.concatenate([z0, [0.0]]), rtol=rtol, atol=atol, method="RK45")
    z_T, delta_logp = sol.y[:-1, -1], sol.y[-1, -1]
    prior_logp = -0.5 * N * math.log(2 * math.pi * s_max**2) - (z_T**2).sum() / (2 * s_max**2)
    return -(prior_logp + delta_logp) - N * math.log(hi - lo), nfe


# ---------------------------------------------------------------------------------------------------------------
# Timing helpers
# ---------------------------------------------------------------------------------------------------------------


def bare_cost(denoiser, x: torch.Tensor, repeats: int = 5) -> float:
    """Median seconds of one network forward + one VJP (what one evaluation of the ODE needs) at x's batch size."""
    sigma = torch.full((x.shape[0],), 1.0)
    eps = torch.ones_like(x)
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        z = x.detach().requires_grad_(True)
        with torch.enable_grad():
            torch.autograd.grad(denoiser(z, sigma), z, eps)
        times.append(time.perf_counter() - t)
    return float(np.median(times[1:]))


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


# ---------------------------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------------------------


# (label, options): every solve of a prior's table, on the batch of 6 with one shared probe per image
FULL = [
    ("heun 128 steps (former default)", dict(solver="heun", steps=128)),
    ("dopri5 state 1e-5 (former configs)", dict(solver="dopri5", control="state", rtol=1e-5, atol=1e-5)),
    ("dopri5 state 1e-4", dict(solver="dopri5", control="state", rtol=1e-4, atol=1e-4)),
    ("tsit5 state 1e-4", dict(solver="tsit5", control="state", rtol=1e-4, atol=1e-4)),
    ("dopri5 q 3e-4", dict(solver="dopri5", control="q", rtol=0, atol=3e-4)),
    ("tsit5 q 3e-4", dict(solver="tsit5", control="q", rtol=0, atol=3e-4)),
    ("tsit5 q 1e-3", dict(solver="tsit5", control="q", rtol=0, atol=1e-3)),
    ("default", {}),
]
TAILS = [  # the path above sigma_c ([0, 1] units) in closed form from the fitted Gaussian of the demo training crops
    ("tsit5 q 1e-3 + tail 1", dict(solver="tsit5", control="q", rtol=0, atol=1e-3, tail_sigma=1.0)),
    ("tsit5 q 3e-4 + tail 1", dict(solver="tsit5", control="q", rtol=0, atol=3e-4, tail_sigma=1.0)),
    ("tsit5 q 1e-3 + tail 2", dict(solver="tsit5", control="q", rtol=0, atol=1e-3, tail_sigma=2.0)),
    ("tsit5 q 1e-3 + tail 5", dict(solver="tsit5", control="q", rtol=0, atol=1e-3, tail_sigma=5.0)),
]
QUICK = [("heun 32 steps", dict(solver="heun", steps=32)), ("heun 64 steps", dict(solver="heun", steps=64)),
         ("dopri5 state 1e-3", dict(solver="dopri5", control="state", rtol=1e-3, atol=1e-3)),
         ("dopri5 state 1e-4", dict(solver="dopri5", control="state", rtol=1e-4, atol=1e-4)),
         ("tsit5 q 1e-3", dict(solver="tsit5", control="q", rtol=0, atol=1e-3)),
         ("tsit5 q 1e-4", dict(solver="tsit5", control="q", rtol=0, atol=1e-4)), ("default", {})]


def run_prior(name, denoiser, x, ids, args, tail=None) -> list[dict]:
    """One table: the reference recipe (batch 1), the former and new defaults and the variants, on one prior."""
    B, N = x.shape[0], x[0].numel()
    eps = make_probes(x.shape, 1, seed=0, item_ids=ids)  # one Rademacher probe per item, shared by every solver
    if name == "gaussian":
        q_ref = gaussian_flow_potential(denoiser, x, probes=eps)
        ref_note = "closed form"
    else:
        tol = args.network_ref
        res_ref, t_ref = timed(lambda: potential(denoiser, x, solver="dopri5", control="state", rtol=tol, atol=tol,
                                                 probes=eps))
        q_ref = res_ref.q
        ref_note = f"dopri5 state {tol:g} ({res_ref.nfe} NFE, {t_ref:.0f} s)"
    step_ref = q_ref[SWEEP].diff()
    print(f"\n## {name}: {B} images {'x'.join(map(str, x.shape[1:]))}, reference = {ref_note}; steps of q along the "
          f"sweep {[round(v, 1) for v in step_ref.tolist()]} nats", flush=True)
    rows = []

    def record(label, batch, nfe, seconds, q, idx, ref=q_ref):
        err = float(((q - ref[idx]).abs() / N).max())
        row = dict(prior=name, config=label, batch=batch, nfe=nfe, s_per_image=seconds / len(idx), err_per_dim=err)
        diff = ""
        if len(idx) == B:
            step = ref[SWEEP].diff()
            row["diff_rel_err"] = float(((q[SWEEP].diff() - step) / step).abs().max())
            diff = f"{row['diff_rel_err']:.1e}"
        rows.append(row)
        print(f"| {label:<34} | {batch:>2} | {nfe:>5} | {row['s_per_image']:8.3f} | {err:.1e} | {diff:>7} |",
              flush=True)

    print("| solver | batch | NFE | s / image | error (nats/dim) | diff error |\n|---|---|---|---|---|---|")
    # the reference recipe, batch 1, on the first n_ref images: first, so that its time is measured in the same load
    for i in range(args.n_ref):
        (q, nfe), t = timed(lambda: score_sde_reference(denoiser, x[i : i + 1], eps[i, 0][None]))
        record("score_sde RK45 1e-5 (scipy)", 1, nfe, t, torch.tensor([q], dtype=torch.float64), [i])
    res, t = timed(lambda: potential(denoiser, x[:1], probes=eps[:1]))
    record("default", 1, res.nfe, t, res.q, [0])
    for label, kw in QUICK if args.quick else FULL:
        res, t = timed(lambda: potential(denoiser, x, probes=eps, **kw))
        record(label, B, res.nfe, t, res.q, list(range(B)))
    if tail is not None and not args.quick:
        for label, kw in TAILS:
            res, t = timed(lambda: potential(denoiser, x, probes=eps, tail=tail, **kw))
            ref = q_ref
            if name == "gaussian":  # the exact value of the tailed estimate: exact q + the probe's term below sigma_c
                s_c = kw["tail_sigma"]
                ref = (gaussian_flow_potential(denoiser, x, probes=eps, sigma_max=s_c)
                       - gaussian_flow_potential(denoiser, x, sigma_max=s_c) + denoiser.potential(x))
            record(label, B, res.nfe, t, res.q, list(range(B)), ref=ref)
    # overhead of the batched solver over the bare network cost
    if name == "network":
        for b in (1, B):
            bare = bare_cost(denoiser, x[:b])
            res, t = timed(lambda: potential(denoiser, x[:b], solver="heun", steps=16, probes=eps[:b]))
            over = t / (res.nfe * bare) - 1
            rows.append(dict(prior=name, config="overhead heun 16", batch=b, nfe=res.nfe, bare_s=bare, solve_s=t,
                             overhead=over))
            print(f"overhead, batch {b}: bare forward+VJP {bare * 1e3:.1f} ms, solve {t:.2f} s for {res.nfe} NFE "
                  f"-> {100 * over:+.1f} %", flush=True)
    return rows


NCSNPP = [("dopri5 state 1e-5 (former configs)", dict(solver="dopri5", control="state", rtol=1e-5, atol=1e-5)),
          ("tsit5 state 1e-4", dict(solver="tsit5", control="state", rtol=1e-4, atol=1e-4)),
          ("tsit5 q 1e-3", dict(solver="tsit5", control="q", rtol=0, atol=1e-3)),
          ("default", {})]


def run_golden_ncsnpp(args) -> list[dict]:
    """score_sde's own numbers on its tiny NCSN++ (tests/fixtures/golden): our solvers on the same two images and probe,
    against score_sde's rtol = 1e-7 answer; score_sde's 1e-5 solve (3422 NFE, 98 s, batch 2) is the reference."""
    from pathlib import Path

    from diractrap.models.loading import load_denoiser

    golden = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "golden"  # committed with the repository
    lik = torch.load(golden / "ncsnpp_ve_tiny_likelihood.pt", weights_only=True)
    meta = json.loads((golden / "ncsnpp_ve_tiny_likelihood.json").read_text())
    config = json.loads((golden / "ncsnpp_ve_tiny_loader_config.json").read_text())
    den = load_denoiser(golden / "ncsnpp_ve_tiny_checkpoint.pth", weights=meta["weights"], config=config)
    sde = meta["sde"]
    sigma_start = sde["sigma_min"] * (sde["sigma_max"] / sde["sigma_min"]) ** meta["tol1e-5"]["eps"]
    x, eps, N = lik["data"], lik["epsilon"][:, None], meta["N_dims"]
    fine = torch.tensor(meta["tol1e-7"]["nll_nats_per_image"], dtype=torch.float64)
    coarse = torch.tensor(meta["tol1e-5"]["nll_nats_per_image"], dtype=torch.float64)
    print("\n## score_sde's tiny NCSN++ (16x16x3, 2 images), reference = score_sde RK45 1e-7\n"
          "| solver | batch | NFE | s / image | error (nats/dim) |\n|---|---|---|---|---|")
    print(f"| score_sde RK45 1e-5 (recorded) |  2 | {meta['tol1e-5']['nfe']:>5} | "
          f"{meta['tol1e-5']['solve_time_s'] / 2:8.3f} | {float(((coarse - fine).abs() / N).max()):.1e} |")
    rows = []
    for label, kw in NCSNPP:
        res, t = timed(lambda: potential(den, x, probes=eps, sigma_min=sigma_start, sigma_max=sde["sigma_max"], **kw))
        err = float(((res.q - fine).abs() / N).max())
        rows.append(dict(prior="ncsnpp-tiny", config=label, batch=2, nfe=res.nfe, s_per_image=t / 2, err_per_dim=err))
        print(f"| {label:<34} |  2 | {res.nfe:>5} | {t / 2:8.3f} | {err:.1e} |", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer settings, Gaussian prior only (smoke run)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: stable timings on a shared machine)")
    ap.add_argument("--n-ref", type=int, default=1, help="images solved by the scipy reference (batch 1 each)")
    ap.add_argument("--ncsnpp", action="store_true",
                    help="also score_sde's tiny NCSN++ (tests/fixtures/golden; ~4 min)")
    ap.add_argument("--priors", nargs="+", default=["gaussian", "demo"], choices=["gaussian", "demo", "network"],
                    help="gaussian (closed form), demo (the trained demo prior), network (the demo architecture with "
                    "random weights)")
    ap.add_argument("--network-ref", type=float, default=1e-6, help="tolerance of the networks' reference solve")
    ap.add_argument("--json", default=None, help="write the rows and the machine description here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    machine = dict(date=datetime.datetime.now().isoformat(timespec="seconds"),
                   cpu=platform.processor() or platform.machine(), cores=os.cpu_count(), threads=args.threads,
                   torch=torch.__version__, load=os.getloadavg())
    print(machine)
    x, ids = benchmark_batch()
    fitted = gaussian_prior()  # the stationary Gaussian of the demo training crops: a prior, and the demo's tail
    rows = []
    for name in ["gaussian"] if args.quick else args.priors:
        if name == "gaussian":
            rows += run_prior("gaussian", fitted, x, ids, args, tail=fitted)
        elif name == "demo":
            from diractrap.models import get_denoiser

            rows += run_prior("demo", get_denoiser("demo"), x, ids, args, tail=fitted)
        else:
            rows += run_prior("network", random_network(), x, ids, args)
    if args.ncsnpp:
        rows += run_golden_ncsnpp(args)
    if args.json:
        from diractrap.data import atomic_path

        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(dict(machine=machine, rows=rows), indent=2))


if __name__ == "__main__":
    main()
