"""Job: one blind deconvolution problem: x_bar, h_bar and y = valid(h_bar * x_bar) + sigma n (diractrap.deconv)."""
import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import numpy as np

from diractrap.data import atomic_path
from diractrap.datasets import load_image_set
from diractrap.deconv import make_problem
from diractrap.kernels import kernel

p = snakemake.params.pair
images = load_image_set(snakemake.input.images)
x = images.tensor([p["image"]]).double()
h = kernel(p["family"], p["theta"], p["kernel_size"], dtype=x.dtype,
           **({"angle": p["angle"]} if p["angle"] is not None else {}))
y = make_problem(x, h, sigma=p["sigma"], seed=p["seed"], item_ids=[p["pair"]])  # noise seeded by (seed, pair)
with atomic_path(snakemake.output[0]) as tmp, open(tmp, "wb") as f:
    np.savez_compressed(f, x_true=x[0].numpy(), h_true=h.numpy(), y=y[0].numpy(),
                        label=np.int64(images.labels[p["image"]]), image=np.asarray(images.names[p["image"]]))
print(f"pair {p['pair']}: image {images.names[p['image']]}, {p['family']} theta {p['theta']}, y {tuple(y.shape)}")
