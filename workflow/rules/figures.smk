# Figures 1-5, drawn from tables only (CPU, seconds): `snakemake fig3` redraws one figure and, when its tables exist,
# runs nothing else. Plus the demo prior's extras: its samples and its denoising table.


localrules:
    kernel_gallery,
    fig1,
    fig2,
    fig3,
    fig4,
    fig5,
    fig_samples,


rule kernel_gallery:
    output:
        f"{RESULTS}/figures/kernels.npz",
    params:
        families=fig2_families,
        kernel_size=SWEEP["kernel_size"],
    log:
        f"{LOGS}/figures/kernels.log",
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../../environment.yml"
    script:
        "../scripts/kernel_gallery.py"


rule fig1:
    input:
        table=sweep_table(FIGS["fig1"]["model"]),
        images=model_images(FIGS["fig1"]["model"]),
    output:
        figure_files("fig1"),
    params:
        fig=fig1_params,
    log:
        f"{LOGS}/figures/fig1.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../../environment.yml"
    script:
        "../scripts/fig1.py"


rule fig2:
    input:
        f"{RESULTS}/figures/kernels.npz",
    output:
        figure_files("fig2"),
    log:
        f"{LOGS}/figures/fig2.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../../environment.yml"
    script:
        "../scripts/fig2.py"


rule fig3:
    input:
        fig3_tables,
    output:
        figure_files("fig3"),
    params:
        titles=fig3_titles,
        relative=FIGS["fig3"]["relative"],
        band=FIGS["fig3"]["band"],
    log:
        f"{LOGS}/figures/fig3.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../../environment.yml"
    script:
        "../scripts/fig3.py"


rule fig4:
    input:
        unpack(fig4_inputs),
    output:
        figure_files("fig4"),
    params:
        blocks=fig4_blocks,
    log:
        f"{LOGS}/figures/fig4.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../../environment.yml"
    script:
        "../scripts/fig4.py"


rule fig5:
    input:
        unpack(fig5_inputs),
    output:
        figure_files("fig5"),
    params:
        titles=fig5_titles,
    log:
        f"{LOGS}/figures/fig5.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../../environment.yml"
    script:
        "../scripts/fig5.py"


rule demo_samples:
    input:
        unpack(demo_prior_inputs),
    output:
        f"{RESULTS}/demo_prior/samples.npz",
    params:
        job=demo_prior_job,
        samples=config["demo_prior"]["samples"],
    log:
        f"{LOGS}/demo_prior/samples.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../environment.yml"
    script:
        "../scripts/demo_samples.py"


rule fig_samples:
    input:
        f"{RESULTS}/demo_prior/samples.npz",
    output:
        figure_files("demo_samples", caption="samples"),
    params:
        title=demo_prior_title,
    log:
        f"{LOGS}/figures/demo_samples.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../../environment.yml"
    script:
        "../scripts/fig_samples.py"


rule demo_denoising:
    input:
        unpack(demo_prior_inputs),
    output:
        f"{RESULTS}/demo_prior/denoising.csv",
    params:
        job=demo_prior_job,
        denoising=config["demo_prior"]["denoising"],
    log:
        f"{LOGS}/demo_prior/denoising.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../environment.yml"
    script:
        "../scripts/demo_denoising.py"
