"""Job: Algorithm 1 for one run (a preset with overrides) from one start on every pair, batched -> per pair a
snapshot file (.npz) and a JSON summary (diractrap.problems.run_job)."""
import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import torch

from diractrap.models import get_denoiser
from diractrap.problems import run_job

job = snakemake.params.job
torch.set_num_threads(snakemake.threads)
weights_dir = Path(snakemake.input.weights[0]).parent if snakemake.input.weights else None
denoiser = get_denoiser(job["prior"], device=job["device"], root=weights_dir, download=False, sha256=job["sha256"])
starts = list(snakemake.input.starts) if snakemake.wildcards.start == "continued" else snakemake.wildcards.start
run_job(denoiser, snakemake.input.problems, starts, job, snakemake.output.runs, snakemake.output.summaries,
        start_name=snakemake.wildcards.start)
