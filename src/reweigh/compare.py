"""Comparing two networks: per-tensor maths and the verdict (pure).

`compare_files` measures every tensor (bit-identity on the stored bytes, max
absolute difference, relative L2 distance); `decide` turns those numbers, the
behavioural evidence and the environments' relation into a verdict with its
reasons. The rule that matters most: when the published file claims the local
environment (or claims none), only bit-identity counts; a network that differs by
one bit is `different`, however small the numbers look. Tolerance applies only
across environments, and then to weights *and* behaviour together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from .recipe import Tolerance
from .weights import WeightsFile

CHUNK = 1 << 20  # elements per step: 8 MB of float64 per operand, whatever the tensor size


class Verdict(Enum):
    IDENTICAL = "identical"
    EQUIVALENT = "equivalent"
    DIFFERENT = "different"

    def meets(self, required: Verdict) -> bool:
        order = [Verdict.DIFFERENT, Verdict.EQUIVALENT, Verdict.IDENTICAL]
        return order.index(self) >= order.index(required)


class EnvRelation(Enum):
    SAME = "same"  # the published file was built on this environment
    UNKNOWN = "unknown"  # nothing says where it was built
    OTHER = "other"  # it says it was built on another environment


@dataclass(frozen=True)
class TensorDiff:
    name: str
    status: str  # identical | changed | only-in-a | only-in-b | shape-differs | dtype-differs
    shape: tuple[int, ...]
    dtype: str
    max_abs: float = 0.0
    rel_l2: float = 0.0


@dataclass(frozen=True)
class Behaviour:
    """How the two networks answer the recipe's evaluation."""

    samples: int
    agreement: float  # fraction of inputs on which both predict the same
    metric: str
    metric_a: float | None
    metric_b: float | None

    @property
    def metric_delta(self) -> float | None:
        if self.metric_a is None or self.metric_b is None:
            return None
        return self.metric_b - self.metric_a


def compare_files(a: WeightsFile, b: WeightsFile) -> list[TensorDiff]:
    """Every tensor of either file, most changed first."""
    diffs = []
    for name in sorted(a.tensors.keys() | b.tensors.keys()):
        if name not in b.tensors:
            info = a.tensors[name]
            diffs.append(TensorDiff(name, "only-in-a", info.shape, info.dtype))
        elif name not in a.tensors:
            info = b.tensors[name]
            diffs.append(TensorDiff(name, "only-in-b", info.shape, info.dtype))
        else:
            diffs.append(_compare_tensor(a, b, name))
    return sorted(diffs, key=lambda d: (d.status == "identical", -d.rel_l2, d.name))


def _compare_tensor(a: WeightsFile, b: WeightsFile, name: str) -> TensorDiff:
    ia, ib = a.tensors[name], b.tensors[name]
    if ia.shape != ib.shape:
        return TensorDiff(name, "shape-differs", ia.shape, f"{ia.shape} vs {ib.shape}")
    if ia.dtype != ib.dtype:
        return TensorDiff(name, "dtype-differs", ia.shape, f"{ia.dtype} vs {ib.dtype}")
    measured = tensor_distances(a, b, name)
    if measured is None:
        return TensorDiff(name, "identical", ia.shape, ia.dtype)
    max_abs, rel_l2, _ = measured
    return TensorDiff(name, "changed", ia.shape, ia.dtype, max_abs, rel_l2)


def tensor_distances(a: WeightsFile, b: WeightsFile,
                     name: str) -> tuple[float, float, float] | None:
    """`distances` of one tensor of the same shape and dtype in both files, or None when
    its stored bytes are equal (the cheap test, done first)."""
    if same_bytes(a.raw(name).reshape(-1).view(np.uint8), b.raw(name).reshape(-1).view(np.uint8)):
        return None
    return distances(a.values(name).reshape(-1), b.values(name).reshape(-1))


def same_bytes(x: np.ndarray, y: np.ndarray) -> bool:
    """Byte-for-byte equality a chunk at a time: stops at the first differing chunk and
    never compares (or allocates for) more than one chunk at once."""
    step = 8 * CHUNK
    return x.size == y.size and all(np.array_equal(x[i:i + step], y[i:i + step])
                                    for i in range(0, x.size, step))


def distances(va: np.ndarray, vb: np.ndarray) -> tuple[float, float, float]:
    """Max |a-b|, |a-b|/|a| and 1 - cos(a, b) in one pass, a chunk at a time.

    Chunks of float32 (and narrower) tensors are computed in float32 and summed in
    float64, at close to memory bandwidth; a chunk whose float32 squares could under-
    or overflow (root mean square below 1e-10 or above 1e15) is computed again in
    float64, so a tampered tensor of tiny values (1e-24) or huge ones (1e20) still
    gets its true distance. Cosine distance is taken from the difference itself,
    1 - cos = (|d|^2 - (|a| - |b|)^2) / (2 |a| |b|) with |a| - |b| = d.(a+b) / (|a| + |b|),
    so two nearly equal tensors get a small accurate distance, not rounding noise.
    """
    narrow = va.dtype.kind == "f" and va.dtype.itemsize <= 4
    sums = np.zeros(5)  # max |a-b|, |d|^2, |a|^2, |b|^2, d.(a+b)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        for start in range(0, va.size, CHUNK):
            ca, cb = va[start:start + CHUNK], vb[start:start + CHUNK]
            chunk = _chunk_sums(ca, cb, np.float32) if narrow else None
            if chunk is None or not _safe_in_float32(chunk, ca.size):
                chunk = _chunk_sums(ca, cb, np.float64)
            sums[0] = max(sums[0], chunk[0])
            sums[1:] += chunk[1:]
    max_abs, dd, aa, bb, ds = map(float, sums)
    if not all(map(math.isfinite, (max_abs, dd, aa, bb, ds))):
        return math.inf, math.inf, math.inf
    rel = math.sqrt(dd / aa) if aa > 0 else (math.inf if dd > 0 else 0.0)
    na, nb = math.sqrt(aa), math.sqrt(bb)
    if na == 0 or nb == 0:
        return max_abs, rel, 0.0 if na == nb else 1.0
    apart = ds / (na + nb)  # |a| - |b|
    return max_abs, rel, min(max((dd - apart * apart) / (2 * na * nb), 0.0), 2.0)


def _chunk_sums(ca: np.ndarray, cb: np.ndarray, work: type[np.floating[Any]]) -> np.ndarray:
    ca, cb = ca.astype(work, copy=False), cb.astype(work, copy=False)
    delta = ca - cb
    top = max(float(delta.max()), -float(delta.min())) if delta.size else 0.0
    if math.isnan(top):  # max and min are NaN when any element is: every distance is infinite
        top = math.inf
    return np.array([top, np.dot(delta, delta), np.dot(ca, ca), np.dot(cb, cb),
                     np.dot(delta, ca + cb)], dtype=np.float64)


def _safe_in_float32(sums: np.ndarray, count: int) -> bool:
    """Whether a chunk's float32 sums are trustworthy: finite, and of values whose
    squares (and their differences' squares) stay clear of float32's limits."""
    if not np.isfinite(sums).all():
        return False
    low, high = 1e-20 * count, 1e30 * count  # mean squares of 1e-20 .. 1e30
    return all(low <= s <= high for s in (sums[2], sums[3]))


def value_drift(a: Any, b: Any) -> float:
    """How far two JSON values of the same structure (checkpoint skeletons) are apart:
    the largest relative difference of their floats, 0 when equal, infinite when their
    structure or any non-float value differs."""
    if isinstance(a, float) and isinstance(b, float):
        if a == b:
            return 0.0
        if not (math.isfinite(a) and math.isfinite(b)):
            return math.inf
        return abs(a - b) / max(abs(a), abs(b))
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return math.inf
        return max((value_drift(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return math.inf
        return max((value_drift(x, y) for x, y in zip(a, b, strict=True)), default=0.0)
    return 0.0 if type(a) is type(b) and a == b else math.inf


def behaviour_of(predictions_a: list[int], predictions_b: list[int], metric: str,
                 metrics_a: dict[str, float], metrics_b: dict[str, float]) -> Behaviour:
    count = min(len(predictions_a), len(predictions_b))
    same = sum(1 for x, y in zip(predictions_a, predictions_b, strict=False) if x == y)
    if len(predictions_a) != len(predictions_b):
        same = 0  # the evaluations do not even cover the same inputs
    return Behaviour(count, same / count if count else 0.0, metric, metrics_a.get(metric),
                     metrics_b.get(metric))


def decide(tensors: list[TensorDiff], behaviour: Behaviour | None, tolerance: Tolerance,
           env: EnvRelation) -> tuple[Verdict, list[str]]:
    """The verdict and the reasons for it."""
    structural = [d for d in tensors if d.status not in ("identical", "changed")]
    if structural:
        names = ", ".join(f"{d.name} ({d.status})" for d in structural[:5])
        return Verdict.DIFFERENT, [f"the networks do not have the same tensors: {names}"]
    changed = [d for d in tensors if d.status == "changed"]
    if not changed:
        return Verdict.IDENTICAL, [f"all {len(tensors)} tensors are bit-identical"]
    reasons = [f"{len(changed)} of {len(tensors)} tensors differ "
               f"(largest relative L2 {changed[0].rel_l2:.3g} in {changed[0].name})"]
    if env is not EnvRelation.OTHER:
        where = "this one" if env is EnvRelation.SAME else "unknown"
        reasons.append(f"the published file's environment is {where}, so only bit-identical "
                       "weights could be equivalent")
        return Verdict.DIFFERENT, reasons
    return _within_tolerance(changed, behaviour, tolerance, reasons)


def _within_tolerance(changed: list[TensorDiff], behaviour: Behaviour | None,
                      tolerance: Tolerance, reasons: list[str]) -> tuple[Verdict, list[str]]:
    failures = []
    worst = max(d.rel_l2 for d in changed)
    if worst > tolerance.weights_rel_l2:
        failures.append(f"relative L2 {worst:.3g} exceeds the tolerance "
                        f"{tolerance.weights_rel_l2:g}")
    if behaviour is None:
        failures.append("the recipe has no evaluation, so equivalent behaviour is unproven")
    else:
        if behaviour.agreement < tolerance.agreement:
            failures.append(f"prediction agreement {behaviour.agreement:.4f} is below "
                            f"{tolerance.agreement:g}")
        delta = behaviour.metric_delta
        if delta is None or abs(delta) > tolerance.metric_delta:
            failures.append(f"{behaviour.metric} changes by {delta} (tolerance "
                            f"{tolerance.metric_delta:g})")
    if failures:
        return Verdict.DIFFERENT, reasons + failures
    return Verdict.EQUIVALENT, [*reasons, "built on another environment; weights and behaviour "
                                "are within the recipe's tolerance"]
