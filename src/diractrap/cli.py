"""The ``diractrap`` command: thin wrappers over library functions.

Each sub-command is a pair ``_add_<name>(subparsers)`` / ``_run_<name>(args)``; add new ones to ``COMMANDS``.
Options that mirror a library parameter set (Algorithm1Params, PotentialOptions, train_demo_prior's keywords) are
generated from it by :func:`diractrap.cli_options.add_options_from`, never copied.
"""

from __future__ import annotations

import argparse
import contextlib
import pickle
import sys
from pathlib import Path

from .cli_options import NONE, add_alias, add_options_from

__all__ = ["main", "build_parser", "version", "deblur_params"]


COMMANDS: list = []  # functions that add one sub-command each (filled below)


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command. A user error (a bad value, an unreadable file, a refused checkpoint, an unwritable
    output) is printed as one line ``diractrap <command>: error: ...`` and gives exit status 1, before any work where
    it can be known before; ``--debug`` (anywhere on the line) shows the traceback instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    command = next((a for a in argv if not a.startswith("-")), "")
    created: list = []
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as done:  # --help and --version end here; report their status instead of exiting
            return int(done.code or 0)
        command = args.command
        created = _check_arguments(args)  # numbers, inputs and the output path, before any computation
        return int(args.func(args) or 0)
    except _USER_ERRORS as err:
        _remove_empty(created)  # a failed command leaves no new directory behind
        if debug:
            raise
        print(f"diractrap{' ' + command if command else ''}: error: {_one_line(err)}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``diractrap`` command with every sub-command of ``COMMANDS``."""
    parser = _Parser(prog="diractrap", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also after the command)")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def version() -> str:
    """The installed distribution's version, or the package's own ``__version__`` when it is not installed."""
    from importlib import metadata

    try:
        return metadata.version("diractrap")
    except metadata.PackageNotFoundError:
        from . import __version__

        return __version__


# ---------------------------------------------------------------------------------------------------------------
# User errors: argparse's own (unknown option, bad type) as exceptions; the checks every sub-command shares
# ---------------------------------------------------------------------------------------------------------------


class _UsageError(ValueError):
    """argparse found an unknown option, a missing argument or a value of the wrong type."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print the usage and exit with 2; we want one line and status 1
        raise _UsageError(f"{message} (see {self.prog} --help)")


_USER_ERRORS = (ValueError, KeyError, OSError, RuntimeError, EOFError, pickle.UnpicklingError)  # TypeError etc.: bugs


def _one_line(err: BaseException) -> str:
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)  # KeyError's str() adds quotes
    return " ".join(str(text).split()) or type(err).__name__


# option name -> the rule its value must follow (options a sub-command does not have are skipped)
_POSITIVE = ("sigma", "sigma_g", "rtol", "atol", "lr")
_NONNEGATIVE = ("gamma_x", "gamma_h", "gamma_h_scale", "p_uniform")
_COUNTS = {"kernel_size": 1, "steps": 1, "probes": 1, "n_probes": 1, "batch_size": 1, "size": 1, "resolution": 1,
           "reset": 1, "n_in_warmup": 1, "n_in_first": 1, "snapshot_every": 1, "threads": 1, "n_ext": 0, "n_in": 0,
           "label": 0}
_FILE_OUTPUTS = {"sweep"}  # sub-commands whose --out is a file
_DIR_OUTPUTS = {"deblur", "demo-data", "train-demo"}  # ... and a directory (others: a file if the name has a suffix)


def _check_arguments(args) -> list:
    """Check the parsed options shared by sub-commands; create the output directory. Returns the directories made."""
    from . import checks

    given = {k.removeprefix("param_"): v for k, v in vars(args).items()  # deblur: param_<field>
             if v is not None and v is not NONE}
    checks.check_positive(**{f"--{k.replace('_', '-')}": given[k] for k in _POSITIVE if k in given})
    checks.check_nonnegative(**{f"--{k.replace('_', '-')}": given[k] for k in _NONNEGATIVE if k in given})
    for k, low in _COUNTS.items():
        if k in given:
            checks.check_count(low, **{f"--{k.replace('_', '-')}": given[k]})
    for theta in given.get("thetas", ()):
        checks.check_nonnegative(**{"--thetas": theta})
    if "model" in given:
        _check_model(given["model"])
    images = [given["blurry"]] if "blurry" in given else list(given.get("images", ()))
    from .data import load_image

    sizes = [tuple(load_image(f).shape[-2:]) for f in images if not str(f).endswith(".npz")]  # unreadable: one line
    if "blurry" in given and "kernel_size" in given:
        checks.check_kernel_fits(given["kernel_size"], *sizes[0], name="--kernel-size")
    if "out" not in given:
        return []
    out = given["out"]
    if args.command in _FILE_OUTPUTS or (args.command not in _DIR_OUTPUTS and Path(out).suffix):
        return checks.prepare_output_file(out, "--out")
    return checks.prepare_output_dir(out, "--out")


def _check_model(name: str) -> None:
    from .models import REGISTRY

    if name not in REGISTRY and not Path(name).is_file():
        raise ValueError(f"unknown model {name!r} (--model): neither a registered prior "
                         f"({', '.join(sorted(REGISTRY))}) nor an existing checkpoint file")


def _remove_empty(dirs) -> None:
    for d in dirs:  # deepest first
        with contextlib.suppress(OSError):  # not empty (or gone): leave it
            d.rmdir()


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
    import json
    from pathlib import Path

    import numpy as np
    import torch

    from . import deconv
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
    image = image.to(args.device)
    if params.pad == "observed":  # BLURRY is the image at the size of x; the data term sees its valid centre
        y, y_full = image[..., a : image.shape[-2] - K // 2, a : image.shape[-1] - K // 2], image
    else:
        y, y_full = image, None
    labels = None if args.label is None else torch.tensor([args.label], device=args.device)
    every = args.snapshot_every or max(1, params.n_ext // 20)
    res = deconv.algorithm1(denoiser, y, args.start, kernel_size=K, params=params, labels=labels, y_full=y_full,
                            snapshots=every, progress=not args.no_progress)
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
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(info, indent=2, default=str))
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


COMMANDS.append(_add_deblur)


# ---------------------------------------------------------------------------------------------------------------
# models: the registry of priors and the state of their checkpoint files (diractrap.models)
# ---------------------------------------------------------------------------------------------------------------


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the registered priors and the state of their checkpoint files",
                       description="List the registered priors with the state of each file (missing, partial, "
                       "verified, mismatch, loads (not yet recorded), invalid); --fetch downloads, loads and records "
                       "checkpoints; --forget removes a recorded hash.")
    p.add_argument("--root", default=None,
                   help="checkpoint directory (default $DIRACTRAP_CHECKPOINTS or data/checkpoints)")
    p.add_argument("--no-verify", action="store_true",
                   help="do not hash present files, nor load those with no recorded hash (faster)")
    p.add_argument("--fetch", nargs="+", metavar="NAME", default=None, help="download and verify these checkpoints")
    p.add_argument("--forget", nargs="+", metavar="NAME", default=None,
                   help="remove the recorded sha256 of these checkpoints (e.g. after the source published a new file)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_models)


def _run_models(args) -> int:
    from .models import REGISTRY, checkpoint_status, fetch_checkpoint, forget_checkpoint

    for name in args.forget or ():
        print(f"{name}: " + ("record removed" if forget_checkpoint(name, root=args.root) else "no record to remove"))
    for name in args.fetch or ():
        path, digest = fetch_checkpoint(name, root=args.root, progress=not args.no_progress)
        print(f"{name}: {path} sha256 {digest}")
    rows = [("name", "state", "arch", "range", "sigma", "res", "file")]
    for name, spec in REGISTRY.items():
        st = checkpoint_status(name, root=args.root, verify=not args.no_verify)
        sig = f"{spec.sigma_range[0]:g}-{spec.sigma_range[1]:g}" if spec.sigma_range else "-"
        rng = f"[{spec.data_range[0]:g}, {spec.data_range[1]:g}]"
        rows.append((name, st["state"], spec.architecture or "-", rng, sig, str(spec.resolution), st["path"] or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return 0


COMMANDS.append(_add_models)


# ---------------------------------------------------------------------------------------------------------------
# demo-data, train-demo: the embedded demo images and the demo prior (diractrap.data, diractrap.train)
# ---------------------------------------------------------------------------------------------------------------


def _add_demo_data(sub) -> None:
    p = sub.add_parser("demo-data", help="write the demo crops (PNG) and their manifest",
                       description="Write the demo crops of the pictures bundled with scikit-image, matplotlib and "
                       "scikit-learn as OUT/{train,test}/*.png with OUT/manifest.json (sources, licences, scales, "
                       "positions, sha256, split). Deterministic; no network.")
    p.add_argument("out", help="output directory")
    p.add_argument("--resolution", type=int, default=32, help="crop side in pixels (default 32)")
    p.add_argument("--splits", nargs="+", default=["train", "test"], choices=["train", "test"])
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_demo_data)


def _run_demo_data(args) -> int:
    from .data import make_demo_crops

    path = make_demo_crops(args.out, args.resolution, tuple(args.splits), progress=not args.no_progress)
    print(f"wrote {path}")
    return 0


COMMANDS.append(_add_demo_data)


_TRAIN_OPTIONS = ("steps", "batch_size", "lr", "seed", "P_uniform")  # keyword arguments of train_demo_prior


def _add_train_demo(sub) -> None:
    from .train import train_demo_prior

    p = sub.add_parser("train-demo", help="train the demo prior (EDM loss) on the demo training crops",
                       description="Train the small EDM denoiser on the demo training crops, resuming from "
                       "OUT/checkpoint.pt if present. Writes OUT/demo_prior.{pt,json} and OUT/loss.csv; copy the two "
                       "demo_prior files into src/diractrap/assets/ to ship them.")
    p.add_argument("out", help="run directory (checkpoint, loss log, final weights)")
    add_options_from(p, train_demo_prior, include=_TRAIN_OPTIONS)
    p.add_argument("--no-bf16", action="store_true", help="train in float32 instead of bfloat16 autocast")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if OUT/checkpoint.pt exists")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's choice; use 1 on a machine shared with other jobs)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_train_demo)


def _run_train_demo(args) -> int:
    import torch

    from .train import train_demo_prior

    if args.threads:
        torch.set_num_threads(args.threads)
    options = {name: getattr(args, name.lower()) for name in _TRAIN_OPTIONS}
    path = train_demo_prior(args.out, **options, bf16=not args.no_bf16, resume=not args.no_resume,
                            progress=not args.no_progress)
    print(f"wrote {path}")
    return 0


COMMANDS.append(_add_train_demo)


# ---------------------------------------------------------------------------------------------------------------
# sweep: q(h_theta * x) over images x theta (diractrap.sweeps, Section 2.2)
# ---------------------------------------------------------------------------------------------------------------


def _add_sweep(sub) -> None:
    from .kernels import FAMILIES

    p = sub.add_parser("sweep", help="potentials q(h_theta * x) of blurred images over a theta grid (Section 2.2)",
                       description="Blur every image with h_theta for each theta and compute the potential of the "
                       "result through the probability-flow ODE (common probes per image across theta); write one "
                       "row per (image, theta) to --out (.parquet or .csv).")
    p.add_argument("images", nargs="+", help="image files of one size, or one image set (.npz) from the workflow")
    p.add_argument("--model", required=True, help="registered prior name or checkpoint path")
    p.add_argument("--family", required=True, choices=FAMILIES)
    p.add_argument("--thetas", required=True, type=float, nargs="+", help="theta values in pixels (include 0)")
    p.add_argument("--angle", type=float, default=None, help="motion blur angle in degrees (0 = horizontal)")
    p.add_argument("--kernel-size", type=int, default=21, help="K (paper: 21)")
    p.add_argument("--boundary", default="reflect", choices=["reflect", "replicate", "circular", "zeros"])
    mode = p.add_argument("--label-mode", default="none",
                          help="class labels for a conditional prior: none, dataset (each image's class in an image "
                          "set) or a class index for every image (default %(default)s)")
    add_alias(p, mode, "--labels")
    _add_potential_options(p)
    p.add_argument("--batch-size", type=int, default=16, help="(image, theta) pairs per ODE solve")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="output table (.parquet or .csv)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_sweep)


def _run_sweep(args) -> int:
    import numpy as np
    import torch

    from .data import atomic_path, load_image
    from .datasets import class_labels, load_image_set
    from .models import get_denoiser
    from .sweeps import sweep

    if len(args.images) == 1 and args.images[0].endswith(".npz"):
        s = load_image_set(args.images[0])
        x, names, labels = s.tensor(), s.names, s.labels
    else:
        x = torch.stack([load_image(f) for f in args.images])
        names, labels = args.images, np.full(len(args.images), -1)
    mode = int(args.label_mode) if args.label_mode.isdigit() else args.label_mode
    denoiser = get_denoiser(args.model, device=args.device)
    table = sweep(denoiser, x.to(args.device), args.family, args.thetas, names=names,
                  labels=class_labels(mode, labels), angle=args.angle, kernel_size=args.kernel_size,
                  boundary=args.boundary, batch_size=args.batch_size, model=args.model,
                  options=_potential_options(args), progress=not args.no_progress)
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False) if args.out.endswith(".csv") else table.to_parquet(tmp, index=False)
    print(table[["image", "theta", "q", "stderr"]].to_string(index=False))
    return 0


COMMANDS.append(_add_sweep)


# ---------------------------------------------------------------------------------------------------------------
# potential: q(x) = -log p(x) of image files through the probability-flow ODE (diractrap.potential, Section 2)
# ---------------------------------------------------------------------------------------------------------------


def _add_potential_options(p) -> None:
    """The fields of potential.PotentialOptions as options, with the library's defaults."""
    from .numerics import PRECISIONS
    from .potential import CONTROLS, DIVERGENCES, PROBES, SOLVERS, PotentialOptions

    group = p.add_argument_group("how q is computed (diractrap.potential.PotentialOptions)")
    add_options_from(group, PotentialOptions, exclude=("tail_sigma",),  # the Gaussian tail needs the data's moments
                     choices=dict(solver=SOLVERS, control=CONTROLS, divergence=DIVERGENCES, probe=PROBES,
                                  precision=PRECISIONS),
                     aliases={"n_probes": ["--probes"]})


def _potential_options(args):
    """The :class:`~diractrap.potential.PotentialOptions` of a parsed ``potential`` or ``sweep`` command line."""
    from .potential import PotentialOptions

    return PotentialOptions.make(None, **{k: getattr(args, k) for k in PotentialOptions.__dataclass_fields__
                                          if hasattr(args, k)})


def _add_potential(sub) -> None:
    p = sub.add_parser("potential", help="potential q(x) = -log p(x) of images under a prior (nats, [0, 1] pixels)",
                       description="Compute q(x) for each image through the probability-flow ODE and print one "
                       "line per image (or --json). Images are used at their own size unless --size is given.")
    p.add_argument("images", nargs="+", help="image files (PNG/JPEG) of one size, values read in [0, 1]")
    p.add_argument("--model", required=True, help="registered prior name or checkpoint path")
    p.add_argument("--size", type=int, default=None, help="resize the shorter side to SIZE and centre-crop")
    _add_potential_options(p)
    p.add_argument("--label", type=int, default=None, help="class index for a class-conditional prior")
    p.add_argument("--batch-size", type=int, default=16, help="images per ODE solve")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print a JSON list of per-image records")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_potential)


def _run_potential(args) -> int:
    import json
    import math

    import torch

    from .data import load_image
    from .models import get_denoiser
    from .potential import potential

    x = [load_image(f, size=args.size) for f in args.images]
    shapes = sorted({tuple(t.shape) for t in x})
    if len(shapes) > 1:
        raise ValueError(f"images have different sizes {shapes}: pass --size to resize and crop them to one")
    x = torch.stack(x).to(args.device)
    denoiser = get_denoiser(args.model, device=args.device)
    options = _potential_options(args)
    records = []
    for start in range(0, len(x), args.batch_size):
        ids = list(range(start, min(start + args.batch_size, len(x))))  # item id = position on the command line
        labels = None if args.label is None else torch.full((len(ids),), args.label, device=args.device)
        res = potential(denoiser, x[ids], labels=labels, options=options, item_ids=ids,
                        progress=not args.no_progress)
        for k, i in enumerate(ids):
            se = float(res.stderr[k])
            records.append(dict(image=args.images[i], q=float(res.q[k]), stderr=None if math.isnan(se) else se,
                                bits_per_dim=float(res.bits_per_dim[k]), nfe=res.nfe, model=args.model,
                                **res.settings))
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        for r in records:
            se = "n/a" if r["stderr"] is None else f"{r['stderr']:.2g}"
            print(f"{r['image']}\tq = {r['q']:.4f} nats (stderr {se})\t{r['bits_per_dim']:.4f} bits/dim")
    return 0


COMMANDS.append(_add_potential)


# ---------------------------------------------------------------------------------------------------------------
# theorem1: Theorem 1's hypotheses at images under a prior (diractrap.theorem1)
# ---------------------------------------------------------------------------------------------------------------


def _add_theorem1(sub) -> None:
    p = sub.add_parser("theorem1", help="Theorem 1's hypotheses at images: grad q, Hessian extremes, (7)-(9)",
                       description="For each image and the kernel (--kernel, --theta): ||grad q||, dq along the blur "
                       "family and Statement 1's semigroup path, the extreme Hessian eigenvalues by Lanczos, "
                       "condition (8) (smallest singular value of the kernel Jacobian on zero-sum kernels) and (7), "
                       "(9) "
                       "as principal angles. With --descend N, first move each image N steps down q.")
    p.add_argument("images", nargs="+", help="image files (PNG/JPEG) of one size, values read in [0, 1]")
    p.add_argument("--model", required=True, help="registered prior name or checkpoint path (e.g. demo)")
    p.add_argument("--size", type=int, default=None, help="resize the shorter side to SIZE and centre-crop")
    p.add_argument("--kernel", default="gaussian", help="blur family of h_bar (diractrap.kernels)")
    p.add_argument("--theta", type=float, default=2.5, help="its parameter in pixels")
    p.add_argument("--angle", type=float, default=None, help="motion blur angle (degrees)")
    p.add_argument("--kernel-size", type=int, default=15, help="K")
    p.add_argument("--sigma-g", type=float, default=0.001, help="noise level of the score for grad q (network priors)")
    p.add_argument("--lanczos", type=int, default=20, help="Lanczos steps (Hessian-vector products)")
    p.add_argument("--descend", type=int, default=0, help="descent steps on q before the diagnostics (0: none)")
    p.add_argument("--lr", type=float, default=None,
                   help="descent step (default sigma_g^2: x <- D(x, sigma_g); the authors' recipe is 0.01 at 0.001)")
    p.add_argument("--label", type=int, default=None, help="class index for a class-conditional prior")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print a JSON list of per-image records")
    p.set_defaults(func=_run_theorem1)


def _run_theorem1(args) -> int:
    import json

    import torch

    from .data import load_image
    from .kernels import kernel
    from .models import get_denoiser
    from .theorem1 import descend_to_critical, diagnose

    x = [load_image(f, size=args.size) for f in args.images]
    if len({tuple(t.shape) for t in x}) > 1:
        raise ValueError("images have different sizes: pass --size to resize and crop them to one")
    x = torch.stack(x).to(args.device)
    den = get_denoiser(args.model, device=args.device)
    labels = None if args.label is None else torch.full((len(x),), args.label, device=args.device)
    options = {} if args.angle is None else {"angle": args.angle}
    h = kernel(args.kernel, args.theta, args.kernel_size, device=args.device, **options)
    if args.descend:
        lr = args.sigma_g**2 if args.lr is None else args.lr
        x, _ = descend_to_critical(den, x, lr=lr, n_steps=args.descend, sigma_g=args.sigma_g, labels=labels)
    rows = diagnose(den, x, h, theta=args.theta if args.kernel == "gaussian" else None, sigma_g=args.sigma_g,
                    labels=labels, n_lanczos=args.lanczos)
    for f, r in zip(args.images, rows):
        r.update(image=f, model=args.model, kernel=args.kernel, theta=args.theta, descent_steps=args.descend)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['image']}\t|grad q| = {r['grad_norm']:.4g}\tdq/d(eps^2) = {r['dq_blur']:.4g}\t"
                  f"lam in [{r['lam_min']:.4g}, {r['lam_max']:.4g}]\t(8) s_min = {r['j_smin']:.3g}\t"
                  f"(7) {r['angle7']:.3g} rad, (9) {r['angle9']:.3g} rad")
    return 0


COMMANDS.append(_add_theorem1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
