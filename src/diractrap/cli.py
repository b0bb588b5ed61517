"""The ``diractrap`` command: thin wrappers over library functions.

Each sub-command is a pair ``_add_<name>(subparsers)`` / ``_run_<name>(args)``; add new ones to ``COMMANDS``.
Options that mirror a library parameter set (Algorithm1Params, PotentialOptions, train_demo_prior's keywords) are
generated from it by :func:`diractrap.cli_options.add_options_from`, never copied.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import pickle
import sys
from pathlib import Path

from .cli_deblur import _add_deblur, deblur_params
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
    except KeyboardInterrupt:  # Ctrl-C: outputs are written atomically at the end, so an interrupted run wrote none
        _remove_empty(created)
        if debug:
            raise
        print(f"diractrap{' ' + command if command else ''}: interrupted (Ctrl-C); no output was completed",
              file=sys.stderr)
        return 130  # 128 + SIGINT, the shell's convention


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
    text = " ".join(str(text).split()) or type(err).__name__
    if isinstance(err, RuntimeError) and ("DefaultCPUAllocator" in text or "out of memory" in text.lower()):
        import re  # the allocator's own words ("[enforce fail at alloc_cpu.cpp:127] ...") say nothing a user can do

        from .checks import format_bytes

        asked = re.search(r"allocate (\d+) bytes", text) or re.search(r"[Tt]ried to allocate ([\d.]+ [KMGT]iB)", text)
        size = ""
        if asked:
            size = asked.group(1) if "iB" in asked.group(1) else format_bytes(int(asked.group(1)))
            size = f" (one allocation of {size} failed)"
        text = f"out of memory{size}: process fewer images at once, or smaller ones (--batch-size, --size, or crop " \
               "into tiles)"
    return text


def _json_text(obj) -> str:
    """Strict JSON: NaN and infinities (not JSON, refused by strict readers) are written as null."""
    import json

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(u) for k, u in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(u) for u in v]
        return v

    return json.dumps(clean(obj), indent=2, default=str, allow_nan=False)


# option name -> the rule its value must follow (options a sub-command does not have are skipped)
_POSITIVE = ("sigma", "sigma_g", "rtol", "atol", "lr", "gamma_h_max", "dr_sigma", "dr_sigma_scale", "rel_step")
_NONNEGATIVE = ("gamma_x", "gamma_h", "gamma_h_scale", "p_uniform", "dr_clamp", "cg_tol", "theta", "thetas")
_COUNTS = {"kernel_size": 1, "steps": 1, "probes": 1, "n_probes": 1, "batch_size": 1, "size": 1, "resolution": 1,
           "reset": 1, "n_in_warmup": 1, "n_in_first": 0, "snapshot_every": 1, "threads": 1, "n_ext": 0, "n_in": 0,
           "label": 0, "lanczos": 1, "descend": 0, "cg_iter": 1, "seed": 0}
_FILE_OUTPUTS = {"sweep"}  # sub-commands whose --out is a file
_DIR_OUTPUTS = {"deblur", "demo-data", "train-demo"}  # ... and a directory (others: a file if the name has a suffix)
_RUN_FOLDERS = {"deblur"}  # ... a directory that holds one run: refused when it already holds files, unless --overwrite


def _opt(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _check_arguments(args) -> list:
    """Check the parsed options shared by sub-commands; create the output directory. Returns the directories made."""
    from . import checks

    given = {k.removeprefix("param_"): v for k, v in vars(args).items()  # deblur: param_<field>
             if v is not None and v is not NONE}
    for k, v in given.items():  # every number on the command line is finite: NaN passes every comparison
        for value in v if isinstance(v, (list, tuple)) else [v]:
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{_opt(k)} must be a finite number, got {value}")
    for k in (k for k in _POSITIVE if k in given):
        for value in given[k] if isinstance(given[k], (list, tuple)) else [given[k]]:
            checks.check_positive(**{_opt(k): value})
    for k in (k for k in _NONNEGATIVE if k in given):
        for value in given[k] if isinstance(given[k], (list, tuple)) else [given[k]]:
            checks.check_nonnegative(**{_opt(k): value})
    for k, low in _COUNTS.items():
        if k in given:
            checks.check_count(low, **{_opt(k): given[k]})
    if "device" in given:
        checks.check_device(given["device"], "--device")
    if "model" in given:
        _check_model(given["model"])
    if getattr(args, "lr", None) is not None and getattr(args, "descend", None) == 0:
        raise ValueError("--lr is the descent's step: it needs --descend N (N > 0 steps)")
    _check_parameter_sets(args)
    _check_images(args, given)
    if args.command == "models" and given.get("root") is not None:
        from .models.registry import checkpoint_dir

        checkpoint_dir(given["root"], "--root")
    if "out" not in given:
        return []
    out = given["out"]
    if args.command in _FILE_OUTPUTS or (args.command not in _DIR_OUTPUTS and Path(out).suffix):
        if args.command == "sweep":
            checks.check_table_suffix(out, "--out")
        return checks.prepare_output_file(out, "--out")
    if args.command in _RUN_FOLDERS and not getattr(args, "overwrite", False):
        held = sorted(p.name for p in Path(out).iterdir()) if Path(out).is_dir() else []
        if held:
            shown = ", ".join(held[:4]) + (f" and {len(held) - 4} more" if len(held) > 4 else "")
            raise ValueError(f"--out {out} already holds files ({shown}): give a new folder, or --overwrite to "
                             "replace the run there")
    return checks.prepare_output_dir(out, "--out")


def _check_parameter_sets(args) -> None:
    """The parameter objects a command builds (Algorithm1Params, PotentialOptions) check their own fields; their
    messages name the field, which the command line spells as an option."""
    import re

    build = {"deblur": deblur_params, "potential": _potential_options, "sweep": _potential_options}.get(args.command)
    if build is None:
        return
    try:
        build(args)
    except ValueError as err:
        from .deconv import Algorithm1Params
        from .potential import PotentialOptions

        fields = {*Algorithm1Params.__dataclass_fields__, *PotentialOptions.__dataclass_fields__}
        text = re.sub(r"(^|\band )([a-z][a-z0-9_]*)",
                      lambda m: m.group(1) + (_opt(m.group(2)) if m.group(2) in fields else m.group(2)), str(err))
        raise ValueError(text) from None


def _check_images(args, given) -> None:
    """Image files (readable, one size per command), an image set given alone, and K against the blurry image."""
    from . import checks
    from .data import load_image

    images = [given["blurry"]] if "blurry" in given else list(given.get("images", ()))
    sets = [f for f in images if str(f).endswith(".npz")]
    if sets and (args.command != "sweep" or len(images) > 1):
        raise ValueError(f"{sets[0]}: an image set (.npz) is read by 'diractrap sweep' alone, without other images"
                         if args.command == "sweep" else f"{sets[0]} is an image set (.npz): give image files "
                         "(PNG, JPEG), or use 'diractrap sweep' for image sets")
    if sets:
        from .datasets import load_image_set

        shape = load_image_set(sets[0]).images.shape  # (n, C, H, W): a file that is no image set fails here
        sizes = [tuple(shape[-2:])]
    else:
        size = given.get("size") if args.command in ("potential", "theorem1") else None
        sizes = [tuple(load_image(f, size=size).shape[-2:]) for f in images]  # unreadable: one line
    if "blurry" in given and "kernel_size" in given:
        checks.check_kernel_fits(given["kernel_size"], *sizes[0], name="--kernel-size")
    if len(set(sizes)) > 1:
        hint = "" if args.command == "sweep" else ": pass --size to resize and crop them to one"
        raise ValueError(f"images have different sizes ({', '.join(f'{h}x{w}' for h, w in sorted(set(sizes)))}){hint}")
    if args.command == "sweep" and sizes and given["kernel_size"] > min(sizes[0]):
        h, w = sizes[0]
        raise ValueError(f"--kernel-size K = {given['kernel_size']} is larger than the images ({h}x{w}): the blur "
                         f"would reach past the whole image; use K <= {min(h, w)}")


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
# deblur: Algorithm 1 on one blurry image (diractrap.cli_deblur)
# ---------------------------------------------------------------------------------------------------------------


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

    from .checks import check_label_option
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
    class_labels(mode, labels)  # an unknown mode, or "dataset" for images without classes: before the prior loads
    denoiser = get_denoiser(args.model, device=args.device)
    if mode != "none":
        check_label_option(denoiser, mode, "--label-mode", args.model)
    table = sweep(denoiser, x.to(args.device), args.family, args.thetas, names=names,
                  labels=class_labels(mode, labels), angle=args.angle, kernel_size=args.kernel_size,
                  boundary=args.boundary, batch_size=args.batch_size, model=args.model,
                  options=_potential_options(args), progress=not args.no_progress)
    with atomic_path(args.out) as tmp:  # the format its extension names (checked: .csv or .parquet)
        table.to_csv(tmp, index=False) if args.out.lower().endswith(".csv") else table.to_parquet(tmp, index=False)
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
    import math

    import torch

    from .checks import check_label_option
    from .data import load_image
    from .models import get_denoiser
    from .potential import potential

    x = torch.stack([load_image(f, size=args.size) for f in args.images]).to(args.device)  # one size: checked
    denoiser = get_denoiser(args.model, device=args.device)
    check_label_option(denoiser, args.label, "--label", args.model)
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
        print(_json_text(records))
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
    import torch

    from .checks import check_label_option
    from .data import load_image
    from .kernels import kernel
    from .models import get_denoiser
    from .theorem1 import check_diagnose_input, descend_to_critical, diagnose

    x = torch.stack([load_image(f, size=args.size) for f in args.images]).to(args.device)  # one size: checked
    options = {} if args.angle is None else {"angle": args.angle}
    h = kernel(args.kernel, args.theta, args.kernel_size, device=args.device, **options)
    den = get_denoiser(args.model, device=args.device)
    check_label_option(den, args.label, "--label", args.model)
    check_diagnose_input(den, x, args.kernel_size, sigma_g=args.sigma_g, n_lanczos=args.lanczos, name="--kernel-size")
    labels = None if args.label is None else torch.full((len(x),), args.label, device=args.device)
    if args.descend:
        lr = args.sigma_g**2 if args.lr is None else args.lr
        x, _ = descend_to_critical(den, x, lr=lr, n_steps=args.descend, sigma_g=args.sigma_g, labels=labels)
    rows = diagnose(den, x, h, theta=args.theta if args.kernel == "gaussian" else None, sigma_g=args.sigma_g,
                    labels=labels, n_lanczos=args.lanczos)
    for f, r in zip(args.images, rows):
        r.update(image=f, model=args.model, kernel=args.kernel, theta=args.theta, descent_steps=args.descend)
    if args.json:
        print(_json_text(rows))
    else:
        for r in rows:
            print(f"{r['image']}\t|grad q| = {r['grad_norm']:.4g}\tdq/d(eps^2) = {r['dq_blur']:.4g}\t"
                  f"lam in [{r['lam_min']:.4g}, {r['lam_max']:.4g}]\t(8) s_min = {r['j_smin']:.3g}\t"
                  f"(7) {r['angle7']:.3g} rad, (9) {r['angle9']:.3g} rad")
    return 0


COMMANDS.append(_add_theorem1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
