# Theorem 1 in numbers (an extra of the demo, `extras: [theorem1]`): the diagnostics table (is x_bar a critical point
# of q, conditions (7)-(9)) on demo crops, the demo prior's critical points and the mixture's modes; the mechanism
# experiment on the exact mixture prior (Ly along Statement 1's path, Algorithm 1 from four starts); its figure.


localrules:
    fig_theorem1,


rule theorem1_mechanism:
    output:
        path=f"{RESULTS}/theorem1/path.csv",
        runs=f"{RESULTS}/theorem1/runs.csv",
        statement1=f"{RESULTS}/theorem1/statement1.csv",
        kernels=f"{RESULTS}/theorem1/kernels.npz",
    params:
        t1=config.get("theorem1", {}),
    log:
        f"{LOGS}/theorem1/mechanism.log",
    threads: 1
    resources:
        mem_mb=1500,
        runtime=15,
    conda:
        "../../environment.yml"
    script:
        "../scripts/theorem1_mechanism.py"


rule theorem1_diagnostics:
    input:
        unpack(demo_prior_inputs),
    output:
        f"{RESULTS}/theorem1/diagnostics.csv",
    params:
        job=demo_prior_job,
        t1=config.get("theorem1", {}),
    log:
        f"{LOGS}/theorem1/diagnostics.log",
    threads: 1
    resources:
        mem_mb=1500,
        runtime=15,
    conda:
        "../../environment.yml"
    script:
        "../scripts/theorem1_diagnostics.py"


rule fig_theorem1:
    input:
        path=rules.theorem1_mechanism.output.path,
        runs=rules.theorem1_mechanism.output.runs,
        kernels=rules.theorem1_mechanism.output.kernels,
    output:
        figure_files("theorem1"),
    log:
        f"{LOGS}/figures/theorem1.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../../environment.yml"
    script:
        "../scripts/fig_theorem1.py"
