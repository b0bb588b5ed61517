"""Job: Algorithm 1 for one run (a preset with overrides) from one start on every pair, batched -> per pair a
snapshot file (.npz) and a JSON summary (diractrap.problems.run_job)."""
import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import torch

from diractrap.models import job_denoiser
from diractrap.problems import run_job

job = snakemake.params.job
torch.set_num_threads(snakemake.threads)
denoiser = job_denoiser(job, snakemake.input.weights)
starts = list(snakemake.input.starts) if snakemake.wildcards.start == "continued" else snakemake.wildcards.start
run_job(denoiser, snakemake.input.problems, starts, job, snakemake.output.runs, snakemake.output.summaries,
        start_name=snakemake.wildcards.start)
