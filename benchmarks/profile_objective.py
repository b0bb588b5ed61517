"""The MAP objective along each pair's own blur family: why Algorithm 1's small start stops short of the Dirac.

For each Algorithm 1 pair of config/demo.yaml (demo test crop, kernel h_bar = h(theta_bar)) and each scale s, take
the kernel h_s = h(s theta_bar) of the same family (s = 0: the Dirac), the x-minimiser x_s of Ly(., h_s) found the
way Algorithm 1 finds it (``deconv.map_x``: gradient steps with the small-noise score at sigma_g, from y extended),
and evaluate F(s) = Ly(x_s, h_s) with q from the ODE potential (the workflow's solver settings): the objective
along the family as Algorithm 1's x-steps can reach it. Where F is lowest is where the kernel iterates can settle:
if F(0) is not the lowest value, the Dirac kernel is not what the small start runs into. For comparison the script
also evaluates the Dirac with one denoiser call at the noise level, x = D(y extended, sigma), in place of x_0.

``--semigroup``: instead, Statement 1's own path (``deconv.semigroup_path``) for each pair's crop under the Gaussian
pair's blur h_bar = g_theta: x_t = g_sqrt(1-t^2)theta * x_bar, h_t = g_t theta, no minimisation in x. The data term
stays at 1/2 ||b||^2, so F(t) = Ly(x_t, h_t) shows what the prior alone says between the truth (t = 1) and the
trivial pair (h_bar * x_bar, delta) (t = 0).

Usage: .venv/bin/python benchmarks/profile_objective.py [--n-iter 300] [--threads 1] [--semigroup]; numbers go into
BENCHMARKS.md ("deconv").
"""

import argparse
import os
import time

import torch
import yaml

from diractrap.data import demo_images
from diractrap.deconv import PRESETS, extend, make_problem, map_x, objective, semigroup_path
from diractrap.kernels import dirac, kernel, second_moment
from diractrap.potential import potential
from diractrap.priors import denoise_unit
from diractrap.train import load_demo_prior


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="config/demo.yaml")
    ap.add_argument("--scales", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0, 1.25])
    ap.add_argument("--n-iter", type=int, default=300, help="gradient steps of map_x (the workflow's n_iter_delta)")
    ap.add_argument("--sigma-g", type=float, default=None, help="default: the config's algorithm1.sigma_g")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--semigroup", action="store_true", help="Statement 1's path under the Gaussian pair's blur")
    ap.add_argument("--ts", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 0.9, 1.0], help="(--semigroup)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = yaml.safe_load(open(args.config))
    dc = cfg["deconv"]
    alg, pot = dc["algorithm1"][dc["statement1"]["run"]], dict(cfg["sweep"]["potential"])  # Statement 1's run
    sigma, K = dc["sigma"], dc["kernel_size"]
    sigma_g = alg.get("sigma_g", PRESETS[alg["preset"]]["sigma_g"]) if args.sigma_g is None else args.sigma_g
    X = demo_images(cfg["image_sets"][dc["images"]]["split"], cfg["image_sets"][dc["images"]]["resolution"])
    pairs = dc["pairs"]
    print(f"load average {os.getloadavg()}, threads {args.threads}, sigma {sigma}, sigma_g {sigma_g}, K {K}, "
          f"map_x steps {args.n_iter}, potential {pot}")

    def family(p, s):
        return kernel(p["family"], p["theta"] * s, K, p.get("angle"))

    pairs = [p for p in pairs if p["family"] != "levin"]  # one-parameter families only (their blur is scaled)
    x_true = X[[p["image"] for p in pairs]]
    if args.semigroup:
        return semigroup(args, x_true, pairs, pot, sigma, K, dc["seed"])
    h_true = torch.stack([family(p, 1.0) for p in pairs])
    y = make_problem(x_true, h_true, sigma=sigma, seed=dc["seed"], item_ids=range(len(pairs)))
    S, P = len(args.scales), len(pairs)
    H = torch.stack([torch.stack([family(p, s) for s in args.scales]) for p in pairs]).flatten(0, 1)
    Y = y.repeat_interleave(S, 0)
    t0 = time.time()
    den = load_demo_prior()
    xs = map_x(den, Y, H, n_iter=args.n_iter, sigma=sigma, sigma_g=sigma_g)
    x_den = denoise_unit(den, extend(y, K), sigma)  # the Dirac's image by one denoiser call at the noise level
    q = torch.as_tensor(potential(den, torch.cat([xs, x_den]), **pot).q, dtype=torch.float64)
    F = objective(xs, H, Y, q[: len(H)].to(Y), sigma=sigma)
    F_den = objective(x_den, dirac(K, dtype=y.dtype).expand(P, K, K), y, q[len(H):].to(y), sigma=sigma)
    print(f"{time.time() - t0:.0f} s")
    spread = second_moment(H).view(P, S)
    for i, p in enumerate(pairs):
        print(f"pair {i} ({p['family']} {p['theta']}, crop {p['image']})")
        print("  s        " + "".join(f"{s:>9.2f}" for s in args.scales))
        print("  spread   " + "".join(f"{v:>9.1f}" for v in spread[i].tolist()))
        for name, t in (("data", F["data"]), ("F", F["total"])):
            print(f"  {name:9s}" + "".join(f"{v:>9.4f}" for v in t.view(P, S)[i].tolist()))
        print(f"  Dirac with x = D(y, sigma): data {F_den['data'][i]:.4f}, F {F_den['total'][i]:.4f}")


def semigroup(args, x_true, pairs, pot, sigma, K, seed):
    theta = next(p["theta"] for p in pairs if p["family"] == "gaussian")
    P, T = len(pairs), len(args.ts)
    y = make_problem(x_true, kernel("gaussian", theta, K), sigma=sigma, seed=seed, item_ids=range(P))
    xs, hs = semigroup_path(x_true, theta, args.ts, K)
    t0 = time.time()
    q = torch.as_tensor(potential(load_demo_prior(), xs, **pot).q, dtype=torch.float64)
    F = objective(xs, hs, y.repeat(T, 1, 1, 1), q.to(y), sigma=sigma)
    print(f"{time.time() - t0:.0f} s; semigroup path, Gaussian blur theta = {theta} px on every pair's crop")
    for i, p in enumerate(pairs):
        print(f"crop {p['image']}")
        print("  t        " + "".join(f"{t:>9.2f}" for t in args.ts))
        for name in ("data", "total"):
            print(f"  {name:9s}" + "".join(f"{F[name][j * P + i]:>9.4f}" for j in range(T)))


if __name__ == "__main__":
    main()
