"""Weight space: which layers were touched, and how much (pure, memory-mapped).

Where `compare` answers "bit-identical or not" for a verdict, this module ranks
the tensors of two networks of one architecture by how far they moved: maximum
absolute difference, relative L2 distance and cosine distance, all computed in
one streaming pass over memory-mapped safetensors, a chunk at a time, so two
files larger than memory compare at close to disk or memory bandwidth (the maths is
`compare.distances`, which challenge and verify use too).

A layer is *flagged* when it moved further than the recipe's own tolerance for a
rebuild on another environment (`evaluate.tolerance.weights_rel_l2`): drift that
small is what honest numerics can explain, anything beyond it was changed. Two
files of different architectures are bad input, not a finding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..compare import tensor_distances
from ..errors import UsageError
from ..weights import WeightsFile


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
    return sorted(diffs, key=lambda d: (-d.rel_l2, -d.max_abs, d.name))


def _layer(a: WeightsFile, b: WeightsFile, name: str, threshold: float) -> LayerDiff:
    info = a.tensors[name]
    measured = tensor_distances(a, b, name)
    if measured is None:
        return LayerDiff(name, info.shape, info.dtype, True, 0.0, 0.0, 0.0, False)
    max_abs, rel_l2, cosine = measured
    return LayerDiff(name, info.shape, info.dtype, False, max_abs, rel_l2, cosine,
                     rel_l2 > threshold)  # a NaN move is infinite (compare.distances)


def _finite(value: float) -> float | str:
    """JSON has no inf: say it in words."""
    return value if math.isfinite(value) else "inf"
