# Section 2.2: q(h_theta * x) for every image, family and theta. One job per (model, family, chunk of images), on
# the model's device with its resources (gpu=1 for the paper's networks), then one merged table per model.


localrules:
    merge_sweep,


rule sweep_chunk:
    input:
        unpack(sweep_inputs),
    output:
        f"{RESULTS}/potential/{{model}}/{{family}}/chunk{{chunk}}.parquet",
    params:
        job=sweep_params,
    log:
        f"{LOGS}/sweep/{{model}}/{{family}}/chunk{{chunk}}.log",
    threads: model_threads
    resources:
        gpu=model_gpu,
        mem_mb=model_mem,
        runtime=model_runtime,
    conda:
        "../../environment.yml"
    script:
        "../scripts/sweep.py"


rule merge_sweep:
    input:
        sweep_chunks,
    output:
        f"{RESULTS}/potential/{{model}}.parquet",
    log:
        f"{LOGS}/sweep/{{model}}/merge.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../../environment.yml"
    script:
        "../scripts/merge_sweep.py"
