"""Weight space: which layers were touched, and how much (pure, memory-mapped).

Where `compare` answers "bit-identical or not" for a verdict, this module ranks
the tensors of two networks of one architecture by how far they moved: maximum
absolute difference, relative L2 distance and cosine distance, all computed in
one streaming pass over memory-mapped safetensors, a chunk at a time, so two
files larger than memory compare at close to disk or memory bandwidth.

A layer is *flagged* when it moved further than the recipe's own tolerance for a
rebuild on another environment (`evaluate.tolerance.weights_rel_l2`): drift that
small is what honest numerics can explain, anything beyond it was changed. Two
files of different architectures are bad input, not a finding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UsageError
from ..weights import WeightsFile

CHUNK = 1 << 20  # elements per step: 8 MB of float64 per operand, whatever the tensor size


@dataclass(frozen=True)
class LayerDiff:
    name: str
    shape: tuple[int, ...]
    dtype: str
    identical: bool  # the stored bytes are equal
    max_abs: float
    rel_l2: float  # |a - b| / |a|
    cosine_distance: float  # 1 - cos(a, b); 0 for parallel tensors
    flagged: bool

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "identical": self.identical, "max_abs": _finite(self.max_abs),
                "rel_l2": _finite(self.rel_l2),
                "cosine_distance": _finite(self.cosine_distance), "flagged": self.flagged}


def same_architecture(a: WeightsFile, b: WeightsFile) -> None:
    """Refuse two files whose tensors differ in name, shape or dtype (one line, exit 2)."""
    for name in sorted(a.tensors.keys() ^ b.tensors.keys()):
        has, lacks = (a, b) if name in a.tensors else (b, a)
        raise UsageError(f"{lacks.path}: {name}: missing (the other file, {has.path}, has it); "
                         "diff compares networks of one architecture")
    for name in sorted(a.tensors):
        ia, ib = a.tensors[name], b.tensors[name]
        if ia.shape != ib.shape or ia.dtype != ib.dtype:
            raise UsageError(f"{b.path}: {name}: {ib.dtype} {list(ib.shape)} where {a.path} has "
                             f"{ia.dtype} {list(ia.shape)}; diff compares networks of one "
                             "architecture")


def layer_diffs(a: WeightsFile, b: WeightsFile, threshold: float) -> list[LayerDiff]:
    """Every tensor, the most moved first; `threshold` is the relative L2 that flags."""
    same_architecture(a, b)
    diffs = [_layer(a, b, name, threshold) for name in sorted(a.tensors)]
    return sorted(diffs, key=lambda d: (-_rank(d.rel_l2), -_rank(d.max_abs), d.name))


def _layer(a: WeightsFile, b: WeightsFile, name: str, threshold: float) -> LayerDiff:
    info = a.tensors[name]
    if same_bytes(a.raw(name).reshape(-1).view(np.uint8), b.raw(name).reshape(-1).view(np.uint8)):
        return LayerDiff(name, info.shape, info.dtype, True, 0.0, 0.0, 0.0, False)
    max_abs, rel_l2, cosine = distances(a.values(name).reshape(-1), b.values(name).reshape(-1))
    return LayerDiff(name, info.shape, info.dtype, False, max_abs, rel_l2, cosine,
                     not rel_l2 <= threshold)  # NaN moves count as moved


def same_bytes(x: np.ndarray, y: np.ndarray) -> bool:
    """Byte-for-byte equality a chunk at a time: stops at the first differing chunk and
    never compares (or allocates for) more than one chunk at once."""
    step = 8 * CHUNK
    return x.size == y.size and all(np.array_equal(x[i:i + step], y[i:i + step])
                                    for i in range(0, x.size, step))


def distances(va: np.ndarray, vb: np.ndarray) -> tuple[float, float, float]:
    """Max |a-b|, |a-b|/|a| and 1 - cos(a, b) in one pass, a chunk at a time.

    Chunks are computed in float32 (float64 for float64 and integer tensors) and summed
    in float64. Cosine distance is taken from the difference itself,
    1 - cos = (|d|^2 - (|a| - |b|)^2) / (2 |a| |b|) with |a| - |b| = d.(a+b) / (|a| + |b|),
    so two nearly equal tensors get a small accurate distance, not rounding noise.
    """
    work: np.dtype[np.floating[Any]] = np.dtype(
        np.float32 if va.dtype.kind == "f" and va.dtype.itemsize <= 4 else np.float64)
    max_abs, dd, aa, bb, ds = 0.0, 0.0, 0.0, 0.0, 0.0
    for start in range(0, va.size, CHUNK):
        ca = va[start:start + CHUNK].astype(work, copy=False)
        cb = vb[start:start + CHUNK].astype(work, copy=False)
        delta = ca - cb
        if delta.size:
            max_abs = max(max_abs, float(delta.max()), -float(delta.min()))
        dd += float(np.dot(delta, delta))
        aa += float(np.dot(ca, ca))
        bb += float(np.dot(cb, cb))
        ds += float(np.dot(delta, ca + cb))
    if not all(map(math.isfinite, (max_abs, dd, aa, bb, ds))):
        return math.inf, math.inf, math.inf
    rel = math.sqrt(dd / aa) if aa > 0 else (math.inf if dd > 0 else 0.0)
    na, nb = math.sqrt(aa), math.sqrt(bb)
    if na == 0 or nb == 0:
        return max_abs, rel, 0.0 if na == nb else 1.0
    apart = ds / (na + nb)  # |a| - |b|
    return max_abs, rel, min(max((dd - apart * apart) / (2 * na * nb), 0.0), 2.0)


def _rank(value: float) -> float:
    return math.inf if math.isnan(value) else value


def _finite(value: float) -> float | str:
    """JSON has no inf: say it in words."""
    return value if math.isfinite(value) else "inf"
