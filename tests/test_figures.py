"""Figures from tables: what is drawn equals an independent computation from the table; files are deterministic."""

import numpy as np
import pandas as pd
import pytest
import torch

from diractrap import figures, kernels
from diractrap.datasets import ImageSet


def _table(n_images=5, thetas=(0.0, 1.0, 2.0), families=("gaussian", "motion"), seed=0):
    """A sweep-shaped table with random potentials."""
    rng = np.random.default_rng(seed)
    rows = [dict(model="m", family=f, angle=0.0 if f == "motion" else np.nan, item=i, theta=t,
                 q=float(rng.normal(-1000 * t, 50)))
            for f in families for i in range(n_images) for t in thetas]
    return pd.DataFrame(rows)


def test_fig3_draws_the_mean_of_q_relative_to_theta_0(tmp_path):
    df = _table()
    fig = figures.fig3([("panel", df)], relative=True, band=(0.1, 0.9))
    ax = fig.axes[0]
    for line, family in zip(ax.get_lines(), ("gaussian", "motion")):
        g = df[df.family == family]
        q0 = g[g.theta == 0].set_index("item")["q"]
        expected = [(g[g.theta == t].set_index("item")["q"] - q0).mean() for t in (0.0, 1.0, 2.0)]
        np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-12)  # same numbers, summed in another order
        assert line.get_label() == family
    assert "5 images" in ax.get_title()
    pdf, png = figures.save(fig, tmp_path / "f.pdf", tmp_path / "f.png")
    assert pdf.read_bytes()[:4] == b"%PDF" and png.read_bytes()[:4] == b"\x89PNG"


def test_fig3_draws_the_baselines_as_styled_curves_in_the_legend():
    diff = _table().assign(prior="diffusion")
    tv = _table(seed=1).assign(prior="tv")
    gauss = _table(seed=2).assign(prior="gaussian")
    fig = figures.fig3([("panel", pd.concat([diff, tv, gauss], ignore_index=True))])
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    for family in ("gaussian", "motion"):
        for name, df, style in (("total variation", tv, ":"), ("fitted stationary Gaussian", gauss, "--")):
            line = next(v for k, v in lines.items() if k.startswith(f"{family}, {name}"))
            g = df[df.family == family]
            q0 = g[g.theta == 0].set_index("item")["q"]
            expected = [(g[g.theta == t].set_index("item")["q"] - q0).mean() for t in (0.0, 1.0, 2.0)]
            np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-12)
            assert line.get_linestyle() == style
        # the diffusion curve is computed from the diffusion rows alone
        g = diff[diff.family == family]
        q0 = g[g.theta == 0].set_index("item")["q"]
        np.testing.assert_allclose(lines[family].get_ydata(),
                                   [(g[g.theta == t].set_index("item")["q"] - q0).mean() for t in (0.0, 1.0, 2.0)])
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"diffusion prior", "fitted stationary Gaussian", "total variation λ·TV"} <= set(legend)


def test_saved_pdf_is_identical_on_rerun(tmp_path):
    a = figures.save(figures.fig3([("p", _table())]), tmp_path / "a.pdf")[0].read_bytes()
    b = figures.save(figures.fig3([("p", _table())]), tmp_path / "b.pdf")[0].read_bytes()
    assert a == b  # no creation date: a rerun of the workflow writes the same file
    assert not list(tmp_path.glob("*.part"))


def test_fig1_checks_its_thetas_and_labels_the_potentials(tmp_path):
    df = _table(n_images=2, families=("gaussian",))
    rng = np.random.default_rng(1)
    images = ImageSet(rng.integers(0, 256, (2, 24, 24, 3), dtype=np.uint8), np.array([-1, -1]), ["a", "b"],
                      np.arange(2))
    fig = figures.fig1(df, images, item=1, thetas=[0.0, 2.0], kernel_size=5, title="t")
    titles = [ax.get_title() for ax in fig.axes[:2]]
    q = df[(df.item == 1)].set_index("theta")["q"]
    assert titles[1].endswith(f"{q[2.0] - q[0.0]:+.1f}")
    with pytest.raises(ValueError, match="lacks"):
        figures.fig1(df, images, item=1, thetas=[0.0, 1.5], kernel_size=5)


def test_kernel_gallery_and_fig2():
    g = figures.kernel_gallery({"gaussian": {"thetas": [0, 1.5]}, "motion": {"thetas": [0, 3], "angle": 45}}, 9)
    assert g["gaussian_kernels"].shape == (2, 9, 9)
    np.testing.assert_array_equal(g["motion_kernels"][0], kernels.dirac(9, dtype=torch.float64).numpy())
    np.testing.assert_allclose(g["motion_kernels"][1], kernels.kernel("motion", 3.0, 9, angle=45, dtype=torch.float64))
    fig = figures.fig2(g)
    assert len(fig.axes) == 4 and fig.axes[0].get_ylabel() == "gaussian"


def _block(rng, recorded=(0, 10, 20, 40), size=12, K=5, **extra):
    run = {"traj_iteration": np.array(recorded), "traj_x": rng.random((len(recorded), 1, 3, size, size)),
           "traj_h": rng.random((len(recorded), 1, K, K))}
    return dict(run=run, x_true=rng.random((3, size, size)), h_true=rng.random((K, K)),
                y=rng.random((3, size - K + 1, size - K + 1)), **extra)


def test_fig4_draws_each_block_from_initialisation_to_truth():
    rng = np.random.default_rng(2)
    blocks = [_block(rng, iterations=[10, 40], label="a"), _block(rng, iterations=[20], label="b")]
    fig = figures.fig4(blocks)
    titles = [ax.get_title() for ax in fig.axes]
    # per block: (x, h) per column, x first; the shorter block has fewer columns before its truth
    assert titles[::2] == ["Initialisation", "n = 10", "n = 40", "true signal", "Initialisation", "n = 20",
                           "true signal"]
    shown = fig.axes[4].get_images()[0].get_array()  # block a, n = 40 (axes x, h per column): recorded index 3
    np.testing.assert_allclose(shown, blocks[0]["run"]["traj_x"][3, 0].transpose(1, 2, 0))
    np.testing.assert_allclose(fig.axes[1].get_images()[0].get_array(), blocks[0]["run"]["traj_h"][0, 0])
    np.testing.assert_allclose(fig.axes[6].get_images()[0].get_array(), blocks[0]["x_true"].transpose(1, 2, 0))
    assert [t.get_text() for t in fig.axes[0].texts] == ["a"] and [t.get_text() for t in fig.axes[8].texts] == ["b"]
    assert (fig.axes[0].get_ylabel(), fig.axes[1].get_ylabel()) == ("x", "h")
    with pytest.raises(ValueError, match=r"iterations \[30\] that its run did not record"):
        figures.fig4([_block(rng, iterations=[30], label="c")])


def test_fig5_has_one_column_per_pair_and_five_rows():
    rng = np.random.default_rng(3)
    col = dict(x_true=rng.random((3, 16, 16)), h_true=rng.random((5, 5)), y=rng.random((3, 12, 12)),
               x_hat=rng.random((3, 16, 16)), h_hat=rng.random((5, 5)), title="p")
    fig = figures.fig5([col, col, col])
    assert len(fig.axes) == 15
    assert [fig.axes[3 * i].get_ylabel() for i in range(5)] == ["x̄", "h̄", "y", "x̂", "ĥ"]


@pytest.mark.parametrize("K", [5, 4])
def test_fig5_draws_y_at_its_true_scale_in_x_bar_frame(K):
    """y (valid: K - 1 pixels smaller than x̄) is not stretched to the panel: the y panel spans x̄'s pixel grid, y sits
    where diractrap.problems.make_problem crops it (offset K - 1 - K // 2), one pixel of y as wide as one of x̄."""
    from diractrap.problems import make_problem

    rng = np.random.default_rng(4)
    x, h = torch.rand(1, 3, 16, 16, dtype=torch.float64), torch.rand(K, K, dtype=torch.float64)
    h /= h.sum()
    y, y_full = make_problem(x, h, sigma=0.0, full=True)
    col = dict(x_true=x[0].numpy(), h_true=h.numpy(), y=y[0].numpy(), x_hat=rng.random((3, 16, 16)),
               h_hat=h.numpy())
    fig = figures.fig5([col, col])
    fig.canvas.draw()
    ax_x, ax_y, ax_hat = fig.axes[0], fig.axes[4], fig.axes[6]  # rows x̄, h̄, y, x̂, ĥ, two columns
    assert ax_y.get_xlim() == ax_x.get_xlim() == (-0.5, 15.5) and ax_y.get_ylim() == ax_x.get_ylim() == (15.5, -0.5)
    assert ax_hat.get_xlim() == ax_x.get_xlim()
    off = K - 1 - K // 2
    n = 16 - K + 1
    assert ax_y.get_images()[0].get_extent() == [off - 0.5, off + n - 0.5, off + n - 0.5, off - 0.5]
    np.testing.assert_allclose(ax_y.get_position().size, ax_x.get_position().size)  # same panel, same pixel size
    # the pixels drawn are y's, and they are the valid centre of the blurry image at the size of x
    np.testing.assert_allclose(ax_y.get_images()[0].get_array(), y[0].numpy().transpose(1, 2, 0))
    np.testing.assert_allclose(y_full[0, :, off:off + n, off:off + n], y[0])
