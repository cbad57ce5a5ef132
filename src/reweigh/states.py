"""Training states read by place: how far a segment moved the weights, what differs.

A checkpoint (`weights.save_state`) is a safetensors file whose tensors are entries
`t0`, `t1`, ... and whose nesting is a JSON skeleton; here each tensor and value is
known by its place in the state (`state.model.fc1.weight`, `state.optimizer.state[0]`),
so two checkpoints are compared place by place whatever their entries are called.
`verify` uses this to measure each segment's update before replaying anything, and to
say what differed when a replay does not reproduce a checkpoint.

Tensors are read memory-mapped and compared a chunk at a time (`compare.distances`);
nothing here trains or loads a whole state. Nothing here judges either: how large an
update may be, or how much drift is allowed, is the caller's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from .compare import compare_files, distances, tensor_distances, value_drift
from .errors import WeightsError
from .weights import WeightsFile, check_state, read_header


@dataclass(frozen=True)
class Difference:
    """What differs between a replayed state and the published one."""

    tensors: int  # how many of the state's tensors differ
    of: int  # of how many
    largest: str | None  # the one that differs most, by its place in the state
    rel_l2: float  # its relative L2 distance
    max_abs: float  # its largest absolute difference
    values: tuple[str, ...] = ()  # the state's non-tensor values that differ
    unreadable: str = ""  # why the published file could not be read as a state

    def describe(self) -> str:
        if self.unreadable:
            return f"the published file cannot be compared: {self.unreadable}"
        parts = []
        if self.largest is not None:
            parts.append(f"{self.tensors} of {self.of} tensors differ, most {self.largest} "
                         f"(relative L2 {self.rel_l2:.2e}, max |difference| {self.max_abs:.2e})")
        if self.values:
            parts.append("values differ: " + ", ".join(self.values[:3])
                         + (f" and {len(self.values) - 3} more" if len(self.values) > 3 else ""))
        return "; ".join(parts) or "the files differ in their layout only"


def updates(checkpoints: list[Path], weights: WeightsFile) -> list[float]:
    """How far training moved between each checkpoint and the next: the largest relative
    L2 distance of one of the model's weight tensors (see `_weight_tensors`), infinite
    when a weight tensor appears, disappears or changes shape or type. Every checkpoint
    is checked on the way: a malformed one raises WeightsError, naming it."""
    states = [_weight_tensors(path, weights) for path in checkpoints]
    return [_update(*before, *after) for before, after in pairwise(states)]


def _update(a: WeightsFile, before: dict[_Place, str], b: WeightsFile,
            after: dict[_Place, str]) -> float:
    if before.keys() != after.keys():
        return math.inf
    largest = 0.0
    for place in before:
        ta, tb = a.tensors[before[place]], b.tensors[after[place]]
        if (ta.shape, ta.dtype) != (tb.shape, tb.dtype):
            return math.inf
        _, rel_l2, _ = distances(a.values(ta.name).reshape(-1), b.values(tb.name).reshape(-1))
        largest = max(largest, rel_l2)
    return largest


def _weight_tensors(path: Path, weights: WeightsFile) -> tuple[WeightsFile, dict[_Place, str]]:
    """The checkpoint's header, and its model weights: place in the state -> tensor entry.
    The weights are the state's tensors that sit under the name of one of the verified
    weights' tensors, with its shape and type; when none does, every float tensor."""
    header, tensors, _ = _state(path, checkpoint=True)
    named = {place: entry for place, entry in tensors.items()
             if (info := weights.tensors.get(place[-1][1])) is not None
             and (info.shape, info.dtype) == (header.tensors[entry].shape,
                                              header.tensors[entry].dtype)}
    return header, named or {place: entry for place, entry in tensors.items()
                             if header.tensors[entry].dtype.startswith(("F", "BF"))}


# A place in a training state: the dict keys and list positions that lead to it. Keys
# compare as Python's do (1, 1.0 and True are one key), as `load_state` rebuilds them.
_Place = tuple[tuple[str, Any], ...]


def _state(path: Path, checkpoint: bool = False) -> tuple[WeightsFile, dict[_Place, str],
                                                        dict[_Place, Any]]:
    """A checkpoint's (or a weights file's) header, its tensors and its other values by
    their place in the state; a weights file's tensors are each at their name. A
    skeleton is always checked first (a hostile one raises WeightsError)."""
    header = read_header(path)
    if not checkpoint and "reweigh.state" not in header.metadata:
        return header, {(("key", name),): name for name in header.tensors}, {}
    tensors: dict[_Place, str] = {}
    values: dict[_Place, Any] = {}
    for place, (kind, body) in _leaves(check_state(header), (("key", "state"),)):
        (tensors if kind == "tensor" else values)[place] = body
    return header, tensors, values


def _leaves(node: dict[str, Any], place: _Place) -> Iterator[tuple[_Place, tuple[str, Any]]]:
    """Every tensor and value of a checked skeleton, with its place, in order (a key
    given twice: the last wins, as in `load_state`)."""
    ((kind, body),) = node.items()
    if kind == "dict":
        for key, child in body:
            yield from _leaves(child, (*place, ("key", key)))
    elif kind in ("list", "tuple"):
        for i, child in enumerate(body):
            yield from _leaves(child, (*place, ("item", i)))
    else:
        yield place, (kind, body)


def _shown(place: _Place) -> str:
    return "".join(f"[{k}]" if kind == "item" else f".{k}" for kind, k in place)[1:]


def difference(replayed: Path, published: Path) -> Difference:
    """Which of the two states' tensors differ (by place), which differs most and by how
    much, and which other values differ."""
    try:
        a, ta, va = _state(replayed)
        b, tb, vb = _state(published)
    except WeightsError as e:  # the published file (ours was written by save_state)
        return Difference(0, 0, None, math.inf, math.inf, unreadable=str(e))
    places, measured = ta.keys() | tb.keys(), []
    for place in places:
        ia, ib = a.tensors.get(ta.get(place, "")), b.tensors.get(tb.get(place, ""))
        if ia is None or ib is None or (ia.shape, ia.dtype) != (ib.shape, ib.dtype):
            measured.append((math.inf, math.inf, place))
        elif (moved := tensor_distances(a, b, ia.name, ib.name)) is not None:
            max_abs, rel, _ = moved
            measured.append((rel, max_abs, place))
    missing = object()
    values = tuple(sorted(_shown(p) for p in va.keys() | vb.keys()
                          if _typed(va.get(p, missing)) != _typed(vb.get(p, missing))))
    top = max(measured, key=lambda m: (m[0], m[1]), default=None)
    if top is None:
        return Difference(0, len(places), None, 0.0, 0.0, values)
    return Difference(len(measured), len(places), _shown(top[2]), top[0], top[1], values)


def _typed(value: Any) -> tuple[type, Any]:
    """A value with its type: 1, 1.0 and True are equal in Python, not in a state."""
    return type(value), value


def drift(replayed: Path, published: Path) -> float:
    """The worst relative difference over the two states: each tensor's relative L2
    distance and each float of the JSON skeleton's; infinite when anything else differs
    (the skeleton's structure or non-float values, tensor names, shapes or types), or
    when the published checkpoint cannot be read as one."""
    try:
        a, b = read_header(replayed), read_header(published)
        if a.metadata.keys() != b.metadata.keys():
            return math.inf
        values = max((value_drift(_json(a.metadata[k]), _json(b.metadata[k]))
                      for k in a.metadata), default=0.0)
    except (WeightsError, RecursionError):  # a hostile header, or a skeleton nested too deep
        return math.inf
    diffs = compare_files(a, b)
    if any(d.status not in ("identical", "changed") for d in diffs):
        return math.inf
    return max([values, *(d.rel_l2 for d in diffs)])


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # not JSON, a 5000-digit int, deep nesting
        return text


