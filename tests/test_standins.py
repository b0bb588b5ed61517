"""The full-size stand-ins (tests/standins.py) are what they claim: the real formats, every name and shape of the
original networks, readable by the project's loaders, and a module source that refuses to run."""

import json
import pickle

import numpy as np
import pytest
import torch

from conftest import GOLDEN
from diractrap import datasets
from diractrap.models import REGISTRY, load_denoiser

pytestmark = pytest.mark.slow  # generating the set once takes ~40 s and 2.7 GB (then cached)


@pytest.fixture(scope="module")
def standins():
    manifests = json.loads((GOLDEN / "fullsize_manifests.json").read_text())
    from standins import make_standins

    return make_standins(), manifests


def _path(standins, model):
    manifest, _ = standins
    from pathlib import Path

    return Path(manifest["root"]) / "checkpoints" / manifest["checkpoints"][model]["file"]


def test_score_sde_checkpoint_layout(standins):
    ckpt = torch.load(_path(standins, "ffhq256"), map_location="cpu", weights_only=True)
    entry = standins[1]["ncsnpp_ffhq256"]
    assert set(ckpt) == {"optimizer", "model", "ema", "step"}
    assert [(k, list(v.shape)) for k, v in ckpt["model"].items()] == \
        [("module." + e["key"], e["shape"]) for e in entry["manifest"]]
    assert ckpt["model"]["module.sigmas"].dtype == torch.float64
    shadow = ckpt["ema"]["shadow_params"]
    trainable = [e for e in entry["manifest"] if e["key"] not in ("sigmas", "all_modules.0.W")]
    assert [list(s.shape) for s in shadow] == [e["shape"] for e in trainable]  # the Fourier W is not trainable
    assert sum(s.numel() for s in shadow) + 128 == entry["n_params"]
    assert len(ckpt["optimizer"]["state"]) == len(shadow) and ckpt["optimizer"]["param_groups"][0]["params"]
    assert not torch.equal(shadow[0], ckpt["model"]["module." + trainable[0]["key"]])  # EMA differs from the weights


class _SourceReader(pickle.Unpickler):
    """Reads the persistence records' module_src (and nothing else of interest); tensors as torch reads them."""

    sources: list

    def find_class(self, module, name):
        if (module, name) == ("torch_utils.persistence", "_reconstruct_persistent_obj"):
            return lambda meta: self.sources.append(meta["module_src"]) or meta["class_name"]
        return super().find_class(module, name)


def test_edm_snapshots_load_and_carry_a_source_that_refuses_to_run(standins):
    reader = _SourceReader(open(_path(standins, "ffhq64"), "rb"))
    reader.sources = []
    top = reader.load()
    assert set(top) == {"ema", "loss_fn", "augment_pipe", "dataset_kwargs"} and top["ema"] == "EDMPrecond"
    src = reader.sources[0]
    assert len(src) > 20_000 and set(reader.sources) == {src}  # one module text, of realistic size, on every record
    with pytest.raises(RuntimeError, match="must never run it"):
        exec(compile(src, "module_src", "exec"), {})

    ddpmpp = load_denoiser(_path(standins, "ffhq64"))  # the restricted unpickler: the source is never executed
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        D = ddpmpp(x, torch.tensor([0.002, 10.0]))
    assert torch.isfinite(D).all()

    adm = load_denoiser(_path(standins, "imagenet64"))
    assert adm.label_dim == 1000 and adm.use_fp16 is True and next(adm.parameters()).dtype == torch.float32
    with torch.no_grad():
        assert torch.isfinite(adm(x, torch.tensor([0.5, 0.5]), torch.tensor([3, 999]))).all()
        with pytest.raises(ValueError, match="class-conditional"):
            adm(x, torch.tensor([0.5, 0.5]))


def test_shards_have_the_hub_schema_for_every_paper_set(standins):
    manifest, _ = standins
    from pathlib import Path

    root = Path(manifest["root"])
    for name, d in datasets.DATASETS.items():
        shards = [root / manifest["shards"][n]["path"] for n in datasets.plan_shards(name, 2)]
        s = datasets.paper_image_set(name, count=2, shard_files=shards)
        assert s.images.shape == (2, d.resolution, d.resolution, 3) and s.images.dtype == np.uint8
        assert ((s.labels >= 0) & (s.labels < 1000)).all() if d.labels else (s.labels == -1).all()
    assert REGISTRY["ffhq256"].filename == manifest["checkpoints"]["ffhq256"]["file"]
