"""Comparing two networks: per-tensor maths and the verdict (pure).

`compare_files` measures every tensor (bit-identity on the stored bytes, max
absolute difference, relative L2 distance); `compare_whole` adds the rest of the
file, the metadata and how the header is written, so that a verdict is about the
whole file; `decide` turns those, the behavioural evidence and the environments'
relation into a verdict with its reasons. The rules that matter most: `identical`
means the same bytes; when the published file claims the local environment (or
claims none), anything else is `different`, however small the numbers look.
Tolerance applies only across environments, and then to weights *and* behaviour
together; metadata that differs is never within tolerance, as no environment
explains it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from .numerics import EnvRelation
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


class Change(Enum):
    ONLY_IN_A = "only-in-a"
    ONLY_IN_B = "only-in-b"
    CHANGED = "changed"


@dataclass(frozen=True)
class MetadataDiff:
    """One `__metadata__` key whose value is not the same in both files."""

    key: str
    change: Change
    size_a: int  # characters of its value in A, 0 where A lacks it
    size_b: int

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "change": self.change.value, "size_a": self.size_a,
                "size_b": self.size_b}


@dataclass(frozen=True)
class FileComparison:
    """Two safetensors files compared as wholes. The strict reader makes a file exactly
    its header and its tensors' bytes, so equal tensors, metadata and header text are
    equal bytes."""

    tensors: tuple[TensorDiff, ...]
    metadata: tuple[MetadataDiff, ...]
    layout: tuple[str, ...]  # how headers that say the same are written differently

    @property
    def same_bytes(self) -> bool:
        return (not self.metadata and not self.layout
                and all(t.status == "identical" for t in self.tensors))


def compare_whole(a: WeightsFile, b: WeightsFile) -> FileComparison:
    """The tensors, the metadata and, where those agree on what the header says, how
    each header is written."""
    return FileComparison(tuple(compare_files(a, b)), metadata_differences(a, b),
                          layout_differences(a, b))


def metadata_differences(a: WeightsFile, b: WeightsFile) -> tuple[MetadataDiff, ...]:
    """Every metadata key that one file lacks or whose value differs, by key."""
    found: list[MetadataDiff] = []
    for key in sorted(a.metadata.keys() | b.metadata.keys()):
        va, vb = a.metadata.get(key), b.metadata.get(key)
        if va != vb:
            change = (Change.ONLY_IN_B if va is None else Change.ONLY_IN_A if vb is None
                      else Change.CHANGED)
            found.append(MetadataDiff(key, change, len(va or ""), len(vb or "")))
    return tuple(found)


_SPACE_OR_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|[ \t\n\r]+')
_SPACE = " \t\n\r"  # JSON's whitespace


def layout_differences(a: WeightsFile, b: WeightsFile) -> tuple[str, ...]:
    """How two headers that say the same thing (the same tensors, dtypes, shapes and
    metadata) are written differently; () when their text is the same, or when they do
    not say the same thing (then that is the difference to report). Nothing a reader
    sees, but bytes a publisher chose: the order of the tensors' data, of the keys,
    the whitespace, the padding, how strings are escaped."""
    if a.header == b.header or _entries(a) != _entries(b) or a.metadata != b.metadata:
        return ()
    found: list[str] = []
    if _data_order(a) != _data_order(b):
        found.append("the order of the tensors' data")
    keys_a, keys_b = _key_orders(a.header), _key_orders(b.header)
    if ("__metadata__" in keys_a[""]) != ("__metadata__" in keys_b[""]):
        found.append("an empty __metadata__ written in one header, left out of the other")
        for keys in (keys_a, keys_b):
            keys[""] = tuple(k for k in keys[""] if k != "__metadata__")
    if keys_a != keys_b:
        found.append("the order of keys")
    (spaces_a, padding_a), (spaces_b, padding_b) = _spaces(a.header), _spaces(b.header)
    if spaces_a != spaces_b:
        found.append("whitespace inside the JSON")
    if padding_a != padding_b:
        found.append(f"the padding after the JSON ({len(padding_a)} and {len(padding_b)} "
                     "bytes)")
    return tuple(found) or ("how the same values are written (string escapes, or null for "
                            "an empty __metadata__)",)


def _entries(file: WeightsFile) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {name: (info.dtype, info.shape) for name, info in file.tensors.items()}


def _data_order(file: WeightsFile) -> list[str]:
    return [info.name for info in sorted(file.tensors.values(),
                                         key=lambda i: (i.start, i.end, i.name))]


class _Pairs(list[tuple[str, Any]]):
    """A JSON object's (key, value) pairs, in the order written."""


def _key_orders(text: str) -> dict[str, tuple[str, ...]]:
    """The top level's keys in written order (under ""), and each non-empty object's
    keys under its own key: a tensor entry's fields, the metadata's keys."""
    top = json.loads(text, object_pairs_hook=_Pairs)
    orders = {"": tuple(key for key, _ in top)}
    orders.update({key: tuple(k for k, _ in value) for key, value in top
                   if isinstance(value, _Pairs) and value})
    return orders


def _spaces(text: str) -> tuple[list[tuple[int, str]], str]:
    """The whitespace inside the JSON (each run with the count of other characters
    before it) and the padding after it."""
    body = text.rstrip(_SPACE)
    runs: list[tuple[int, str]] = []
    spaces = 0  # whitespace characters met so far
    for token in _SPACE_OR_STRING.finditer(body):
        if token.group()[0] != '"':
            runs.append((token.start() - spaces, token.group()))
            spaces += len(token.group())
    return runs, text[len(body):]


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


def tensor_distances(a: WeightsFile, b: WeightsFile, name: str,
                     name_b: str | None = None) -> tuple[float, float, float] | None:
    """`distances` of a tensor of the same shape and dtype in both files (called `name` in
    A and `name_b`, by default the same, in B), or None when its stored bytes are equal
    (the cheap test, done first)."""
    name_b = name if name_b is None else name_b
    if same_bytes(a.raw(name).reshape(-1).view(np.uint8),
                  b.raw(name_b).reshape(-1).view(np.uint8)):
        return None
    return distances(a.values(name).reshape(-1), b.values(name_b).reshape(-1))


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


def decide(compared: FileComparison, behaviour: Behaviour | None, tolerance: Tolerance,
           env: EnvRelation) -> tuple[Verdict, list[str]]:
    """The verdict and the reasons for it (A the rebuild, B the published file)."""
    tensors = compared.tensors
    structural = [d for d in tensors if d.status not in ("identical", "changed")]
    if structural:
        names = ", ".join(f"{d.name} ({d.status})" for d in structural[:5])
        return Verdict.DIFFERENT, [f"the networks do not have the same tensors: {names}"]
    if compared.same_bytes:
        return Verdict.IDENTICAL, [f"the same bytes: all {len(tensors)} tensors are "
                                   "bit-identical, and so are the metadata and the header"]
    changed = [d for d in tensors if d.status == "changed"]
    reasons = [f"{len(changed)} of {len(tensors)} tensors differ (largest relative L2 "
               f"{changed[0].rel_l2:.3g} in {changed[0].name})" if changed
               else f"all {len(tensors)} tensors are bit-identical"]
    reasons += _file_reasons(compared)
    if compared.metadata:
        return Verdict.DIFFERENT, [*reasons, "no environment explains different metadata"]
    if env is not EnvRelation.OTHER:
        where = "this one" if env is EnvRelation.SAME else "unknown"
        reasons.append(f"the published file's environment is {where}, so only the same "
                       "bytes as the rebuild could pass")
        return Verdict.DIFFERENT, reasons
    if not changed:  # another safetensors may write the same header differently
        return Verdict.EQUIVALENT, [*reasons, "built on another environment; the tensors "
                                    "and metadata are the same, only the header's layout is not"]
    return _within_tolerance(changed, behaviour, tolerance, reasons)


def _file_reasons(compared: FileComparison) -> list[str]:
    """What differs in the file beyond its tensors, in words."""
    reasons: list[str] = []
    if compared.metadata:
        reasons.append(metadata_summary(compared.metadata, "the rebuild", "the published file"))
    if compared.layout:
        reasons.append(f"the header is written differently: {'; '.join(compared.layout)}")
    return reasons


def metadata_summary(diffs: tuple[MetadataDiff, ...], a: str, b: str) -> str:
    """One line naming the metadata keys that differ (the first five), A and B named."""
    def one(diff: MetadataDiff) -> str:
        key = repr(diff.key) if len(diff.key) <= 40 else repr(diff.key[:40]) + "..."
        if diff.change is Change.ONLY_IN_A:
            return f"{key} only in {a}"
        if diff.change is Change.ONLY_IN_B:
            return f"{key} only in {b} ({diff.size_b} characters)"
        return f"{key} changed ({diff.size_a} -> {diff.size_b} characters)"

    more = f" and {len(diffs) - 5} more" if len(diffs) > 5 else ""
    return (f"the metadata differs in {len(diffs)} key{'s' * (len(diffs) != 1)}: "
            + ", ".join(one(d) for d in diffs[:5]) + more)


def _within_tolerance(changed: list[TensorDiff], behaviour: Behaviour | None,
                      tolerance: Tolerance, reasons: list[str]) -> tuple[Verdict, list[str]]:
    failures = []
    worst = max(d.rel_l2 for d in changed)
    if not worst <= tolerance.weights_rel_l2:  # NaN fails too
        failures.append(f"relative L2 {worst:.3g} exceeds the tolerance "
                        f"{tolerance.weights_rel_l2:g}")
    if behaviour is None:
        failures.append("the recipe has no evaluation, so equivalent behaviour is unproven")
    else:
        if not behaviour.agreement >= tolerance.agreement:
            failures.append(f"prediction agreement {behaviour.agreement:.4f} is below "
                            f"{tolerance.agreement:g}")
        delta = behaviour.metric_delta
        if delta is None or not abs(delta) <= tolerance.metric_delta:
            failures.append(f"{behaviour.metric} changes by {delta} (tolerance "
                            f"{tolerance.metric_delta:g})")
    if failures:
        return Verdict.DIFFERENT, reasons + failures
    return Verdict.EQUIVALENT, [*reasons, "built on another environment; weights and behaviour "
                                "are within the recipe's tolerance"]
