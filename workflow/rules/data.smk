# Data: network checkpoints (the registry's verified downloads), paper dataset shards, image sets.
# Local rules: they need the network (downloads) or take seconds, never a GPU.
import re


localrules:
    download_checkpoint,
    dataset_shard,
    image_set,


rule download_checkpoint:
    output:
        f"{CHECKPOINTS}/{{filename}}",
    wildcard_constraints:
        filename="|".join(map(re.escape, CHECKPOINT_FILES)),
    params:
        job=checkpoint_download,
        root=checkpoint_root,
    log:
        f"{LOGS}/checkpoint/{{filename}}.log",
    resources:
        mem_mb=4000,  # a file with no known hash is loaded once on the CPU before its hash is recorded (~1 GB file)
        runtime=120,
    conda:
        "../../environment.yml"
    script:
        "../scripts/checkpoint.py"


rule dataset_shard:
    output:
        f"{DATASETS_DIR}/raw/{{shard}}/{{path}}",
    params:
        root=shard_root,
    log:
        f"{LOGS}/dataset_shard/{{shard}}/{{path}}.log",
    resources:
        mem_mb=500,
        runtime=120,
    conda:
        "../../environment.yml"
    script:
        "../scripts/dataset_shard.py"


rule image_set:
    input:
        image_set_shards,
    output:
        f"{RESULTS}/images/{{set}}.npz",
    params:
        spec=image_set_params,
    log:
        f"{LOGS}/image_set/{{set}}.log",
    resources:
        mem_mb=4000,
        runtime=20,
    conda:
        "../../environment.yml"
    script:
        "../scripts/image_set.py"


# The embedded demo: its crops as files (for inspection; the other rules read them in memory) and the demo prior's
# training, which regenerates the weights that ship in src/diractrap/assets. Neither is part of `all`: ask for them
# by name (`snakemake --cores all demo_crops` / `train_demo_prior`).
rule demo_crops:
    output:
        "data/demo/crops/manifest.json",
    log:
        f"{LOGS}/demo_crops.log",
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../environment.yml"
    script:
        "../scripts/demo_crops.py"


rule train_demo_prior:
    output:
        weights=f"{RESULTS}/demo_prior/train/demo_prior.pt",
        record=f"{RESULTS}/demo_prior/train/demo_prior.json",
    params:
        train=config["demo_prior"]["train"],
    log:
        f"{LOGS}/demo_prior/train.log",
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../../environment.yml"
    script:
        "../scripts/train_demo_prior.py"
