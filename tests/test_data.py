"""Image files and the embedded demo crops: determinism, the split by picture, sizes, ranges, no upsampling."""

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from diractrap import data
from diractrap.data import DEMO_SOURCES, demo_crops, demo_images, load_image, make_demo_crops, save_image


def _fresh_manifest(split, resolution):
    """The manifest rebuilt from the bundled pictures, bypassing the in-process caches."""
    data._demo_crops.cache_clear()
    data._downsampled.cache_clear()
    return demo_crops(split, resolution)


# ---------------------------------------------------------------------------------------------------------------
# Image files
# ---------------------------------------------------------------------------------------------------------------


def test_save_load_roundtrip(tmp_path):
    x = torch.rand(3, 9, 7, generator=torch.Generator().manual_seed(0))
    y = load_image(save_image(x, tmp_path / "a.png"))
    assert y.shape == x.shape
    assert (y - x).abs().max() <= 0.5 / 255 + 1e-6  # 8-bit rounding: half a quantisation step


# ---------------------------------------------------------------------------------------------------------------
# Demo crops
# ---------------------------------------------------------------------------------------------------------------


def test_demo_crops_deterministic(tmp_path):
    a = [c.sha256 for c in _fresh_manifest("test", 32)]
    b = [c.sha256 for c in _fresh_manifest("test", 32)]
    assert a == b and len(set(a)) > 100  # distinct crops, same hashes on a rebuild


def test_demo_images_match_manifest():
    for split in ("train", "test"):
        x, crops = demo_images(split), demo_crops(split)
        assert x.shape == (len(crops), 3, 32, 32) and x.dtype == torch.float32
        assert 0 <= x.min() and x.max() <= 1
        for i in (0, len(crops) // 2, len(crops) - 1):
            pixels = (x[i] * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
            assert hashlib.sha256(pixels.tobytes()).hexdigest() == crops[i].sha256


def test_demo_images_not_shared_with_callers():
    x = demo_images("test")
    x.zero_()
    assert demo_images("test").max() > 0  # the cache is not the caller's tensor


def test_split_by_source_picture():
    train, test = demo_crops("train"), demo_crops("test")
    src_train, src_test = {c.source for c in train}, {c.source for c in test}
    assert not src_train & src_test
    assert src_train | src_test == set(DEMO_SOURCES)  # every listed picture is used
    assert not {c.sha256 for c in train} & {c.sha256 for c in test}
    assert {"astronaut", "chelsea"} <= src_test  # faces (human and cat) are held out, as in the paper's priors
    assert all(c.split == "train" for c in train) and all(c.split == "test" for c in test)
    assert all(DEMO_SOURCES[c.source].split == c.split for c in train + test)


@pytest.mark.parametrize("resolution", [32, 48])
def test_no_upsampling_and_inside_picture(resolution):
    sizes = {name: data._load_source(name).shape[:2] for name in DEMO_SOURCES}
    for crop in demo_crops("train", resolution) + demo_crops("test", resolution):
        assert 0 < crop.scale <= 0.5  # only ever shrunk
        h, w = sizes[crop.source]
        small_h, small_w = data._downsampled(crop.source, crop.scale).shape[:2]
        assert small_h <= h * crop.scale + 0.5 and small_w <= w * crop.scale + 0.5  # the shrunk picture is smaller
        assert 0 <= crop.top and crop.top + crop.size <= small_h
        assert 0 <= crop.left and crop.left + crop.size <= small_w
        assert crop.size == resolution


def test_test_crops_disjoint():
    # test crops of one picture at one scale never overlap (stride = crop size)
    crops = demo_crops("test")
    by_key = {}
    for c in crops:
        by_key.setdefault((c.source, c.scale), []).append((c.top, c.left))
    for positions in by_key.values():
        for i, (t1, l1) in enumerate(positions):
            for t2, l2 in positions[i + 1 :]:
                assert abs(t1 - t2) >= 32 or abs(l1 - l2) >= 32


def test_make_demo_crops_files(tmp_path):
    m1 = json.loads(make_demo_crops(tmp_path / "a", splits=("test",), progress=False).read_text())
    m2 = json.loads(make_demo_crops(tmp_path / "b", splits=("test",), progress=False).read_text())
    assert [c["sha256"] for c in m1["crops"]] == [c["sha256"] for c in m2["crops"]]
    assert {s["name"] for s in m1["sources"]} == set(DEMO_SOURCES) and all(s["licence"] for s in m1["sources"])
    x = demo_images("test")
    for i in (0, 7, len(m1["crops"]) - 1):
        rec = m1["crops"][i]
        pixels = np.array(Image.open(tmp_path / "a" / rec["file"]))
        assert pixels.shape == (32, 32, 3)
        assert hashlib.sha256(pixels.tobytes()).hexdigest() == rec["sha256"]  # PNG is lossless
        assert torch.equal(torch.from_numpy(pixels).permute(2, 0, 1).float() / 255, x[i])


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        demo_images("validation")
    with pytest.raises(ValueError, match="downsampled"):
        data._downsampled("astronaut", 2.0)
