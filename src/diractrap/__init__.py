"""diractrap: reproduction of "How diffusion prior landscapes shape the posterior in blind deconvolution".

Modules, one per paper concept:
    kernels    the blur families h_theta and the simplex projection
    blur       FFT convolution ('valid' and 'circular') and its adjoints
    priors     the denoiser protocol, range conversion, exact Gaussian priors
    potential  q(x) = -log p(x) through the probability-flow ODE (Section 2)
    models     the pretrained networks (NCSN++, EDM), checkpoint loading, the registry
    data       the embedded demo images and the paper's datasets
    deconv     the MAP objective and Algorithm 1 (Section 4)
    figures    Figures 1-5 from result tables
    cli        the ``diractrap`` command
"""

__version__ = "0.1.0"
