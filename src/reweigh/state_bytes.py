"""A training state as the bytes of one safetensors file, written by reweigh itself.

A checkpoint's digest is the SHA-256 of its file, and a verifier recomputes it from the
file its replay writes, so the bytes must not depend on how they were written. Until
now safetensors' `save_file` wrote them; but it writes to a path only (a temporary file
renamed into place), and a build must be able to send a 3 GB checkpoint down a pipe to
the builder, which hashes it and keeps its pieces without the bytes ever touching a
file the training could still change (`store_checkpoints.Keeper`). So the bytes are laid
out here, exactly as safetensors lays them out (a test checks them against its own
writer on fuzzed states), and written straight from the tensors' memory, without a copy:

    8 bytes   the header's length N, little-endian
    N bytes   the header: compact JSON, `__metadata__` first, then each tensor's dtype,
              shape and data_offsets, padded with spaces to a multiple of 8
    the data  each tensor's bytes, ordered by dtype (safetensors' order, largest first)
              and then by name, with no gap

In a build, the builder hands the training process the write end of a pipe (its number
in REWEIGH_CHECKPOINT_FD) and each checkpoint goes down it as a frame: `RWCK`, the step
and the file's size (little-endian 64-bit each), then the file's bytes. Without one (a
verifier's replay, which must leave files to compare), a checkpoint is written to its
path, whole or not at all.

What it does not do: choose what a state holds (`weights._skeleton`), read one back
(`weights.load_state`), or read the frames (`keeper`).
"""

from __future__ import annotations

import itertools
import json
import os
import struct
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# torch's (and numpy's) dtype name -> safetensors' name, for every dtype `weights.DTYPES`
# reads back
NAMES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8",
    "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8", "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}
# safetensors' Dtype enum, in its declared order: tensors are written largest first
RANK = {name: i for i, name in enumerate(
    ("BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32",
     "F32", "F64", "I64", "U64"))}
ALIGN = 8  # the header is padded to a multiple of this
FRAME = struct.Struct("<4sQQ")  # a checkpoint sent down the pipe: magic, step, size
MAGIC = b"RWCK"
ENV = "REWEIGH_CHECKPOINT_FD"


@dataclass(frozen=True)
class Layout:
    """A state's file: its header (the first 8 + N bytes) and its tensors' bytes in file
    order, each a view of the tensor's own memory."""

    header: bytes
    data: tuple[memoryview, ...]

    @property
    def size(self) -> int:
        return len(self.header) + sum(len(d) for d in self.data)

    def chunks(self) -> Iterator[memoryview]:
        yield memoryview(self.header)
        yield from self.data


def layout(tensors: Mapping[str, Any], metadata: Mapping[str, str] | None) -> Layout:
    """The file safetensors' `save_file(tensors, path, metadata)` writes, as pieces.
    `tensors` are torch tensors (on the CPU, contiguous) or C-contiguous numpy arrays,
    as `weights.state_layout` makes them: arrays alone never load torch. TypeError for a
    dtype a checkpoint cannot hold, ValueError when two tensors share memory (safetensors
    refuses those too). Arrays that share memory are written twice, as they always were
    (each was once copied into a tensor of its own)."""
    entries = []
    for name, tensor in tensors.items():
        dtype = _dtype(name, tensor)
        entries.append((-RANK[dtype], name.encode("utf-8"), name, dtype, tensor))
    entries.sort(key=lambda e: (e[0], e[1]))
    _refuse_shared([(e[2], e[4]) for e in entries if not _is_array(e[4])])
    header: dict[str, Any] = {} if metadata is None else {"__metadata__": dict(metadata)}
    views, at = [], 0
    for _, _, name, dtype, tensor in entries:
        view = _bytes_of(tensor)
        header[name] = {"dtype": dtype, "shape": list(tensor.shape),
                        "data_offsets": [at, at + len(view)]}
        views.append(view)
        at += len(view)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % ALIGN)
    return Layout(struct.pack("<Q", len(text)) + text, tuple(views))


def _is_array(tensor: Any) -> bool:
    import numpy as np

    return isinstance(tensor, np.ndarray)


def _dtype(name: str, tensor: Any) -> str:
    """safetensors' name for the tensor's dtype; TypeError where a checkpoint has none."""
    if _is_array(tensor):
        kind = tensor.dtype
        native = kind.kind in "biuf" and kind.isnative  # not a byte-swapped float
        dtype = NAMES.get(kind.name) if native else None
    else:
        torch = sys.modules.get("torch")  # a torch tensor exists only once torch is loaded
        if torch is None or not isinstance(tensor, torch.Tensor) or (
                tensor.layout != torch.strided):
            raise TypeError(f"checkpoint: {name} is not a dense tensor")
        kind = tensor.dtype
        dtype = NAMES.get(str(kind).removeprefix("torch."))
    if dtype is None:
        raise TypeError(f"checkpoint: {name} has dtype {kind}, which a checkpoint cannot "
                        "hold")
    return dtype


def write(state: Layout, sink: Callable[[memoryview], Any]) -> int:
    """Hand every byte of the file to `sink` in order (the header, then each tensor's
    bytes in blocks of at most 64 MiB); the bytes written."""
    block = 64 << 20
    for chunk in state.chunks():
        for start in range(0, len(chunk), block):
            sink(chunk[start:start + block])
    return state.size


def _bytes_of(tensor: Any) -> memoryview:
    """A contiguous CPU tensor's or array's bytes, without a copy."""
    if _is_array(tensor):
        return memoryview(tensor).cast("B") if tensor.size else memoryview(b"")
    import torch

    if tensor.numel() == 0:
        return memoryview(b"")
    flat = tensor.reshape(-1)
    raw = flat if flat.dtype == torch.uint8 else flat.view(torch.uint8)
    return memoryview(raw.numpy()).cast("B")


def _refuse_shared(named: list[tuple[str, Any]]) -> None:
    """Two tensors whose memory overlaps would be written twice and read back as two
    (safetensors refuses them: `save_model` is its answer); so is a checkpoint here."""
    spans = sorted((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size(), name)
                   for name, t in named if t.numel())
    for (_, end, first), (start, _, second) in itertools.pairwise(spans):
        if start < end:
            raise ValueError(f"checkpoint: {first} and {second} share memory; give each "
                             "tensor once (a tied weight under one name)")


def checkpoint(state: Mapping[str, Any], path: Path, step: int) -> None:
    """The runtime's one way to record a checkpoint: down the builder's pipe when there
    is one, else to `path`."""
    from .weights import state_layout

    laid = state_layout(state)
    fd = _pipe()
    if fd is None:
        save(laid, path)
        return
    _write_all(fd, memoryview(FRAME.pack(MAGIC, step, laid.size)))
    write(laid, lambda view: _write_all(fd, view))


def save(state: Layout, path: Path) -> None:
    """Write the file at `path`, whole or not at all (a temporary file beside it, then
    renamed over it, as safetensors does)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        write(state, lambda view: _write_all(fd, view))
    except BaseException:
        os.close(fd)
        temporary.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(temporary, path)


_pipe_fd: list[int | None] = []


def _pipe() -> int | None:
    """The pipe to the builder, when this process was given one (read once)."""
    if not _pipe_fd:
        value = os.environ.get(ENV, "")
        _pipe_fd.append(int(value) if value.isdigit() else None)
        if _pipe_fd[0] is not None:
            os.set_inheritable(_pipe_fd[0], False)  # a program the recipe starts gets none
    return _pipe_fd[0]


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view):]
