# diractrap: Figures 1-5 of "How diffusion prior landscapes shape the posterior in blind deconvolution".
#
#   snakemake --cores all                                   the embedded demo (config/demo.yaml): offline, CPU
#   snakemake --cores all --configfile config/paper.yaml   the paper: four checkpoints, 33 dataset shards, GPUs
#   snakemake --cores all fig3                              one figure, from the cached tables
#   snakemake --profile profiles/slurm ...                  the heavy jobs through sbatch (README, "On a cluster")
#   snakemake --report report.html                          the figures with their captions
#
# Compute -> table -> figure: data.smk makes image sets and fetches checkpoints, potential.smk sweeps q(h_theta * x)
# (Section 2.2), deconv.smk runs Algorithm 1 and the Statement 1 table (Sections 3-4), figures.smk draws from tables.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/demo.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/potential.smk"
include: "workflow/rules/deconv.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/theorem1.smk"


rule all:
    input:
        final_outputs(),
    default_target: True
