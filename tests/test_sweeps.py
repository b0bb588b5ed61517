"""The Section 2.2 sweep table: right blurred images, common probes across theta, chunking-independent, mergeable."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from diractrap import kernels
from diractrap.potential import gaussian_flow_potential, potential
from diractrap.priors import GaussianPrior
from diractrap.sweeps import COLUMNS, merge, relative, sweep

K = 5  # small kernels keep the 8 x 8 test images mostly interior


@pytest.fixture(scope="module")
def prior():
    return GaussianPrior.power_law((1, 8, 8), c=2e-3, alpha=2.0, mean=0.45)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(3)
    return torch.rand(3, 1, 8, 8, generator=g, dtype=torch.float64)


def _reflect_blur(x, h):
    """h * x at the size of x, written independently: reflect-pad, then conv2d with the flipped kernel."""
    c = h.shape[-1] // 2
    xp = F.pad(x, (c, c, c, c), mode="reflect")
    w = torch.flip(h, (-2, -1)).expand(x.shape[1], 1, *h.shape)
    return F.conv2d(xp, w, groups=x.shape[1])


def test_table_matches_the_closed_form_flow_potential(prior, images):
    thetas = [0.0, 0.6, 1.2]
    df = sweep(prior, images, "gaussian", thetas, kernel_size=K, solver="dopri5", control="state", rtol=1e-4,
               atol=1e-4, divergence="exact", model="gauss")
    assert list(df.columns) == COLUMNS and len(df) == 9
    for t in thetas:
        rows = df[df.theta == t].sort_values("item")
        x = _reflect_blur(images, kernels.kernel("gaussian", t, K, dtype=torch.float64))
        exact = gaussian_flow_potential(prior, x)
        # dopri5 at 1e-4 moves q by < 0.1 nats from a 1e-6 solve here, while neighbouring thetas of this grid
        # differ by > 15 nats: a wrong blur, theta or row order cannot pass 0.2 nats
        np.testing.assert_allclose(rows.q.to_numpy(), exact.numpy(), atol=0.2)
    assert (df.stderr == 0).all() and (df.model == "gauss").all()


def test_common_probes_and_batching(prior, images):
    thetas = [0.0, 1.0]
    kw = dict(kernel_size=K, solver="heun", steps=8, n_probes=2, seed=5)
    a = sweep(prior, images, "motion", thetas, angle=45, batch_size=1, item_ids=[10, 11, 12], **kw)
    b = sweep(prior, images, "motion", thetas, angle=45, batch_size=5, item_ids=[10, 11, 12], **kw)
    # per-item probes and a fixed grid: the batch composition changes nothing but float summation order
    np.testing.assert_allclose(a.q.to_numpy(), b.q.to_numpy(), rtol=1e-12, atol=1e-9)
    # each row equals a direct solve of that blurred image with the probes of its item (common random numbers)
    h = kernels.kernel("motion", 1.0, K, angle=45, dtype=torch.float64)
    direct = potential(prior, _reflect_blur(images[1:2], h), solver="heun", steps=8, n_probes=2, seed=5, item_ids=[11])
    row = a[(a.item == 11) & (a.theta == 1.0)]
    np.testing.assert_allclose(row.q.to_numpy(), direct.q.numpy(), rtol=1e-12, atol=1e-9)
    assert (a.angle == 45).all() and (a.n_probes == 2).all() and (a.steps == 8).all()


def test_chunks_merge_into_the_full_sweep_and_relative_potentials(prior, images):
    kw = dict(kernel_size=K, solver="heun", steps=6, seed=1)
    full = sweep(prior, images, "defocus", [0.0, 1.0, 2.0], **kw)
    parts = [sweep(prior, images[i : i + 2], "defocus", [0.0, 1.0, 2.0], item_ids=range(i, min(i + 2, 3)), **kw)
             for i in (0, 2)]
    merged = merge(parts[::-1])
    pd.testing.assert_frame_equal(merged[COLUMNS], merge([full])[COLUMNS])
    with pytest.raises(ValueError, match="share a key"):
        merge([parts[0], parts[0]])
    dq = relative(merged)
    assert (dq[merged.theta == 0] == 0).all()
    q0 = merged[(merged.item == 2) & (merged.theta == 0)].q.item()
    q2 = merged[(merged.item == 2) & (merged.theta == 2.0)].q.item()
    assert math.isclose(dq[(merged.item == 2) & (merged.theta == 2.0)].item(), q2 - q0)
    with pytest.raises(ValueError, match="theta = 0"):
        relative(merged[merged.theta > 0])


def test_bad_arguments_are_named(prior, images):
    with pytest.raises(ValueError, match="motion family only"):
        sweep(prior, images, "gaussian", [0.0], angle=45, kernel_size=K)
    with pytest.raises(ValueError, match="one entry per image"):
        sweep(prior, images, "gaussian", [0.0], item_ids=[0], kernel_size=K)


def test_cli_sweep_writes_the_table_of_the_library_call(tmp_path):
    from diractrap.cli import main
    from diractrap.data import demo_images, save_image
    from diractrap.models import get_denoiser

    x = demo_images("test", 32)[:2]
    files = [save_image(x[i], tmp_path / f"{i}.png") for i in range(2)]
    out = tmp_path / "t.csv"
    argv = ["sweep", *map(str, files), "--model", "gaussian-demo", "--family", "airy", "--thetas", "0", "1.5",
            "--solver", "heun", "--steps", "4", "--n-probes", "1", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    got = pd.read_csv(out)
    ref = sweep(get_denoiser("gaussian-demo"), x, "airy", [0, 1.5], solver="heun", steps=4,
                n_probes=1)  # PNG: 8-bit exact
    np.testing.assert_allclose(got.q.to_numpy(), ref.q.to_numpy(), rtol=1e-12)
    assert got.image.tolist() == [str(f) for f in files for _ in range(2)]
