"""Theorem 1's mechanism where its hypothesis holds: a prior whose truth is an exact critical point of q.

The prior (diractrap.mixture): the stationary Gaussian fitted to the 32 x 32 demo training crops, plus narrow
isotropic modes N(mu_i, s^2 I) at held-out demo test crops, refined to exact critical points of q. s is chosen
(``design_mode_scale``) so that the mode is a strict local minimum of q while Statement 1 holds at the pair:
Ly(x_delta, delta) < Ly(x_c, h_bar). Truths: the critical mode x_c and a held-out crop that is not a critical point.
Blur: Gaussian h_bar (std THETA, K x K), sigma = 0.01. For each truth: Ly along Statement 1's semigroup path, and
Algorithm 1 from the wide, small and true kernels, by the `authors` preset and by a converged variant (x solved
before every kernel step, constant projected kernel step 1 / L_h(x_true)).

Theorem 1 predicts, for the critical truth only: a barrier on the path (Ly rises as t leaves 1), the true-kernel
start stays near h_bar; the paper's reading adds: the wide start ends near h_bar and the small start near delta.

``--network``: the same on the demo network with x_bar a critical point of the demo prior reached by descent.
Usage: python benchmarks/theorem1_mechanism.py [--quick] [--network]; numbers go into BENCHMARKS.md ("theorem1").
"""

import argparse
import os
import time

import torch

from diractrap.data import demo_images
from diractrap.deconv import preset
from diractrap.kernels import kernel, second_moment, small, wide
from diractrap.mixture import demo_mixture
from diractrap.theorem1 import converged_params, diagnose, mechanism


def show(title, rows, cols):
    print(f"\n{title}")
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(fmt(r[c]) for c in cols))


def fmt(v):
    if isinstance(v, bool) or isinstance(v, str) or isinstance(v, int):
        return str(v)
    return f"{v:.4g}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    ap.add_argument("--network", action="store_true", help="also the demo network with x_bar from descent on q")
    ap.add_argument("--network-mechanism", action="store_true", help="with --network: the mechanism grid on it")
    ap.add_argument("--skip-mixture", action="store_true", help="only the network part")
    ap.add_argument("--theta", type=float, default=2.5)
    ap.add_argument("--kernel-size", type=int, default=15)
    ap.add_argument("--critical", type=int, default=40, help="demo test crop (32 x 32) made a critical mode")
    ap.add_argument("--other-mode", type=int, default=100, help="a second mode of the mixture")
    ap.add_argument("--held-out", type=int, default=60, help="demo test crop used as the non-critical truth")
    ap.add_argument("--n-ext", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    K, theta = args.kernel_size, args.theta
    n_ext = args.n_ext or (60 if args.quick else 300)
    print(f"load average {os.getloadavg()}, threads {args.threads}, K {K}, Gaussian theta {theta}, n_ext {n_ext}")
    t0 = time.time()
    if args.skip_mixture:
        network(args, K, theta, n_ext)
        return
    mix, ref = demo_mixture([args.critical, args.other_mode], theta, K)
    print(f"mixture: s = {mix.s:.4f}, weights {[round(w, 3) for w in mix.weights.tolist()]}, refined modes "
          f"||grad q|| = {ref.residual.tolist()} (relative {ref.relative.tolist()}), moved "
          f"{(ref.x - demo_images('test', 32).double()[[args.critical, args.other_mode]]).flatten(1).norm(dim=1).tolist()}")
    xc = ref.x[:1]
    margin = float(mix.broad.potential(xc) - mix.potential(xc))
    radius = (2 * (mix.s**2 + mix.sigma_min**2) * margin) ** 0.5
    print(f"mode's basin: q_broad(x_c) - q(x_c) = {margin:.1f} nats; the narrow component stops dominating at "
          f"||x - x_c|| ~ sqrt(2 s^2 margin) = {radius:.2f} (RMS {radius / xc.numel() ** 0.5:.4f} per pixel)")
    truths = torch.cat([ref.x[:1], demo_images("test", 32).double()[args.held_out : args.held_out + 1]])
    h = kernel("gaussian", theta, K, dtype=torch.float64)
    rows = diagnose(mix, truths, h, theta=theta, n_lanczos=30)
    for i, r in enumerate(rows):
        r["truth"] = ["critical mode", "held-out crop"][i]
    show("Theorem 1 diagnostics on the mixture (exact q)", rows,
         ["truth", "grad_norm", "dq_blur", "dq_dt_path", "curv_blur", "lam_min", "lam_max", "n_kernel", "j_smin",
          "angle7", "angle9", "second_order", "cond8"])
    algos = {"authors": preset("authors", n_ext=n_ext),  # the authors' loop; n_ext shortened, their step budget kept
             "converged": converged_params(mix, truths, K, n_ext=n_ext, n_in=20 if args.quick else 100,
                                           n_in_first=300 if args.quick else 2000)}
    print(f"converged variant: gamma_x {algos['converged'].gamma_x:.4g}, gamma_h {algos['converged'].gamma_h:.4g} "
          "(1 / L_h at the truths)")
    out = mechanism(mix, truths, theta, K, algos, starts=("wide", "small", "true", "truth"), n_iter_delta=300 if args.quick else 3000,
                    gamma_x_delta=algos["converged"].gamma_x)
    show("Ly along the semigroup path (t = 1: the truth, t = 0: (h_bar * x, delta))",
         out["path"], ["truth", "t", "data", "q", "L_minus_true"])
    show("Statement 1 at the pair", out["statement1"], ["truth", "L_true", "L_path_end", "L_delta", "holds"])
    show("Algorithm 1 (truth 0: critical mode, 1: held-out crop)", out["runs"],
         ["algorithm", "start", "truth", "kernel_error", "dirac_distance", "spread", "psnr", "L_final", "L_true",
          "grad_x_final", "grad_x_rel", "r_mode", "x_rmse"])
    print(f"\nspreads (px^2): true {float(second_moment(h)):.2f}, small start {float(second_moment(small(K, dtype=torch.float64))):.2f}, wide start {float(second_moment(wide(K, dtype=torch.float64))):.2f}; mixture part took {time.time() - t0:.0f} s")
    if args.network:
        network(args, K, theta, n_ext)


def network(args, K, theta, n_ext):
    from diractrap.theorem1 import descend_to_critical
    from diractrap.train import load_demo_prior

    t0 = time.time()
    den = load_demo_prior()
    sg = 0.005
    x0 = demo_images("test", 32)[[args.critical, args.held_out]]
    steps = 50 if args.quick else 200  # the damped descent's ||grad q|| is lowest near 200 steps (BENCHMARKS)
    xc, hist = descend_to_critical(den, x0[:1], lr=sg**2, n_steps=steps, sigma_g=sg, record_every=max(steps // 5, 1))
    print(f"\ndemo network: descent x <- D(x, {sg}) (lr = sigma_g^2), {steps} steps: ||grad q|| {hist[:, 0].round(1).tolist()}")
    truths = torch.cat([xc, x0[1:]]).float()
    h = kernel("gaussian", theta, K)
    rows = diagnose(den, truths, h, theta=theta, sigma_g=sg, n_lanczos=20)
    for i, r in enumerate(rows):
        r["truth"] = ["descended point", "held-out crop"][i]
    show("Theorem 1 diagnostics on the demo network (score at sigma_g)", rows,
         ["truth", "grad_norm", "dq_blur", "dq_dt_path", "curv_blur", "lam_min", "lam_max", "j_smin", "second_order"])
    print(f"network diagnostics took {time.time() - t0:.0f} s", flush=True)
    if not args.network_mechanism:
        return
    from diractrap.potential import potential

    def q_fn(x):  # the ODE potential as in config/demo.yaml's sweep (dopri5 1e-4, 2 probes, common probes)
        return potential(den, x.float(), solver="dopri5", rtol=1e-4, atol=1e-4, n_probes=2,
                         item_ids=[0] * x.shape[0]).q

    t0 = time.time()
    n_net = min(n_ext, 50)
    algos = {"authors": preset("authors", n_ext=n_net),
             "converged": converged_params(den, truths.double(), K, n_ext=n_net, n_in=20, n_in_first=300,
                                           sigma_g=sg)}
    out = mechanism(den, truths, theta, K, algos, starts=("wide", "small", "true", "truth"), q_fn=q_fn,
                    n_iter_delta=300, gamma_x_delta=algos["converged"].gamma_x, sigma_g=sg)
    show("demo network: Ly along the semigroup path (truth 0: descended point, 1: held-out crop)", out["path"],
         ["truth", "t", "data", "q", "L_minus_true"])
    show("demo network: Statement 1 at the pair", out["statement1"], ["truth", "L_true", "L_path_end", "L_delta",
                                                                       "holds"])
    show(f"demo network: Algorithm 1, n_ext {n_net}", out["runs"],
         ["algorithm", "start", "truth", "kernel_error", "dirac_distance", "spread", "psnr", "L_final", "L_true",
          "grad_x_final", "grad_x_rel", "x_rmse"])
    print(f"network mechanism took {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
