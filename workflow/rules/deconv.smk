# Sections 3-4: blind deconvolution problems (x_bar, h_bar, y), Algorithm 1 for each configured run (a preset with
# overrides) from each start, all pairs in one batched job, optionally continued from one start's final kernels (a run
# that selects pairs or starts, e.g. a longer one for one block of Figure 4: one job per pair and start); the table
# of its results, and the Statement 1 table (Ly at the truth, at (x_delta, delta), at Algorithm 1).


localrules:
    deconv_problem,
    algorithm1_table,


rule deconv_problem:
    input:
        images=image_set_file(DECONV["images"]),
    output:
        f"{DECONV_DIR}/pair{{pair}}/problem.npz",
    params:
        pair=pair_params,
    log:
        f"{LOGS}/deconv/pair{{pair}}/problem.log",
    priority: 10  # seconds each; Algorithm 1 and Statement 1 wait for them
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../../environment.yml"
    script:
        "../scripts/deconv_problem.py"


rule algorithm1:
    input:
        unpack(algorithm1_inputs),
    output:
        runs=algorithm1_outputs("npz"),
        summaries=algorithm1_outputs("json"),
    wildcard_constraints:
        run=runs_regex(complete=True),
    params:
        job=algorithm1_params,
    log:
        f"{LOGS}/deconv/{{run}}/{{start}}.log",
    priority: 10  # before the sweep chunks: Statement 1 waits for one of these, then runs alone (see statement1)
    threads: deconv_resources("threads")
    resources:
        gpu=deconv_resources("gpu"),
        mem_mb=deconv_resources("mem_mb"),
        runtime=deconv_resources("runtime"),
    conda:
        "../../environment.yml"
    script:
        "../scripts/algorithm1.py"


rule algorithm1_pair:
    input:
        unpack(algorithm1_pair_inputs),
    output:
        runs=[run_file("{run}", "{pair}", "{start}", "npz")],  # lists, as the batched rule's: one pair here
        summaries=[run_file("{run}", "{pair}", "{start}", "json")],
    wildcard_constraints:
        run=runs_regex(complete=False),
    params:
        job=algorithm1_params,
    log:
        f"{LOGS}/deconv/{{run}}/pair{{pair}}/{{start}}.log",
    priority: 10
    threads: deconv_resources("threads")
    resources:
        gpu=deconv_resources("gpu"),
        mem_mb=deconv_resources("mem_mb"),
        runtime=deconv_resources("runtime"),
    conda:
        "../../environment.yml"
    script:
        "../scripts/algorithm1.py"


rule algorithm1_table:
    input:
        algorithm1_summaries,
    output:
        table=f"{DECONV_DIR}/algorithm1.csv",
        provenance=f"{DECONV_DIR}/algorithm1.provenance.json",
    log:
        f"{LOGS}/deconv/algorithm1_table.log",
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../../environment.yml"
    script:
        "../scripts/algorithm1_table.py"


rule statement1:
    input:
        unpack(statement1_inputs),
    output:
        f"{DECONV_DIR}/statement1.csv",
    params:
        job=statement1_params,
    log:
        f"{LOGS}/deconv/statement1.log",
    priority: 20  # the longest single job (one batch, not splittable without changing its numbers): start it first
    threads: deconv_resources("threads")
    resources:
        gpu=deconv_resources("gpu"),
        mem_mb=deconv_resources("mem_mb"),
        runtime=deconv_resources("runtime"),
    conda:
        "../../environment.yml"
    script:
        "../scripts/statement1.py"
