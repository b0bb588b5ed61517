"""Compare two workflow output trees (results/ and figures/ of two runs) number by number.

A refactor must not change what `make demo` computes. Run the demo before and after, keep a copy of the first
tree, and compare:

    python benchmarks/compare_outputs.py /tmp/before /path/to/after            # prints a table, exit 1 on a diff
    python benchmarks/compare_outputs.py A B --ignore denoiser --ignore provenance   # fields that moved

Tables (.csv, .parquet) are compared column by column: numbers exactly (the largest absolute difference is
reported when they differ), everything else as text; columns present on one side only are listed. Arrays (.npz)
and JSON are compared exactly, leaf by leaf (a JSON string stored in an .npz as well). Figures: PNGs pixel by pixel; PDFs byte by byte once their creation
date is removed. Logs are skipped. Strings that contain the tree's own root path are compared with that root
replaced (a record of where a file was read from is not a result).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

SKIP_PARTS = {"logs", ".snakemake"}


def files(root: Path) -> dict[str, Path]:
    """Relative path -> file, for results/ and figures/ under ``root`` (logs skipped)."""
    out = {}
    for top in ("results", "figures"):
        for p in sorted((root / top).rglob("*")):
            if p.is_file() and not SKIP_PARTS & set(p.relative_to(root).parts) and p.name != "README.md":
                out[str(p.relative_to(root))] = p
    return out


def _text(value, root: Path) -> str:
    """A value as text with machine-specific roots removed: the tree's own root and any absolute path into a
    source checkout (``.../src/diractrap/...`` becomes ``<src>/diractrap/...``)."""
    s = re.sub(r"/[^\s\"']*?/src/diractrap/", "<src>/diractrap/", str(value))
    return s.replace(str(root), "<root>")


def compare_leaves(a, b, ra: Path, rb: Path, where: str, diffs: list[str], ignore=frozenset()) -> None:
    """Recursive exact comparison of JSON-like values (keys in ``ignore`` skipped); differences go to ``diffs``."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted((set(a) | set(b)) - set(ignore)):
            if k not in a or k not in b:
                diffs.append(f"{where}.{k}: only in {'A' if k in a else 'B'}")
            else:
                compare_leaves(a[k], b[k], ra, rb, f"{where}.{k}", diffs, ignore)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            diffs.append(f"{where}: length {len(a)} vs {len(b)}")
        for i, (u, v) in enumerate(zip(a, b)):
            compare_leaves(u, v, ra, rb, f"{where}[{i}]", diffs, ignore)
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if not (a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))):
            diffs.append(f"{where}: {a!r} vs {b!r}")
    elif isinstance(a, str) and isinstance(b, str):
        if _text(a, ra) != _text(b, rb):
            diffs.append(f"{where}: {a[:60]!r} vs {b[:60]!r}")
    elif a != b:
        diffs.append(f"{where}: {a!r} vs {b!r}")


def compare_tables(a: pd.DataFrame, b: pd.DataFrame, ra: Path, rb: Path, ignore: set[str]) -> list[str]:
    diffs = []
    ca, cb = set(a.columns) - ignore, set(b.columns) - ignore
    if ca - cb:
        diffs.append(f"columns only in A: {sorted(ca - cb)}")
    if cb - ca:
        diffs.append(f"columns only in B: {sorted(cb - ca)}")
    if len(a) != len(b):
        return diffs + [f"{len(a)} rows vs {len(b)}"]
    for c in [c for c in a.columns if c in ca & cb]:
        u, v = a[c], b[c]
        if pd.api.types.is_numeric_dtype(u) and pd.api.types.is_numeric_dtype(v) and u.dtype != bool:
            x, y = u.to_numpy(dtype=float), v.to_numpy(dtype=float)
            same = (x == y) | (np.isnan(x) & np.isnan(y))
            if not same.all():
                gap = np.nanmax(np.abs(x - y)[~same]) if np.isfinite(x[~same] - y[~same]).any() else math.nan
                diffs.append(f"{c}: {int((~same).sum())} of {len(x)} differ, max |diff| {gap:.3g}")
        else:
            tu = [_text(t, ra) for t in u.astype(str)]
            tv = [_text(t, rb) for t in v.astype(str)]
            n = sum(p != q for p, q in zip(tu, tv))
            if n:
                diffs.append(f"{c}: {n} of {len(tu)} differ (text)")
    return diffs


def compare_file(pa: Path, pb: Path, ra: Path, rb: Path, ignore: set[str]) -> list[str]:
    suffix = pa.suffix
    if suffix == ".csv":
        return compare_tables(pd.read_csv(pa), pd.read_csv(pb), ra, rb, ignore)
    if suffix == ".parquet":
        return compare_tables(pd.read_parquet(pa), pd.read_parquet(pb), ra, rb, ignore)
    if suffix == ".npz":
        diffs = []
        with np.load(pa, allow_pickle=False) as za, np.load(pb, allow_pickle=False) as zb:
            for k in sorted(set(za.files) | set(zb.files)):
                if k not in za.files or k not in zb.files:
                    diffs.append(f"{k}: only in {'A' if k in za.files else 'B'}")
                    continue
                x, y = za[k], zb[k]
                if x.dtype.kind in "US" and y.dtype.kind in "US" and x.shape == y.shape == ():  # a JSON record
                    try:
                        compare_leaves(json.loads(str(x)), json.loads(str(y)), ra, rb, k, diffs, ignore)
                    except json.JSONDecodeError:
                        if _text(x, ra) != _text(y, rb):
                            diffs.append(f"{k}: text differs")
                elif x.shape != y.shape or x.dtype != y.dtype:
                    diffs.append(f"{k}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}")
                elif x.dtype.kind in "fc":
                    same = (x == y) | (np.isnan(x) & np.isnan(y))
                    if not same.all():
                        diffs.append(f"{k}: {int((~same).sum())} of {x.size} differ, "
                                     f"max |diff| {float(np.abs(x - y)[~same].max()):.3g}")
                elif x.dtype.kind in "US":
                    if [_text(t, ra) for t in x.ravel()] != [_text(t, rb) for t in y.ravel()]:
                        diffs.append(f"{k}: text differs")
                elif not np.array_equal(x, y):
                    diffs.append(f"{k}: differs")
        return diffs
    if suffix == ".json":
        diffs: list[str] = []
        compare_leaves(json.loads(pa.read_text()), json.loads(pb.read_text()), ra, rb, "$", diffs, ignore)
        return diffs
    if suffix == ".png":
        from PIL import Image

        x, y = np.asarray(Image.open(pa)), np.asarray(Image.open(pb))
        if x.shape != y.shape:
            return [f"image size {x.shape} vs {y.shape}"]
        n = int((x != y).any(axis=-1).sum()) if x.ndim == 3 else int((x != y).sum())
        return [f"{n} pixels differ"] if n else []
    if suffix == ".pdf":
        strip = re.compile(rb"/CreationDate \([^)]*\)|/ModDate \([^)]*\)")
        return [] if strip.sub(b"", pa.read_bytes()) == strip.sub(b"", pb.read_bytes()) else ["bytes differ"]
    return [] if pa.read_bytes() == pb.read_bytes() else ["bytes differ"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path, help="the reference tree (holds results/ and figures/)")
    ap.add_argument("b", type=Path, help="the tree to compare with it")
    ap.add_argument("--ignore", action="append", default=[],
                    help="a table column or JSON key not to compare (repeat): provenance fields a change moved")
    args = ap.parse_args(argv)
    fa, fb = files(args.a), files(args.b)
    if not fa:
        ap.error(f"{args.a} has no results/ or figures/ files")
    bad = 0
    for rel in sorted(set(fa) | set(fb)):
        if rel not in fa or rel not in fb:
            print(f"ONLY IN {'A' if rel in fa else 'B'}  {rel}")
            bad += 1
            continue
        diffs = compare_file(fa[rel], fb[rel], args.a.resolve(), args.b.resolve(), set(args.ignore))
        print(f"{'same ' if not diffs else 'DIFF '} {rel}")
        for d in diffs[:12]:
            print(f"        {d}")
        bad += bool(diffs)
    print(f"{len(set(fa) | set(fb))} files, {bad} differ")
    return int(bad > 0)


if __name__ == "__main__":
    sys.exit(main())
