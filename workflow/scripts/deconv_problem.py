"""Job: one blind deconvolution problem: x_bar, h_bar, y = valid(h_bar * x_bar) + sigma n, and the blurry image at
the size of x (diractrap.problems)."""
import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

from diractrap.datasets import load_image_set
from diractrap.kernels import kernel, levin_kernel
from diractrap.problems import make_problem, save_problem

p = snakemake.params.pair
images = load_image_set(snakemake.input.images)
x = images.tensor([p["image"]]).double()
if p["family"] == "levin":  # Levin et al.'s camera-shake kernel number theta
    h = levin_kernel(int(p["theta"]), p["kernel_size"], dtype=x.dtype)
else:
    h = kernel(p["family"], p["theta"], p["kernel_size"], dtype=x.dtype,
               **({"angle": p["angle"]} if p["angle"] is not None else {}))
y, y_full = make_problem(x, h, sigma=p["sigma"], seed=p["seed"], item_ids=[p["pair"]], full=True)  # seeded by pair
save_problem(snakemake.output[0], x[0], h, y[0], y_full[0], label=int(images.labels[p["image"]]),
             image=str(images.names[p["image"]]))
print(f"pair {p['pair']}: image {images.names[p['image']]}, {p['family']} theta {p['theta']}, y {tuple(y.shape)}")
