"""Full-size stand-ins for the paper's downloads: the four checkpoints in their real formats with random weights, and
one parquet shard per dataset with the hub's schema. Faithful in everything but the values; generated, cached,
never committed.

    python tests/standins.py [--out DIR]       # generate (or reuse) the set; prints where it is and its hashes

What is written (the names are the registry's and diractrap.datasets.SHARDS', so the real download code finds them):
- ``checkpoints/ffhq_256_ncsnpp_continuous_checkpoint_48.pth``: score_sde's run_lib layout, ``torch.save`` of
  ``{optimizer, model, ema, step}``: ``model`` the NCSN++ FFHQ-256 state dict with the DataParallel prefix
  ``module.`` (the float64 ``sigmas`` buffer included), ``ema`` = ``{decay, num_updates, shadow_params}`` with the
  shadow parameters in the order of the trainable parameters (the Fourier weights ``all_modules.0.W`` are not
  trainable: not in the list), ``optimizer`` Adam's state dict (two moments per trainable parameter). ~1.05 GB.
- ``checkpoints/edm-{ffhq,afhqv2}-64x64-uncond-vp.pkl`` (DDPM++, ~0.25 GB each) and
  ``checkpoints/edm-imagenet-64x64-cond-adm.pkl`` (ADM, 1000 classes, ``use_fp16=True``, ~1.2 GB): EDM snapshot
  pickles ``dict(ema, loss_fn, augment_pipe, dataset_kwargs)`` whose objects are ``torch_utils.persistence``
  records ``{type, version, module_src, class_name, state}``, tensors pickled as torch pickles them (storages
  through ``torch.storage._load_from_bytes``), ``torch.nn.ModuleDict`` for the encoder and decoder, numpy scalars.
  ``module_src`` is a source text of realistic size written here (not EDM's code) that raises if executed: a loader
  that runs it fails loudly.
- ``hub/datasets/<repo>/resolve/<revision>/<file>``: every file of each split (FFHQ 256 x 256: 15 files, AFHQv2
  512 x 512 with labels: 13, ImageNet 64 x 64 with labels: 5), ``image`` = struct ``{bytes (PNG), path}``, 8 rows
  per file, row groups of 4, labels in class order over the split (as the class-sorted mirrors store them). The
  pictures are the photographs bundled with scikit-image (no download), cropped and resized.
- ``manifest.json`` (last, atomically): size and sha256 of every file. Its presence marks a complete set.

Every parameter name and shape comes from tests/fixtures/golden/fullsize_manifests.json (the original codes' full-size
networks) and is checked against our architectures before anything is written. Values: N(0, 1/fan_in) weights,
small biases, unit norm scales, the exact resample filters and sigma table: the networks give finite, O(1) outputs.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from conftest import GOLDEN, ROOT  # tests/ is on sys.path here: under pytest, as a script, and in benchmarks/

sys.path.insert(0, str(ROOT / "src"))

from diractrap.data import atomic_path  # noqa: E402
from diractrap.datasets import SHARDS, SPLITS, split_shards  # noqa: E402
from diractrap.models import REGISTRY  # noqa: E402

VERSION = 1  # bump when the generated files change: the cache directory is per version
MANIFESTS = GOLDEN / "fullsize_manifests.json"
CACHE_ENV = "DIRACTRAP_STANDINS"  # where the set is cached (default ~/.cache/diractrap/standins-v<VERSION>)
ROWS = 8  # rows per dataset shard


def default_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "diractrap" / f"standins-v{VERSION}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Random values for a manifest entry (key, shape): finite O(1) networks
# ---------------------------------------------------------------------------------------------------------------


def _value(key: str, shape, gen: torch.Generator) -> torch.Tensor:
    shape = tuple(shape)
    if key.endswith("resample_filter"):  # EDM's [1, 1] resampling filter, normalised (the value EDM stores)
        return torch.full(shape, 1.0 / (shape[-1] * shape[-2]))
    if key == "sigmas":  # score_sde's VE table: geometric from sigma_max 348 down to sigma_min 0.01, float64
        return torch.exp(torch.linspace(math.log(348.0), math.log(0.01), shape[0], dtype=torch.float64))
    if key.endswith("all_modules.0.W"):  # Gaussian Fourier projection, scale 16 (fourier_scale of the config)
        return 16.0 * torch.randn(shape, generator=gen)
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        return torch.randn(shape, generator=gen) / math.sqrt(fan_in)
    if key.endswith("bias"):
        return 0.01 * torch.randn(shape, generator=gen)
    return 1.0 + 0.01 * torch.randn(shape, generator=gen)  # norm scales (GroupNorm weight, ...)


def _manifest(name: str) -> dict:
    if not MANIFESTS.is_file():
        raise FileNotFoundError(f"{MANIFESTS} is missing: the stand-ins take every name and shape from it "
                                "(it is committed: restore it with git checkout)")
    return json.loads(MANIFESTS.read_text())[name]


# ---------------------------------------------------------------------------------------------------------------
# score_sde: checkpoint_48.pth
# ---------------------------------------------------------------------------------------------------------------


def write_score_sde(path: Path, *, seed: int = 0) -> None:
    from diractrap.models.ncsnpp import build_ncsnpp

    entry = _manifest("ncsnpp_ffhq256")
    net = build_ncsnpp(device="meta")  # FFHQ-256 defaults: the keys, shapes and trainable flags to match
    ours = [(k, list(v.shape)) for k, v in net.state_dict().items()]
    if ours != [(e["key"], e["shape"]) for e in entry["manifest"]]:
        raise RuntimeError("our NCSN++ no longer matches fullsize_manifests.json: fix the architecture first")
    gen = torch.Generator().manual_seed(seed)
    state = OrderedDict((e["key"], _value(e["key"], e["shape"], gen)) for e in entry["manifest"])
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    # the EMA differs from the raw weights (as in a real run), so loading the wrong set would be visible
    shadow = [state[n] + 0.01 * torch.randn(state[n].shape, generator=gen) for n in trainable]
    adam = {i: {"step": torch.tensor(2_400_000.0), "exp_avg": 1e-4 * torch.randn(state[n].shape, generator=gen),
                "exp_avg_sq": 1e-8 * torch.rand(state[n].shape, generator=gen)} for i, n in enumerate(trainable)}
    ckpt = {
        "optimizer": {"state": adam, "param_groups": [{"lr": 2e-4, "betas": (0.9, 0.999), "eps": 1e-8,
                                                       "weight_decay": 0, "amsgrad": False,
                                                       "params": list(range(len(trainable)))}]},
        "model": OrderedDict(("module." + k, v) for k, v in state.items()),
        "ema": {"decay": 0.999, "num_updates": 2_400_000, "shadow_params": shadow},
        "step": 2_400_000,
    }
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


# ---------------------------------------------------------------------------------------------------------------
# EDM: snapshot pickles of torch_utils.persistence records
# ---------------------------------------------------------------------------------------------------------------


def _reconstruct_persistent_obj(meta):  # pickled by name only; never called here
    raise RuntimeError("stand-in writer: persistence records are written, not read, by this module")


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"


@contextlib.contextmanager
def _persistence_module():
    """Make ``torch_utils.persistence._reconstruct_persistent_obj`` resolvable while pickling (pickle checks that a
    global it writes can be imported back); removed afterwards."""
    pkg, mod = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")
    mod._reconstruct_persistent_obj = _reconstruct_persistent_obj
    pkg.persistence = mod
    saved = {k: sys.modules.get(k) for k in (pkg.__name__, mod.__name__)}
    sys.modules.update({pkg.__name__: pkg, mod.__name__: mod})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


class _Record:
    """Pickles as EDM's persistence does: ``_reconstruct_persistent_obj(dict(type, version, module_src, ...))``."""

    def __init__(self, class_name: str, state: dict, module_src: str):
        self.meta = dict(type="class", version=6, module_src=module_src, class_name=class_name, state=state)

    def __reduce__(self):
        return _reconstruct_persistent_obj, (self.meta,)


def _module_state(**extra) -> dict:
    """The attribute dict of an nn.Module in eval mode with no hooks (what pickling a module stores)."""
    state = {"training": False, "_parameters": {}, "_buffers": {}, "_non_persistent_buffers_set": set()}
    for hooks in ("_backward_pre_hooks", "_backward_hooks", "_forward_hooks", "_forward_hooks_with_kwargs",
                  "_forward_hooks_always_called", "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs",
                  "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
                  "_load_state_dict_post_hooks"):
        state[hooks] = OrderedDict()
    state["_is_full_backward_hook"] = None
    state["_modules"] = {}
    state.update(extra)
    return state


def _plain_attributes(module) -> dict:
    """Scalar attributes of one of our modules (channels, heads, flags), as the original objects carry theirs."""
    out = {}
    for k, v in vars(module).items():
        if k.startswith("_") or k == "training" or not isinstance(v, (int, float, bool, str, type(None))):
            continue
        out[k] = np.float64(v) if k == "skip_scale" else v  # EDM computes skip_scale with numpy: a numpy scalar
    return out


def _record_tree(module, tensors: dict, prefix: str, src: str, top_kwargs: dict | None = None):
    """Our module tree as persistence records (ModuleDict stays a real torch.nn.ModuleDict), tensors from
    ``tensors`` by state-dict key."""
    children = {name: _record_tree(child, tensors, f"{prefix}{name}.", src) for name, child in module.named_children()}
    if isinstance(module, torch.nn.ModuleDict):
        md = torch.nn.ModuleDict()
        md.__dict__["_modules"] = children
        return md
    params = {n: torch.nn.Parameter(tensors[prefix + n], requires_grad=False)
              for n, _ in module.named_parameters(recurse=False)}
    buffers = {n: tensors[prefix + n] for n, _ in module.named_buffers(recurse=False) if prefix + n in tensors}
    state = _module_state(_parameters=params, _buffers=buffers, _modules=children, **_plain_attributes(module),
                          _init_args=(), _init_kwargs=dict(top_kwargs or {}))
    return _Record(type(module).__name__, state, src)


def _module_src(classes: list[str]) -> str:
    """A module source text of the size real snapshots carry (EDM's networks.py is ~30 kB), that refuses to run."""
    lines = ['"""Stand-in for the module source an EDM snapshot carries (torch_utils.persistence stores the defining',
             "module's text). Written by diractrap's tests/standins.py: not NVlabs/edm code, and never to be run.\"\"\"",
             "raise RuntimeError('diractrap stand-in module source was executed: the loader must never run it')", ""]
    for i in range(400):
        lines.append(f"# record classes in this snapshot: {', '.join(sorted(set(classes)))} ({i})")
    return "\n".join(lines) + "\n"


def write_edm_snapshot(path: Path, manifest_name: str, *, seed: int, use_fp16: bool, dataset: str,
                       augment: bool) -> None:
    from diractrap.models.edm import EDMPrecond

    entry = _manifest(manifest_name)
    kwargs = dict(entry["init_kwargs"], use_fp16=use_fp16)
    with torch.device("meta"):
        net = EDMPrecond(**kwargs)
    ours = [(k, list(v.shape)) for k, v in net.state_dict().items()]
    if ours != [("model." + e["key"], e["shape"]) for e in entry["manifest"]]:
        raise RuntimeError(f"our EDMPrecond no longer matches fullsize_manifests.json[{manifest_name!r}]")
    gen = torch.Generator().manual_seed(seed)
    tensors = {"model." + e["key"]: _value(e["key"], e["shape"], gen) for e in entry["manifest"]}
    src = _module_src([type(m).__name__ for m in net.modules()] + ["EDMLoss", "AugmentPipe"])
    precond_keys = ("img_resolution", "img_channels", "label_dim", "use_fp16", "model_type")
    unet_kwargs = {k: v for k, v in kwargs.items() if k not in precond_keys}
    unet_kwargs.update(img_resolution=kwargs["img_resolution"], in_channels=kwargs["img_channels"],
                       out_channels=kwargs["img_channels"], label_dim=kwargs["label_dim"])
    unet = _record_tree(net.model, tensors, "model.", src, unet_kwargs)
    ema = _Record("EDMPrecond", _module_state(
        _modules={"model": unet}, img_resolution=kwargs["img_resolution"], img_channels=kwargs["img_channels"],
        label_dim=kwargs["label_dim"], use_fp16=use_fp16, sigma_min=0, sigma_max=float("inf"), sigma_data=0.5,
        _init_args=(), _init_kwargs=kwargs), src)
    loss_fn = _Record("EDMLoss", {"P_mean": -1.2, "P_std": 1.2, "sigma_data": 0.5, "_init_args": (),
                                  "_init_kwargs": {}}, src)
    augment_pipe = _Record("AugmentPipe", _module_state(p=0.12, xflip=1e8, yflip=1, scale=1, rotate_frac=1,
                                                        aniso=1, translate_frac=1, _init_args=(),
                                                        _init_kwargs={"p": 0.12}), src) if augment else None
    snapshot = dict(ema=ema, loss_fn=loss_fn, augment_pipe=augment_pipe, dataset_kwargs=dict(
        class_name="training.dataset.ImageFolderDataset", path=f"datasets/{dataset}.zip",
        use_labels=kwargs["label_dim"] > 0, xflip=False, cache=True, resolution=kwargs["img_resolution"],
        max_size=None))
    with _persistence_module(), atomic_path(path) as tmp, open(tmp, "wb") as f:
        pickle.dump(snapshot, f, protocol=4)


# ---------------------------------------------------------------------------------------------------------------
# Dataset shards: the hub's parquet schema, pictures from scikit-image
# ---------------------------------------------------------------------------------------------------------------


def _pictures(resolution: int) -> list[np.ndarray]:
    """ROWS square RGB uint8 pictures at ``resolution`` from the photographs bundled with scikit-image."""
    from PIL import Image
    from skimage import data

    sources = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.astronaut()[::-1],
               data.chelsea()[:, ::-1], data.coffee()[:, ::-1], data.rocket()[:, ::-1]]
    out = []
    for a in sources[:ROWS]:
        c = min(a.shape[:2])
        top, left = (a.shape[0] - c) // 2, (a.shape[1] - c) // 2
        sq = Image.fromarray(np.ascontiguousarray(a[top:top + c, left:left + c]))
        out.append(np.asarray(sq.resize((resolution, resolution), Image.LANCZOS)))
    return out


def write_shard(path: Path, resolution: int, labels=None, first_row: int = 0) -> None:
    """ROWS rows of pictures; ``labels`` (ROWS,) ints or None (an unlabelled split)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    cells = []
    pictures = _pictures(resolution)
    shift = first_row // ROWS % ROWS  # each file starts on another picture: images drawn from several files differ
    for i, a in enumerate(pictures[shift:] + pictures[:shift]):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        cells.append({"bytes": buf.getvalue(), "path": f"{first_row + i:05d}.png"})
    columns = {"image": cells}
    if labels is not None:
        columns["label"] = np.asarray(labels, dtype=np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(columns), tmp, row_group_size=4)


SPLIT_RESOLUTIONS = {"ffhq256": 256, "afhqv2": 512, "imagenet64": 64}


def split_labels(split: str) -> np.ndarray | None:
    """Labels of a stand-in split's rows in class order, as the class-sorted mirrors store them, from class 0 to the
    last (the first and last classes always present); None for an unlabelled split."""
    s = SPLITS[split]
    if not s.classes:
        return None
    return np.linspace(0, s.classes - 1, ROWS * len(s.files)).round().astype(np.int64)


def shard_relpath(name: str) -> str:
    s = SHARDS[name]
    return f"hub/datasets/{s.repo_id}/resolve/{s.revision}/{s.filename}"


# ---------------------------------------------------------------------------------------------------------------
# The whole set, cached
# ---------------------------------------------------------------------------------------------------------------


def make_standins(out=None, *, log=print) -> dict:
    """Generate the stand-ins under ``out`` (default: the cache) unless a complete set is there; return its
    manifest ``{"root", "checkpoints": {model: {file, sha256, size}}, "shards": {name: {path, sha256, size}}}``."""
    out = Path(out or default_dir())
    out.mkdir(parents=True, exist_ok=True)
    manifest_file = out / "manifest.json"
    import fcntl

    with open(out / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one generator at a time (parallel test sessions share the cache)
        if manifest_file.is_file():
            manifest = json.loads(manifest_file.read_text())
            files = [out / "checkpoints" / c["file"] for c in manifest["checkpoints"].values()]
            files += [out / s["path"] for s in manifest["shards"].values()]
            if all(f.is_file() for f in files) and set(manifest["shards"]) == set(SHARDS):
                return dict(manifest, root=str(out))
        jobs = {
            "ffhq256": lambda p: write_score_sde(p, seed=1),
            "ffhq64": lambda p: write_edm_snapshot(p, "edm_ffhq64_afhq64_vp", seed=2, use_fp16=False,
                                                   dataset="ffhq-64x64", augment=True),
            "afhq64": lambda p: write_edm_snapshot(p, "edm_ffhq64_afhq64_vp", seed=3, use_fp16=False,
                                                  dataset="afhqv2-64x64", augment=True),
            "imagenet64": lambda p: write_edm_snapshot(p, "edm_imagenet64_adm", seed=4, use_fp16=True,
                                                      dataset="imagenet-64x64", augment=False),
        }
        checkpoints = {}
        for model, write in jobs.items():
            path = out / "checkpoints" / REGISTRY[model].filename
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.is_file():
                log(f"writing stand-in {path} ...")
                write(path)
            checkpoints[model] = dict(file=path.name, sha256=_sha256(path), size=path.stat().st_size)
        shards = {}
        for split, resolution in SPLIT_RESOLUTIONS.items():
            labels = split_labels(split)
            for i, name in enumerate(split_shards(split)):
                path = out / shard_relpath(name)
                if not path.is_file():
                    write_shard(path, resolution, None if labels is None else labels[i * ROWS : (i + 1) * ROWS],
                                first_row=i * ROWS)
                shards[name] = dict(path=shard_relpath(name), sha256=_sha256(path), size=path.stat().st_size)
        manifest = dict(version=VERSION, checkpoints=checkpoints, shards=shards)
        with atomic_path(manifest_file) as tmp:
            tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    return dict(manifest, root=str(out))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help=f"directory (default ${CACHE_ENV} or ~/.cache/...)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    manifest = make_standins(args.out)
    print(json.dumps(manifest, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
