"""Reading and writing weights: safetensors only, never pickle.

Files that come from elsewhere (a published file to challenge) are parsed here
with a strict reader: the header is validated field by field before any byte of
tensor data is touched, and the data is memory-mapped, so comparing two large
files costs little more than reading them once.

The reader is at least as strict as safetensors' own loader (Rust, serde): a file that
loader refuses is refused here too (a test feeds both the same mutated files), because a
file that reweigh judges and the recipe's code cannot load, or loads differently, would
make every verdict about it meaningless. It is stricter where the format leaves room to
hide bytes: no key twice, no field a tensor entry does not have. It does not judge the
metadata's contents; `compare` says when two files' metadata or header layout differ.
"""

from __future__ import annotations

import itertools
import json
import re
import struct
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

from .digest import python_sorted_json
from .errors import WeightsError

MAX_HEADER = 100_000_000  # bytes: safetensors' own limit (MAX_HEADER_SIZE)
USIZE_MAX = 2**64 - 1  # safetensors counts elements and bits in 64-bit sizes
INTP_MAX = 2**63 - 1  # numpy's largest array, in bytes
ENTRY_FIELDS = frozenset({"dtype", "shape", "data_offsets"})
_SURROGATE = re.compile("[\ud800-\udfff]")
# safetensors dtype -> numpy's (as a string: reading a header needs no numpy, so the
# command line starts faster) and its size in bytes.
DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("<f8", 8), "F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2),
    "I64": ("<i8", 8), "I32": ("<i4", 4), "I16": ("<i2", 2), "I8": ("i1", 1),
    "U64": ("<u8", 8), "U32": ("<u4", 4), "U16": ("<u2", 2), "U8": ("u1", 1),
    "BOOL": ("?", 1), "F8_E4M3": ("u1", 1), "F8_E5M2": ("u1", 1),
}
NUMPY_DTYPES = frozenset(DTYPES) - {"BF16", "F8_E4M3", "F8_E5M2"}  # numpy has the rest


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int


@dataclass(frozen=True)
class WeightsFile:
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    header: str = field(default="", repr=False, compare=False)  # the JSON text, as written

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as stored, memory-mapped (for bit-exact comparison)."""
        import numpy as np

        info = self.tensors[name]
        data = np.memmap(self.path, dtype=np.uint8, mode="r", offset=info.start,
                         shape=(info.end - info.start,)) if info.end > info.start \
            else np.zeros(0, np.uint8)
        return data.view(np.dtype(DTYPES[info.dtype][0])).reshape(info.shape)

    def values(self, name: str) -> np.ndarray:
        """The tensor as numbers numpy can do arithmetic on (bf16 widened to f32)."""
        import numpy as np

        info = self.tensors[name]
        raw = self.raw(name)
        if info.dtype == "BF16":
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return raw


def read_header(path: Path) -> WeightsFile:
    """Validate a safetensors file's header; raise WeightsError naming file and field."""
    label = str(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise WeightsError(f"{label}: not a safetensors file (shorter than 8 bytes)")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER:
                raise WeightsError(f"{label}: header: declared length {length} is over the "
                                   f"format's limit of {MAX_HEADER} bytes")
            if 8 + length > size:
                raise WeightsError(f"{label}: header: declared length {length} does not fit "
                                   "the file")
            raw_header = handle.read(length)
    except OSError as e:
        raise WeightsError(f"{label}: cannot read: {e.strerror}") from e
    return parse_header(path, raw_header, size)


def parse_header(path: Path, raw_header: bytes, size: int) -> WeightsFile:
    """A header's bytes (those after its 8-byte length), checked as `read_header` checks
    them, for a file of `size` bytes that `path` names: a checkpoint the builder reads
    from a pipe is checked the same way as a file on disk."""
    label = str(path)
    length = len(raw_header)
    try:
        text = raw_header.decode("utf-8")
        header = json.loads(text, object_pairs_hook=_checked_object, parse_int=_json_int,
                            parse_constant=_not_json)
    except (ValueError, RecursionError) as e:  # bad UTF-8 or JSON, a 5000-digit int, deep nesting
        raise WeightsError(f"{label}: header: not valid JSON ({e})") from e
    if not isinstance(header, dict):
        raise WeightsError(f"{label}: header: not a JSON object")
    return _parse_header(path, header, text, 8 + length, size)


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object (an `object_pairs_hook` for any file from elsewhere), refused with
    ValueError when a key repeats: a reader that kept the first and one that kept the
    last would read two different files."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"the key {key!r} appears twice")
        seen[key] = value
    return seen


def _checked_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A header's JSON object: its keys unique, and no string holding a lone surrogate
    (`\\ud800`: UTF-8 cannot encode it, so no other reader, safetensors' included, takes
    it for a name)."""
    for key, value in pairs:
        for text in (key, value):
            if isinstance(text, str) and (bad := _SURROGATE.search(text)):
                raise ValueError(f"the string {text[:40]!r} holds a lone surrogate "
                                 f"{bad.group()!r}, which UTF-8 cannot encode")
    return unique_keys(pairs)


def _json_int(text: str) -> int | float:
    """An integer literal. One with a sign is never a size: safetensors' loader refuses
    even `-0`, which Python would read as 0, so it is read as a float, which no field
    of the header accepts (and is refused there, naming the field)."""
    return float(text) if text.startswith("-") else int(text)


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def _parse_header(path: Path, header: dict[str, Any], text: str, base: int,
                  size: int) -> WeightsFile:
    label = str(path)
    metadata = header.pop("__metadata__", None)
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise WeightsError(f"{label}: __metadata__: must map strings to strings")
    tensors = {}
    spans = []
    for name, entry in header.items():
        info = _tensor_info(label, name, entry, base)
        if info.end > size:
            raise WeightsError(f"{label}: {name}: data_offsets run past the end of the file")
        tensors[name] = info
        spans.append((info.start, info.end, name))
    spans.sort()
    for (_, end, first), (start, _, second) in itertools.pairwise(spans):
        if start < end:
            raise WeightsError(f"{label}: {second}: data overlaps tensor {first}")
        if start > end:
            raise WeightsError(f"{label}: {second}: a gap of {start - end} bytes before its "
                               "data; the tensors must cover the data area exactly")
    # As the format requires: every byte after the header belongs to a tensor, so a file
    # is its header and its tensors' bytes, nothing more (`compare` relies on this).
    first_start, last_end = (spans[0][0], spans[-1][1]) if spans else (base, base)
    if first_start != base or last_end != size:
        raise WeightsError(f"{label}: data: {first_start - base} bytes before the first "
                           f"tensor and {size - last_end} after the last; the tensors must "
                           "cover the data area exactly")
    return WeightsFile(path, tensors, dict(metadata), text)


def _tensor_info(label: str, name: str, entry: Any, base: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise WeightsError(f"{label}: {name}: not a tensor entry")
    if unknown := sorted(entry.keys() - ENTRY_FIELDS):
        raise WeightsError(f"{label}: {name}: unknown field {unknown[0]!r}; a tensor entry "
                           "holds dtype, shape and data_offsets only")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise WeightsError(f"{label}: {name}: dtype: unsupported {dtype!r}")
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in shape):
        raise WeightsError(f"{label}: {name}: shape: must be a list of non-negative integers "
                           "(written without a sign or a fraction)")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise WeightsError(f"{label}: {name}: data_offsets: must be [start, end], integers "
                           "written without a sign or a fraction, 0 <= start <= end")
    expected = _size(label, name, shape, dtype)
    if offsets[1] - offsets[0] != expected:
        raise WeightsError(f"{label}: {name}: data_offsets: span {offsets[1] - offsets[0]} "
                           f"bytes, but shape {shape} of {dtype} needs {expected}")
    return TensorInfo(name, dtype, tuple(shape), base + offsets[0], base + offsets[1])


def _size(label: str, name: str, shape: list[int], dtype: str) -> int:
    """The tensor's size in bytes, refused where a reader cannot count it: safetensors'
    loader multiplies the shape out in 64-bit sizes and refuses an overflow, even past a
    zero ([2**39, 2**39, 0] holds nothing, yet is refused); numpy refuses a shape whose
    non-zero dimensions would span more than 2**63 bytes, even beside a zero."""
    itemsize = DTYPES[dtype][1]
    count, nonzero = 1, itemsize
    for dim in shape:
        count *= dim
        nonzero *= dim or 1
        if count * itemsize * 8 > USIZE_MAX or nonzero > INTP_MAX:
            raise WeightsError(f"{label}: {name}: shape: {shape} of {dtype} is more than a "
                               "64-bit size can count")
    return count * itemsize


def save_tensors(tensors: Mapping[str, Any], path: Path,
                 metadata: Mapping[str, str] | None = None) -> None:
    """Write torch tensors or numpy arrays as one safetensors file. numpy arrays alone are
    written without torch (the same bytes), so that a numpy recipe never loads it."""
    import numpy as np

    if all(isinstance(value, np.ndarray) and value.dtype.isnative
           and value.dtype.kind in "biufc" for value in tensors.values()):
        from safetensors.numpy import save_file as save_arrays

        arrays = {name: np.ascontiguousarray(value) for name, value in tensors.items()}
        save_arrays(arrays, str(path), metadata=dict(metadata or {}))
        return
    from safetensors.torch import save_file

    save_file(_as_torch(tensors), str(path), metadata=dict(metadata or {}))


def _as_torch(tensors: Mapping[str, Any]) -> dict[str, Any]:
    """Torch tensors or numpy arrays as contiguous CPU tensors (no copy of one that is)."""
    import numpy as np
    import torch

    converted = {}
    for name, value in tensors.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value).copy())
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"weights: {name} is a {type(value).__name__}, not a tensor")
        converted[name] = value.detach().cpu().contiguous()
    return converted


def save_state(state: Mapping[str, Any], path: Path) -> None:
    """Write a nested training state as safetensors (the bytes `state_bytes` lays out).
    It is not hashed here: in a build the runtime sends it down a pipe to the builder
    instead (`state_bytes.checkpoint`), which reads it once, for its digest and chunks.

    Tensors and arrays become entries named `t0`, `t1`, ... in the order met; the
    nesting (dicts with any scalar keys, lists, tuples, numbers, strings) is kept as
    a JSON skeleton in the metadata, so `load_state` rebuilds exactly what was saved
    (an optimizer's integer-keyed state included) without pickle.
    """
    from .state_bytes import save

    save(state_layout(state), path)


def state_layout(state: Mapping[str, Any]) -> Any:
    """The checkpoint file of a training state (`state_bytes.Layout`), not yet written:
    its header and its tensors' bytes, viewed in place."""
    from .state_bytes import layout

    tensors: dict[str, Any] = {}
    skeleton = _skeleton(state, tensors, "state")
    # Not canonical_json: the skeleton must read back its exact Python types (RFC 8785
    # writes 1.0 as 1 and refuses ints past 2**53), and these bytes are what checkpoints
    # of earlier builds were written with, so their digests still replay.
    return layout(_checkpointable(tensors),
                  {"reweigh.state": python_sorted_json(skeleton).decode()})


def _checkpointable(tensors: Mapping[str, Any]) -> dict[str, Any]:
    """A state's tensors as `state_bytes.layout` takes them: numpy arrays C-contiguous
    (the shape and bytes `torch.from_numpy` of one gave, without loading torch), torch
    tensors as `_as_torch` makes them."""
    import numpy as np

    arrays = {name: np.ascontiguousarray(value) for name, value in tensors.items()
              if isinstance(value, np.ndarray)}
    rest = {name: value for name, value in tensors.items() if name not in arrays}
    converted = _as_torch(rest) if rest else {}
    return {name: arrays[name] if name in arrays else converted[name] for name in tensors}


# What `load_state` gives tensors back as: safetensors' framework names
FRAMEWORKS = ("pt", "numpy")


def load_state(path: Path, framework: str = "pt") -> Any:
    """The nested state `save_state` wrote: torch tensors where tensors were, or numpy
    arrays with framework "numpy" (WeightsError for a dtype numpy has not: bf16, fp8)."""
    from safetensors import safe_open

    header = read_header(path)
    skeleton = check_state(header)
    if framework == "numpy" and (odd := _not_numpys(header)):
        raise WeightsError(f"{path}: holds {', '.join(odd)} tensors, which numpy cannot "
                           "hold; resume them as torch tensors")
    with safe_open(str(path), framework="np" if framework == "numpy" else "pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    return _rebuild(skeleton, tensors)


def _not_numpys(header: WeightsFile) -> list[str]:
    return sorted({t.dtype for t in header.tensors.values()} - NUMPY_DTYPES)


def check_state(header: WeightsFile) -> Any:
    """A checkpoint's skeleton, checked without loading a tensor: given its checked header
    (`read_header`), a `reweigh.state` whose every node is one that `save_state` writes
    and whose tensors exist. Raises WeightsError naming the file and the node."""
    path = header.path
    text = header.metadata.get("reweigh.state")
    if text is None:
        raise WeightsError(f"{path}: __metadata__: no reweigh.state; not a checkpoint")
    try:
        skeleton = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise WeightsError(f"{path}: reweigh.state: not valid JSON ({e})") from e
    _check_node(skeleton, header.tensors.keys(), str(path), "state", 0)
    return skeleton


def _skeleton(value: Any, tensors: dict[str, Any], where: str) -> Any:
    import numpy as np

    torch = sys.modules.get("torch")  # loaded wherever a torch tensor exists
    if isinstance(value, np.ndarray) or (torch is not None and isinstance(value, torch.Tensor)):
        name = f"t{len(tensors)}"
        tensors[name] = value
        return {"tensor": name}
    if isinstance(value, Mapping):
        return {"dict": [[_key(k, where), _skeleton(v, tensors, f"{where}.{k}")]
                         for k, v in value.items()]}
    if isinstance(value, list | tuple):
        kind = "list" if isinstance(value, list) else "tuple"
        return {kind: [_skeleton(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]}
    if value is None or isinstance(value, bool | int | float | str):
        return {"value": value}
    raise TypeError(f"checkpoint: {where} is a {type(value).__name__}; "
                    "give tensors, arrays, numbers, strings, lists or dicts")


def _key(key: Any, where: str) -> Any:
    if key is None or isinstance(key, bool | int | float | str):
        return key
    raise TypeError(f"checkpoint: {where} has a key of type {type(key).__name__}")


MAX_STATE_DEPTH = 64  # save_state's nesting is that of a training state: a few levels


def _rebuild(node: dict[str, Any], tensors: dict[str, Any]) -> Any:
    """The value a skeleton node (checked by `check_state`) stands for."""
    (kind, body), = node.items()
    if kind == "tensor":
        return tensors[body]
    if kind == "dict":
        return {key: _rebuild(value, tensors) for key, value in body}
    if kind in ("list", "tuple"):
        items = [_rebuild(value, tensors) for value in body]
        return items if kind == "list" else tuple(items)
    return body


def _check_node(node: Any, names: Iterable[str], label: str, where: str, depth: int) -> None:
    """Refuse, naming where it is, a node `save_state` cannot have written."""
    problem, children = _node_problem(node, names, depth)
    if problem:
        raise WeightsError(f"{label}: reweigh.state: {where}: {problem}")
    for place, child in children:
        _check_node(child, names, label, f"{where}{place}", depth + 1)


def _node_problem(node: Any, names: Iterable[str],
                  depth: int) -> tuple[str | None, list[tuple[str, Any]]]:
    """What is wrong with one node (or None), and its children with their places."""
    if depth > MAX_STATE_DEPTH:
        return f"nested deeper than {MAX_STATE_DEPTH} levels", []
    if not isinstance(node, dict) or len(node) != 1:
        return "not a node (an object with one key)", []
    (kind, body), = node.items()
    match kind:
        case "tensor":
            ok = isinstance(body, str) and body in names
            return (None if ok else f"no tensor {body!r} in the file"), []
        case "dict":
            if not isinstance(body, list) or not all(
                    isinstance(pair, list) and len(pair) == 2
                    and not isinstance(pair[0], list | dict) for pair in body):
                return "a malformed dict node", []
            return None, [(f".{key}", value) for key, value in body]
        case "list" | "tuple":
            if not isinstance(body, list):
                return f"a malformed {kind} node", []
            return None, [(f"[{i}]", value) for i, value in enumerate(body)]
        case "value":
            ok = body is None or isinstance(body, bool | int | float | str)
            return (None if ok else "a malformed value node"), []
    return f"unknown node kind {kind!r}", []


def sniff_format(path: Path) -> str:
    """"safetensors" or "pytorch" (a zip archive or a pickle, to be loaded weights-only);
    anything else is bad input. Reads only the header and the first bytes."""
    try:
        read_header(path)
        return "safetensors"
    except WeightsError as not_safetensors:
        with open(path, "rb") as handle:
            magic = handle.read(4)
        if magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80":
            return "pytorch"
        raise WeightsError(f"{path}: neither a safetensors file nor a PyTorch file "
                           f"({not_safetensors.message})") from not_safetensors
