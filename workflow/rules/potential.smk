# Section 2.2: q(h_theta * x) for every image, family and theta. Per model: one calibration job picks the cheapest
# potential settings that meet the error budget (sweep.potential: calibrate; diractrap.calibration), then one job per
# (model, family, chunk of images) on the model's device with its resources (gpu=1 for the paper's networks), each
# auditing its first image against the reference; the merge fails if an audit broke the budget.


localrules:
    merge_sweep,


rule calibrate:
    input:
        unpack(calibration_inputs),
    output:
        table=f"{RESULTS}/potential/{{model}}.calibration.csv",
        choice=f"{RESULTS}/potential/{{model}}.calibration.json",
    params:
        job=calibration_params,
    log:
        f"{LOGS}/sweep/{{model}}/calibrate.log",
    priority: 25  # every chunk of the model waits for it: the head of the longest chain (calibrate, chunks, Figure 3)
    threads: model_threads
    resources:
        gpu=model_gpu,
        mem_mb=model_mem,
        runtime=model_runtime,
    conda:
        "../../environment.yml"
    script:
        "../scripts/calibrate.py"


rule sweep_chunk:
    input:
        unpack(sweep_inputs),
    output:
        table=f"{RESULTS}/potential/{{model}}/{{family}}/chunk{{chunk}}.parquet",
        audit=f"{RESULTS}/potential/{{model}}/{{family}}/chunk{{chunk}}.audit.json",
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
        tables=sweep_chunks,
        audits=sweep_audits,
    output:
        table=f"{RESULTS}/potential/{{model}}.parquet",
        audits=f"{RESULTS}/potential/{{model}}.audit.csv",
    log:
        f"{LOGS}/sweep/{{model}}/merge.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../../environment.yml"
    script:
        "../scripts/merge_sweep.py"
