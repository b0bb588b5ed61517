"""``diractrap deblur``: Algorithm 1 on one blurry image of any size and mode (diractrap.deconv, diractrap.domain):
the options (generated from Algorithm1Params), the image and truth readers, the result picture and the run.
Registered by :mod:`diractrap.cli`, whose checks and error handling it shares.
"""

from __future__ import annotations

from pathlib import Path

from .cli_options import NONE, add_alias, add_options_from

__all__ = ["deblur_params"]


# ---------------------------------------------------------------------------------------------------------------
# deblur: Algorithm 1 on one blurry image (diractrap.deconv)
# ---------------------------------------------------------------------------------------------------------------


def _add_deblur(sub) -> None:
    import dataclasses

    from .deconv import PRESETS, Algorithm1Params

    p = sub.add_parser("deblur", help="blind deblurring by Algorithm 1 (MAP, alternating minimisation)",
                       description="Run Algorithm 1 on BLURRY and write result.png (the blurry image, x-hat and "
                       "h-hat; with --true-image and --true-kernel also the truth, the kernel error and the PSNR), "
                       "x_hat.png/.npy, h_hat.png/.npy, trajectory.npz and summary.json to --out, and print one "
                       "summary line. With pad 'observed' (the authors' preset) x-hat has the size of BLURRY and the "
                       "data term uses its valid centre; otherwise BLURRY is the valid output and x-hat is K - 1 "
                       "pixels larger. Any size: where the network needs other sides, x is extended by reflection "
                       "to the next it accepts (the data term still sees x only) and cropped back. Any mode: a grey "
                       "image stays grey (replicated into the prior's colour channels, x-hat their mean); an alpha "
                       "channel is dropped.")
    p.add_argument("blurry", help="blurry image file (PNG/JPEG, any size; grey, RGB or with alpha), read in [0, 1]")
    p.add_argument("--model", required=True, help="registered prior name or checkpoint path")
    p.add_argument("--preset", default="authors", choices=sorted(PRESETS),
                   help="Algorithm 1's parameter set (docs/ALGORITHM1.md); every option below overrides one value")
    p.add_argument("--kernel-size", type=int, default=21, help="K (paper: 21)")
    start = p.add_argument("--start", default="wide", choices=["wide", "small", "dirac"],
                           help="initial kernel theta_0: wide (1/K^2), small (Gaussian of std 1.5) or dirac "
                           "(paper: wide; default %(default)s)")
    add_alias(p, start, "--init")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--true-image", default=None, metavar="FILE",
                   help="the sharp image x-bar, at the size of x-hat, when it is known (with --true-kernel): "
                   "drawn, and the PSNR reported")
    p.add_argument("--true-kernel", default=None, metavar="FILE",
                   help="the true kernel h-bar, K x K (.npy, or an image file scaled to sum 1), when it is known "
                   "(with --true-image): drawn, and the kernel error reported")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an --out that already holds files (summary.json, written last, marks a run done)")
    group = p.add_argument_group("Algorithm 1 parameters (default: the preset's value)")
    notes = {f.name: "presets: " + ", ".join(f"{k} {v[f.name]!r}" for k, v in sorted(PRESETS.items()))
             for f in dataclasses.fields(Algorithm1Params)}
    add_options_from(group, Algorithm1Params, dest=lambda name: f"param_{name}", defaults=False, notes=notes)
    p.add_argument("--label", type=int, default=None, help="class label for a conditional prior")
    p.add_argument("--snapshot-every", type=int, default=None, help="trajectory period (default N_ext / 20)")
    p.add_argument("--device", default="cpu", help="torch device of the prior and the iterates (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_deblur)


def _read_image_mode(path):
    """(1, C, H, W) image of ``path``: grey files (PIL modes 1, L, LA, I, I;16, F) with one channel, others RGB;
    and what was dropped on reading ("alpha" or "")."""
    from PIL import Image

    from .data import load_image

    with Image.open(path) as im:
        bands, transparent = im.getbands(), "transparency" in im.info
    grey = bands[0] in ("1", "L", "I", "F")
    dropped = "alpha" if {"A", "a"} & set(bands) or transparent else ""
    return load_image(path, mode="L" if grey else "RGB")[None], dropped


def _read_truth(args, x_shape, K: int):
    """(x_bar (1, C, H, W), h_bar (1, K, K)) from --true-image / --true-kernel, or None when neither is given."""
    import numpy as np
    import torch

    if (args.true_image is None) != (args.true_kernel is None):
        raise ValueError("--true-image and --true-kernel go together: the kernel error and the PSNR are measured "
                         "after the shift that aligns x-hat with x-bar")
    if args.true_image is None:
        return None
    x_bar, _ = _read_image_mode(args.true_image)
    if tuple(x_bar.shape[-2:]) != tuple(x_shape[-2:]):
        raise ValueError(f"--true-image is {x_bar.shape[-2]}x{x_bar.shape[-1]}; x-hat is {x_shape[-2]}x{x_shape[-1]}: "
                         "give the sharp image at the size of x-hat")
    if x_bar.shape[1] != x_shape[1]:
        x_bar = x_bar.mean(1, keepdim=True) if x_shape[1] == 1 else x_bar.expand(-1, x_shape[1], -1, -1)
    path = Path(args.true_kernel)
    h_bar = torch.from_numpy(np.load(path)).double() if path.suffix == ".npy" else \
        _read_image_mode(path)[0].mean((0, 1)).double()
    if tuple(h_bar.shape) != (K, K) or not torch.isfinite(h_bar).all() or h_bar.min() < 0 or h_bar.sum() <= 0:
        raise ValueError(f"--true-kernel must be a nonnegative {K}x{K} kernel (K = --kernel-size), got shape "
                         f"{tuple(h_bar.shape)}")
    return x_bar.double(), (h_bar / h_bar.sum())[None]


def _result_picture(path, panels, frame) -> None:
    """One row of panels [(title, image (C, H, W) or kernel (K, K), (top, left) in x's frame or None)], images at
    their true scale in x's frame ``frame`` (H, W), kernels scaled to their maximum; the package's style."""
    import matplotlib.pyplot as plt
    import numpy as np

    from .figures import save, use_style

    use_style()
    fig, axes = plt.subplots(1, len(panels), figsize=(1.9 * len(panels), 2.2), squeeze=False)
    for ax, (title, a, at) in zip(axes[0], panels):
        a = np.asarray(a, dtype=np.float64)
        if at is None:  # a kernel
            ax.imshow(a, cmap="inferno", vmin=0, vmax=max(a.max(), 1e-12))
        else:
            (top, left), (h, w) = at, a.shape[-2:]
            ax.imshow(np.clip(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0), 0, 1), vmin=0, vmax=1,
                      cmap="gray" if a.shape[0] == 1 else None, extent=(left, left + w, top + h, top))
            ax.set_xlim(0, frame[1])
            ax.set_ylim(frame[0], 0)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        for side in ax.spines.values():  # images: x's frame drawn thin and light; kernels: none
            side.set(visible=at is not None, color="0.75", linewidth=0.5)
    save(fig, path)


def _run_deblur(args) -> int:
    import numpy as np
    import torch

    from . import deconv
    from .checks import check_label_option
    from .cli import _json_text
    from .data import atomic_path, save_image
    from .metrics import metrics
    from .models import get_denoiser

    params = deblur_params(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # before the work: an unwritable --out fails now, not after the run
    image, dropped = _read_image_mode(args.blurry)
    K = args.kernel_size
    a = K - 1 - K // 2  # y's offset in x: the kernel's reach above and left of the valid centre
    x_shape = image.shape if params.pad == "observed" else (*image.shape[:2], image.shape[-2] + K - 1,
                                                              image.shape[-1] + K - 1)
    truth = _read_truth(args, x_shape, K)  # before the work: a wrong size fails now
    denoiser = get_denoiser(args.model, device=args.device)
    check_label_option(denoiser, args.label, "--label", args.model)
    image = image.to(args.device)
    if params.pad == "observed":  # BLURRY is the image at the size of x; the data term sees its valid centre
        y, y_full = image[..., a : image.shape[-2] - K // 2, a : image.shape[-1] - K // 2], image
    else:
        y, y_full = image, None
    labels = None if args.label is None else torch.tensor([args.label], device=args.device)
    every = args.snapshot_every or max(1, params.n_ext // 20)
    print(f"deblurring {args.blurry} ({args.preset}, K = {K}, {params.n_ext} kernel steps) into {out}/; files are "
          "written when it ends", flush=True)
    res = deconv.algorithm1(denoiser, y, args.start, kernel_size=K, params=params, labels=labels, y_full=y_full,
                            snapshots=every, progress=not args.no_progress)
    (out / "summary.json").unlink(missing_ok=True)  # the completion marker (--overwrite) goes first, comes back last
    for name, arr in (("x_hat", res.x[0].numpy()), ("h_hat", res.h[0].numpy())):
        with atomic_path(out / f"{name}.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, arr)
    save_image(res.x[0].clamp(0, 1), out / "x_hat.png")
    save_image((res.h[0] / res.h[0].max())[None], out / "h_hat.png")  # scaled to its maximum for display
    deconv.save_result(out / "trajectory.npz", res, y=y.cpu().float().numpy())
    scores = None if truth is None else metrics(res.x, res.h, *truth)
    info = deconv.summary(res, scores)
    info.update(input=str(args.blurry), model=args.model, preset=args.preset, dropped_on_reading=dropped or None)
    size = "x".join(map(str, res.x.shape[-2:]))
    panels = [(f"blurry ({image.shape[-2]}x{image.shape[-1]})", image[0].cpu(), (0, 0) if y_full is not None
               else (a, a)), (f"x-hat ({size})", res.x[0], (0, 0)), ("h-hat", res.h[0], None)]
    line = (f"{args.blurry}: x-hat {size}, h-hat {K}x{K} (spread {float(info['final']['spread'][0]):.3g} px^2) "
            f"after {params.n_ext} iterations of the {args.preset} preset")
    if truth is not None:
        err, psnr = float(scores["kernel_error"][0]), float(scores["psnr"][0])
        panels[1:] = [(f"x-hat (PSNR {psnr:.2f} dB)", res.x[0], (0, 0)),
                      (f"h-hat (kernel error {err:.3f})", res.h[0], None),
                      ("x-bar (truth)", truth[0][0], (0, 0)), ("h-bar (truth)", truth[1][0], None)]
        line += f"; kernel error {err:.4f}, PSNR {psnr:.2f} dB"
    _result_picture(out / "result.png", panels, tuple(res.x.shape[-2:]))
    with atomic_path(out / "summary.json") as tmp:  # last: the marker of a finished run
        tmp.write_text(_json_text(info))
    dom = res.settings["domain"]
    if dom["network"][1:] != dom["x"][1:]:
        line += f"; the network saw x extended to {dom['network'][1]}x{dom['network'][2]}"
    print(line + (f"; {dropped} channel dropped" if dropped else "") + f"; wrote {out}/result.png and the arrays")
    return 0


def deblur_params(args):
    """The :class:`~diractrap.deconv.Algorithm1Params` of a parsed ``deblur`` command line: ``--preset`` with the
    parameters given on the command line on top (``none`` sets an optional one to None)."""
    from . import deconv

    overrides = {k.removeprefix("param_"): None if v is NONE else v for k, v in vars(args).items()
                 if k.startswith("param_") and v is not None}
    return deconv.preset(args.preset, **overrides)
