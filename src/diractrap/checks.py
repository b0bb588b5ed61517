"""Checks at the boundary: what a user gives (numbers, images, tensors, output paths, a config) is validated once,
before any work, with a one-line error that names the value and what is allowed.

Shared by the library's entry points (:func:`diractrap.potential.potential`, :func:`diractrap.deconv.algorithm1`,
:func:`diractrap.deconv.map_x`, :func:`diractrap.problems.run_pairs`, :func:`diractrap.sweeps.sweep`,
:func:`diractrap.theorem1.diagnose`, :func:`diractrap.models.get_denoiser`), the image reader
(:func:`diractrap.data.load_image`), the command line (:mod:`diractrap.cli`) and the workflow's config validation
(``workflow/rules/common.smk``). Every error here is a ``ValueError`` (a user error: the CLI prints it as one line and
exits with status 1).

Sections: numbers; image tensors; what a prior accepts; devices and class labels; memory (the peak of one network
evaluation traced on the meta device, against what the device has free); non-finite iterates; output paths; the
workflow's config.
"""

from __future__ import annotations

import math
import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

__all__ = ["RANGE_TOL", "NOISE_REACH", "check_positive", "check_nonnegative", "check_count", "check_images",
           "Geometry", "model_geometry", "check_model_input", "check_kernel_fits", "check_deconv_input",
           "check_deconv_memory", "check_sweep_input", "check_device", "conditional_classes", "check_label_option",
           "MEMORY_LIMIT_ENV", "MEMORY_MARGIN", "MEMORY_OVERHEAD", "available_memory", "network_peak", "memory_need",
           "check_memory", "format_bytes",
           "nonfinite_message", "prepare_output_dir", "prepare_output_file", "check_table_suffix", "config_errors"]

# Images enter the library in [0, 1]. The tolerance admits what the library itself produces (the iterates of a
# deblurring ring past the edges by a few hundredths to tenths; blurred images stay in [0, 1]) and refuses the
# usual mistakes: 8-bit values (every pixel brighter than 0.6 % grey exceeds 1.5), [-1, 1] images (every pixel
# darker than 25 % grey in [0, 1] terms lies below -0.5) and wrong scalings such as 5.0.
RANGE_TOL = 0.5
# y = h * x + sigma n: a Gaussian sample beyond 6 sigma has probability 2e-9 per pixel, so y may leave [0, 1] by up to
# NOISE_REACH * sigma more than an image may.
NOISE_REACH = 6.0


# ---------------------------------------------------------------------------------------------------------------
# Numbers: step sizes, noise levels, tolerances, counts
# ---------------------------------------------------------------------------------------------------------------


def _real(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return v


def check_positive(**values) -> None:
    """Each given value (None = not given, skipped) must be a finite number > 0."""
    for name, value in values.items():
        if value is not None and _real(name, value) <= 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")


def check_nonnegative(**values) -> None:
    """Each given value (None skipped) must be a finite number >= 0."""
    for name, value in values.items():
        if value is not None and _real(name, value) < 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")


def check_count(minimum: int = 1, **values) -> None:
    """Each given value (None skipped) must be an integer >= ``minimum``."""
    for name, value in values.items():
        if value is None:
            continue
        integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not integral:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        if int(value) < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


# ---------------------------------------------------------------------------------------------------------------
# Image tensors: a non-empty float batch (B, C, H, W), finite, in [0, 1] within RANGE_TOL
# ---------------------------------------------------------------------------------------------------------------


def check_images(x, name: str = "x", *, tol: float = RANGE_TOL) -> None:
    """Raise a ValueError unless ``x`` is a non-empty float tensor (B, C, H, W), finite, in [-tol, 1 + tol]."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch tensor (B, C, H, W), got a {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must be a batch of images (B, C, H, W), got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): give at least one image of at least one pixel")
    if not x.is_floating_point():
        hint = " (8-bit images: x.float() / 255)" if x.dtype == torch.uint8 else ""
        raise ValueError(f"{name} has dtype {str(x.dtype).removeprefix('torch.')}: give float images in [0, 1]{hint}")
    bad = ~torch.isfinite(x)
    if bad.any():
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name} has {int(bad.sum())} non-finite value(s) (NaN or infinity), the first at index "
                         f"{first}: give finite pixel values in [0, 1]")
    lo, hi = (float(v) for v in torch.aminmax(x.detach()))
    if lo < -tol or hi > 1 + tol:
        raise ValueError(f"{name} has values in [{lo:.4g}, {hi:.4g}]; images must lie in [0, 1] (tolerance {tol:g}): "
                         "divide 8-bit values by 255, map [-1, 1] images by (x + 1) / 2")


# ---------------------------------------------------------------------------------------------------------------
# What a prior accepts: channels, a side multiple (U-Nets halve the image several times), or one fixed shape
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """The images a prior accepts: ``channels`` (None: any), sides divisible by ``multiple``, or exactly ``shape``."""

    channels: int | None = None
    multiple: int = 1
    shape: tuple[int, int, int] | None = None  # (C, H, W) of a prior defined on one size only (Gaussian priors)


def model_geometry(denoiser) -> Geometry:
    """Geometry of a prior of the project, read from the object; Geometry() (no constraint) when unknown."""
    shape = getattr(denoiser, "shape", None)
    if isinstance(shape, tuple) and len(shape) == 3 and all(isinstance(s, int) for s in shape):
        return Geometry(channels=shape[0], shape=shape)  # the Gaussian priors of diractrap.priors
    net = getattr(denoiser, "model", None)
    enc = getattr(net, "enc", None)
    if hasattr(denoiser, "img_channels") and enc is not None:  # EDMPrecond around a SongUNet / DhariwalUNet
        downs = sum(1 for k in enc.keys() if k.endswith("_down") and not k.endswith("_aux_down"))
        return Geometry(channels=int(denoiser.img_channels), multiple=2**downs)
    net = getattr(denoiser, "net", None)
    if hasattr(net, "num_resolutions") and hasattr(net, "config"):  # NCSNppDenoiser
        cfg = net.config
        if cfg.attn_resolutions:  # its attention blocks sit where the width equals one of them: the native size only
            return Geometry(channels=int(cfg.num_channels), shape=(int(cfg.num_channels), cfg.image_size,
                                                                   cfg.image_size))
        return Geometry(channels=int(cfg.num_channels), multiple=2 ** (int(net.num_resolutions) - 1))
    return Geometry()


def _sides(n: int, m: int) -> str:
    lower, upper = n - n % m, n - n % m + m
    return f"{lower} or {upper}" if lower > 0 else f"{upper}"


def check_model_input(denoiser, x: Tensor, name: str = "x") -> None:
    """x (B, C, H, W) must have the channels and the size the prior accepts; the error names what would fit.

    No padding or cropping is done here: a network's output depends on every pixel, so neither is exact for q(x).
    """
    g = model_geometry(denoiser)
    C, H, W = (int(s) for s in x.shape[1:])
    if g.shape is not None and (C, H, W) != g.shape:
        raise ValueError(f"{name} is {C}x{H}x{W} (C x H x W); this prior is defined on {'x'.join(map(str, g.shape))} "
                         "images only")
    if g.channels is not None and C != g.channels:
        raise ValueError(f"{name} has {C} channel(s); this prior takes {g.channels} (load images with mode='RGB' for "
                         "3, 'L' for 1)")
    if g.multiple > 1 and (H % g.multiple or W % g.multiple):
        raise ValueError(f"{name} is {H}x{W}; this network needs sides divisible by {g.multiple}: crop or resize to "
                         f"{_sides(H, g.multiple)} rows and {_sides(W, g.multiple)} columns")


def check_kernel_fits(kernel_size, h: int, w: int, name: str = "kernel_size") -> int:
    """K must be an integer >= 1 smaller than the blurry image (h, w): a kernel as large as the observation leaves
    nothing to deblur (and costs minutes per iteration). Returns K."""
    check_count(1, **{name: kernel_size})
    K, h, w = int(kernel_size), int(h), int(w)
    if K >= min(h, w):
        raise ValueError(f"{name} K = {K} must be smaller than the blurry image ({h}x{w}): use K < {min(h, w)}")
    return K


def check_deconv_input(denoiser, y: Tensor, kernel_size, *, sigma: float | None = None) -> None:
    """The blurry batch y (B, C, h, w) of Algorithm 1 / the MAP: images (noise included), K, and x's size.

    x is (h + K - 1, w + K - 1) (the valid model), extended to the sides and channels the prior accepts
    (:func:`diractrap.domain.x_domain`: refused only where no extension fits, e.g. a prior defined on a smaller
    size). K must be smaller than y (:func:`check_kernel_fits`). A constant y (a flat or saturated image) carries
    no information about the kernel: refused with that reason.
    """
    tol = RANGE_TOL + NOISE_REACH * (sigma or 0.0)
    check_images(y, "y", tol=tol)
    if kernel_size is None:
        raise ValueError("kernel_size K is needed when the initial kernel is given by name (the paper uses K = 21)")
    K = int(check_kernel_fits(kernel_size, *y.shape[-2:]))
    h, w = (int(s) for s in y.shape[-2:])
    flat = (y.flatten(2).amax(2) - y.flatten(2).amin(2)).amax(1) == 0  # (B,): every channel constant
    if flat.any():
        which = [int(i) for i in flat.nonzero().flatten()]
        raise ValueError(f"blurry image(s) {which} are constant (flat or saturated): a constant image says nothing "
                         "about the kernel; give an image with contrast")
    from .domain import x_domain  # x mapped to the sides and channels the prior accepts, or a one-line error

    x_domain(denoiser, y.shape[1], (h + K - 1, w + K - 1), kernel_size=K)


def check_sweep_input(denoiser, images: Tensor, kernel_size, *, boundary: str = "reflect", batch_size: int = 16,
                      name: str = "kernel_size") -> None:
    """The images (B, C, H, W) of a sweep of q(h_theta * x): in [0, 1], a size the prior takes, a kernel no larger
    than them (h_theta * x is formed at the size of x: a wider kernel would reach past the whole image), a known
    boundary rule and a batch of at least one (image, theta) pair."""
    check_images(images, "images")
    check_count(1, **{name: kernel_size}, batch_size=batch_size)
    if boundary not in ("reflect", "replicate", "circular", "zeros"):
        raise ValueError(f"boundary must be 'reflect', 'replicate', 'circular' or 'zeros', got {boundary!r}")
    h, w = (int(s) for s in images.shape[-2:])
    if int(kernel_size) > min(h, w):
        raise ValueError(f"{name} K = {kernel_size} is larger than the images ({h}x{w}): the blur would reach past the "
                         f"whole image; use K <= {min(h, w)}")
    check_model_input(denoiser, images, "images")


# ---------------------------------------------------------------------------------------------------------------
# Devices and class labels: a device this torch build has, a label only for a conditional prior
# ---------------------------------------------------------------------------------------------------------------


def check_device(device, name: str = "device") -> torch.device:
    """The torch.device of ``device`` ("cpu", "cuda", "cuda:1", "mps" or a torch.device), or a one-line ValueError
    when this torch build or machine does not have it."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{name} {device!r} is not a device: use cpu, cuda or cuda:N") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support" if torch.version.cuda is None
                   else "no CUDA device is visible (CUDA_VISIBLE_DEVICES, driver)")
            raise ValueError(f"{name} {device}: {why} (torch {torch.__version__}): use cpu")
        count = torch.cuda.device_count()
        if d.index is not None and d.index >= count:
            raise ValueError(f"{name} {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif d.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{name} {device}: MPS (Apple silicon) is not available here: use cpu")
    elif d.type != "cpu":
        raise ValueError(f"{name} {device!r}: the library runs on cpu, cuda or mps, not {d.type}")
    return d


def conditional_classes(denoiser) -> int:
    """The number of classes of a class-conditional prior (EDM's ``label_dim``); 0 for an unconditional one."""
    return int(getattr(denoiser, "label_dim", 0) or 0)


def check_label_option(denoiser, label, name: str = "--label", model: str = "this prior") -> None:
    """A class given by the user (an index, or a mode such as "dataset"): only for a conditional prior, and an index
    must be one of its classes. (The library itself
    passes an image set's labels to every prior alike, and unconditional priors ignore them.)"""
    if label is None:
        return
    classes = conditional_classes(denoiser)
    if not classes:
        raise ValueError(f"{name} {label}: {model} is unconditional (it has no classes): leave {name} out")
    if isinstance(label, int) and not 0 <= label < classes:
        raise ValueError(f"{name} must be a class index in [0, {classes - 1}] for {model}, got {label}")


# ---------------------------------------------------------------------------------------------------------------
# Memory: the peak of one network evaluation, traced on the meta device, against what the device has free
# ---------------------------------------------------------------------------------------------------------------

MEMORY_LIMIT_ENV = "DIRACTRAP_MEMORY_LIMIT_MB"  # MiB available to a command (default: what the device reports)
# The traced peak counts the tensors torch allocates; a process needs more: allocator rounding and pools, the
# convolution library's workspaces, a constant part as the first large evaluation builds them. Measured on the CPU
# (BENCHMARKS.md "Input checks", benchmarks/memory_estimate.py): growth of the resident set = 1.03-1.47 x the traced
# peak for peaks of 0.3-2.9 GiB (demo, DDPM++, ADM, NCSN++ networks; forward, VJP, Hessian-vector product), and up
# to 0.33 GiB above it for small peaks (ADM-64's forward: 75 MiB traced, 411 MiB grown).
MEMORY_MARGIN = 1.5
MEMORY_OVERHEAD = 512 * 2**20  # bytes


def format_bytes(n: float) -> str:
    """'512 MiB', '3.2 GiB', '1.5 TiB'."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().split()[0]
    except (OSError, IndexError):
        return None
    return int(text) if text.isdigit() else None


def _cpu_available() -> int | None:
    """MemAvailable (Linux; psutil elsewhere), lowered to a cgroup v2 limit's headroom when the process has one."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        try:
            import psutil

            avail = int(psutil.virtual_memory().available)
        except ImportError:
            return None
    limit, used = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and used is not None:  # "max" (no limit) reads as None
        reclaimable = 0
        try:
            stat = dict(line.split() for line in Path("/sys/fs/cgroup/memory.stat").read_text().splitlines())
            reclaimable = int(stat.get("inactive_file", 0))  # page cache the kernel drops before it kills
        except (OSError, ValueError):
            pass
        headroom = max(0, limit - used + reclaimable)
        avail = headroom if avail is None else min(avail, headroom)
    return avail


def available_memory(device) -> tuple[int | None, str]:
    """(bytes a computation on ``device`` may still allocate, where that number comes from); None if unknown.

    $DIRACTRAP_MEMORY_LIMIT_MB (MiB) overrides what the device reports; CUDA: free device memory plus what torch's
    caching allocator holds unused; CPU: MemAvailable, or the headroom of a cgroup memory limit if smaller.
    """
    text = os.environ.get(MEMORY_LIMIT_ENV)
    if text:
        try:
            mib = float(text)
        except ValueError:
            mib = math.nan
        if not math.isfinite(mib) or mib <= 0:
            raise ValueError(f"${MEMORY_LIMIT_ENV} must be a positive number of MiB, got {text!r}")
        return int(mib * 2**20), f"the limit ${MEMORY_LIMIT_ENV}"
    d = torch.device(device)
    if d.type == "cuda":
        free, _ = torch.cuda.mem_get_info(d)
        cached = torch.cuda.memory_reserved(d) - torch.cuda.memory_allocated(d)
        return int(free + cached), f"free on {d}"
    if d.type == "cpu":
        return _cpu_available(), "available"
    return None, "unknown"


class _PeakBytes(TorchDispatchMode):
    """Live bytes of the tensors created while active, and their peak: each new storage is counted once, until it
    is freed (a weak reference's callback); views and in-place results share a storage and add nothing."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen = WeakIdKeyDictionary()

    def _free(self, n: int) -> None:
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, Tensor):
                continue
            st = t.untyped_storage()
            if id(st) in inputs or st in self._seen:
                continue
            n = st.nbytes()
            self._seen[st] = weakref.ref(st, lambda _, n=n: self._free(n))
            self.live += n
        self.peak = max(self.peak, self.live)
        return out


class _MetaDenoiser:
    """A network denoiser whose parameters and buffers are meta tensors: it computes shapes, never numbers. A
    conditional network gets one-hot float labels (class indices would need a range check on values)."""

    def __init__(self, module):
        from torch.func import functional_call

        self._call = functional_call
        self.module = module
        self.state = {k: torch.empty_like(v, device="meta")
                      for k, v in [*module.named_parameters(), *module.named_buffers()]}
        self.sigma_min, self.sigma_max, self.data_range = module.sigma_min, module.sigma_max, module.data_range
        self.classes = conditional_classes(module)

    def __call__(self, x, sigma, labels=None):
        labels = torch.empty(x.shape[0], self.classes, dtype=x.dtype, device=x.device) if self.classes else None
        return self._call(self.module, self.state, (x, sigma, labels))


_PEAKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # denoiser -> {(key, shape, dtype): bytes}


def _forward_pass(den, x) -> None:
    with torch.no_grad():
        den(x, torch.ones(x.shape[0], dtype=x.dtype, device=x.device))


def _vjp_passes(n: int) -> Callable:
    def work(den, x) -> None:  # a forward pass kept for n VJPs (the Hutchinson divergence)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            D = den(xg, torch.ones(x.shape[0], dtype=x.dtype, device=x.device))
            for m in range(n):
                torch.autograd.grad(D, xg, torch.empty_like(D), retain_graph=m < n - 1)

    return work


def network_peak(denoiser, shape, work="forward", *, n_vjp: int = 1, key: str | None = None,
                 dtype=torch.float32) -> int | None:
    """Bytes that one network evaluation allocates at its peak for an input x of ``shape`` (B, C, H, W), beyond x
    and the network's parameters, traced on the meta device (shapes only: nothing is allocated, nothing computed).

    ``work``: "forward" (a pass without gradients), "vjp" (a forward pass kept for ``n_vjp`` vector-Jacobian
    products), or a function ``work(denoiser, x)`` written against the denoiser protocol (named by ``key`` in the
    cache). None when the denoiser is not a network (closed-form priors: their memory is a few images) or cannot be
    traced (an operation with no meta implementation, a branch on tensor values): the caller goes on without.
    """
    if not isinstance(denoiser, torch.nn.Module) or not any(True for _ in denoiser.parameters()):
        return None
    if work == "forward":
        work, key = _forward_pass, "forward"
    elif work == "vjp":
        work, key = _vjp_passes(n_vjp), f"vjp{n_vjp}"
    cache = _PEAKS.setdefault(denoiser, {})
    k = (key or getattr(work, "__qualname__", repr(work)), tuple(int(s) for s in shape), str(dtype))
    if k not in cache:
        try:
            meta = _MetaDenoiser(denoiser)
            x = torch.empty(k[1], dtype=dtype, device="meta")
            with _PeakBytes() as tracker:
                work(meta, x)
            cache[k] = int(tracker.peak)
        except Exception:  # noqa: BLE001 - an estimate we cannot make must not stop the computation
            cache[k] = None
    return cache[k]


def memory_need(peak: int | None, extra: float = 0) -> float | None:
    """Bytes a computation needs: the traced peak of its network evaluation (:func:`network_peak`) x MEMORY_MARGIN,
    + MEMORY_OVERHEAD, + ``extra`` (its own buffers); None when the peak is unknown."""
    return None if peak is None else MEMORY_MARGIN * peak + MEMORY_OVERHEAD + extra


_MEMORY_ADVICE = "use fewer images per batch or smaller images (--size, or crop into tiles)"


def check_memory(need: float | None, device, what: str, advice: str = _MEMORY_ADVICE) -> None:
    """A one-line ValueError when ``need`` bytes (an estimate; None: unknown, nothing checked) exceed what
    ``device`` has available (:func:`available_memory`), naming both numbers and the way out."""
    if need is None:
        return
    avail, source = available_memory(device)
    if avail is not None and need > avail:
        raise ValueError(f"{what} needs about {format_bytes(need)} of memory on {torch.device(device).type} but "
                         f"{format_bytes(avail)} is {source}: {advice}")


def check_deconv_memory(denoiser, y: Tensor, kernel_size: int, buffers: int, what: str) -> None:
    """Refuse, before any evaluation, a deconvolution whose memory exceeds the device's: one denoiser pass (no
    gradient) on x, y grown by K - 1, plus ``buffers`` image-sized tensors (x, z, the reset image, the conjugate
    gradients' vectors, gradients, FFT planes, snapshots)."""
    B, C = y.shape[:2]
    H, W = y.shape[-2] + kernel_size - 1, y.shape[-1] + kernel_size - 1
    peak = network_peak(denoiser, (B, C, H, W), "forward", dtype=y.dtype)
    need = memory_need(peak, buffers * B * C * H * W * y.element_size())
    check_memory(need, y.device, f"{what} of {C}x{H}x{W}", "run fewer problems per batch, or deblur a smaller image "
                 "(crop it into tiles, or downscale it)")


# ---------------------------------------------------------------------------------------------------------------
# NaN or infinity during Algorithm 1: name the quantity and the fix that fits its cause
# ---------------------------------------------------------------------------------------------------------------

_NONFINITE_HINTS = (  # (words in the quantity's name, what to do)
    ("prior gradient", "the denoiser returned NaN or infinity at sigma_g: raise sigma_g towards the prior's "
     "sigma_min, or check the network (dtype, device, weights)"),
    ("denoiser output", "the denoiser returned NaN or infinity: raise dr_sigma, or check the network"),
    ("data proximal", "the conjugate gradients diverged: lower gamma_x or raise cg_tol"),
    ("data gradient", "x diverged: lower gamma_x (default 1 / (1 + sigma^2 / sigma_g^2))"),
    ("image x", "x diverged: lower gamma_x (default 1 / (1 + sigma^2 / sigma_g^2))"),
    ("kernel gradient", "x diverged: lower gamma_x"),
    ("theta", "the kernel step diverged: lower gamma_h (constant schedule) or gamma_h_scale (lipschitz schedule)"),
)


def nonfinite_message(what: str, where: str) -> str:
    """'<what> is not finite at <where>: <the fix that fits>' for Algorithm 1's NonFiniteError."""
    hint = next((h for key, h in _NONFINITE_HINTS if key in what), "lower the step sizes (gamma_x, gamma_h)")
    return f"{what} is not finite at {where}: {hint}"


# ---------------------------------------------------------------------------------------------------------------
# Output paths: checked (and a directory created) before any computation
# ---------------------------------------------------------------------------------------------------------------


def _writable_dir(path: Path, what: str) -> bool:
    """Create ``path`` (and parents) if missing; raise a one-line ValueError if it cannot hold new files.

    Returns True when the directory was created by this call (the caller may remove it again on failure).
    """
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} exists and is not a directory: give a directory path")
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"{what} {path} cannot be created ({err.strerror or type(err).__name__}): give a path in a "
                         "writable directory") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path} is not writable: give a writable directory")
    return created


def prepare_output_dir(path, what: str = "output directory") -> list[Path]:
    """Make sure ``path`` is (or can be made) a writable directory; return the directories this call created."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()]
    _writable_dir(path, what)
    return missing


def prepare_output_file(path, what: str = "output file") -> list[Path]:
    """Make sure a file can be written at ``path`` (not a directory; its directory writable, created if missing)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory: give a file path")
    return prepare_output_dir(path.parent, f"the directory of {what}") if str(path.parent) not in ("", ".") else []


def check_table_suffix(path, what: str = "output table", formats=(".parquet", ".csv")) -> str:
    """The format of a table file, from its extension (one of ``formats``); anything else is refused rather than
    written in a format its name does not say."""
    suffix = Path(path).suffix.lower()
    if suffix not in formats:
        raise ValueError(f"{what} {path}: the extension {suffix or '(none)'!r} names no table format; use "
                         f"{' or '.join(formats)}")
    return suffix


# ---------------------------------------------------------------------------------------------------------------
# The workflow's config against its JSON schema: a few lines naming the key, never the whole schema
# ---------------------------------------------------------------------------------------------------------------


def _key(path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def config_errors(config: dict, schema: dict, limit: int = 3) -> list[str]:
    """At most ``limit`` one-line messages, one per schema violation: the key, the problem, the allowed keys."""
    import jsonschema

    cls = jsonschema.validators.validator_for(schema)
    errors = sorted(cls(schema).iter_errors(config),
                    key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))  # top-level first
    lines = []
    for err in errors[:limit]:
        path = list(err.absolute_path)
        if err.validator == "additionalProperties":
            allowed = sorted(err.schema.get("properties", {}))  # the object's own schema node ($ref resolved)
            extra = sorted(set(err.instance) - set(allowed)) if isinstance(err.instance, dict) else []
            for k in extra:
                lines.append(f"config key {_key([*path, k])}: unknown key; allowed under {_key(path)}: "
                             f"{', '.join(allowed)}")
            continue
        if err.validator == "required":
            lines.append(f"config key {_key(path)}: {err.message}")
            continue
        message = " ".join(err.message.split())
        lines.append(f"config key {_key(path)}: {message if len(message) <= 160 else message[:157] + '...'}")
    if len(errors) > limit:
        lines.append(f"... and {len(errors) - limit} more problem(s)")
    return lines
