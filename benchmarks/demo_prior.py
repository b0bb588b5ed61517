"""ms per training step of the demo prior (batch 64, 32 x 32), bf16 autocast vs float32, 1 or 2 threads.

Usage: .venv/bin/python benchmarks/demo_prior.py [--steps 10] [--threads 2]. Report the median; the numbers go
into BENCHMARKS.md ("demo prior"). Other processes on the machine inflate them: note the load average.
"""

import argparse
import os
import statistics
import time

import torch

from diractrap.train import DEMO_ARCH, build_network, edm_loss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--model-channels", type=int, default=DEMO_ARCH["model_channels"])
    ap.add_argument("--num-blocks", type=int, default=DEMO_ARCH["num_blocks"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    arch = dict(DEMO_ARCH, model_channels=args.model_channels, num_blocks=args.num_blocks)
    print(f"load average {os.getloadavg()}, threads {args.threads}, batch {args.batch}, arch {arch}")
    for bf16 in (True, False):
        torch.manual_seed(0)
        net = build_network(arch).train()
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        y = torch.rand(args.batch, 3, 32, 32) * 2 - 1
        g = torch.Generator().manual_seed(0)
        times = []
        for _ in range(args.steps + 2):
            t = time.perf_counter()
            loss = edm_loss(net, y, g, bf16=bf16).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t)
        n = sum(p.numel() for p in net.parameters())
        print(f"bf16={bf16}: {n / 1e6:.2f} M params, median {1000 * statistics.median(times[2:]):.0f} ms/step "
              f"(min {1000 * min(times[2:]):.0f})")


if __name__ == "__main__":
    main()
