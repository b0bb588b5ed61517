"""diractrap: reproduction of "How diffusion prior landscapes shape the posterior in blind deconvolution".

Modules, one per paper concept (docs/DESIGN.md has the module map with each one's contract):
    kernels, blur          the blur families h_theta and the simplex projection; FFT convolution and adjoints
    priors, potential      the denoiser protocol; q(x) = -log p(x) through the probability-flow ODE (Section 2)
    sweeps, baselines      q(h_theta * x) over theta grids (Section 2.2, Figures 1-3); classical priors beside it
    deconv                 the MAP objective and Algorithm 1 with its presets (Section 4)
    problems, metrics      synthetic problems and result files; image and kernel scores
    statement1, theorem1   Statement 1 and Theorem 1's hypotheses in numbers; mixture: an exact prior for them
    models                 the pretrained networks (NCSN++, EDM), checkpoint loading and downloads, the registry
    data, datasets, train  image files and the embedded demo crops; the paper's image sets; the demo prior
    checks, figures       input validation; Figures 1-5 from result tables
    rng, numerics         per-item random streams; the scoped TF32 policy
    cli, cli_options       the ``diractrap`` command, its options generated from the parameter dataclasses
"""

__version__ = "0.1.0"
