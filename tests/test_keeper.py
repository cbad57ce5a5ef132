"""Keeping a build's checkpoints without a build: a training state's bytes as safetensors
writes them, frames sent down a real pipe to a Keeper, and what the retention keeps."""

from __future__ import annotations

import io
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from reweigh import keeper as keeping
from reweigh.direct import PAGE, write_new
from reweigh.errors import BuildError
from reweigh.keeper import Keeper, pack, retention
from reweigh.state_bytes import FRAME, MAGIC, layout, write
from reweigh.store_checkpoints import RAW, Chunks, Manifest, materialise
from reweigh.weights import load_state, save_state, save_tensors, state_layout

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64,
          torch.int32, torch.int16, torch.int8, torch.uint64, torch.uint32, torch.uint16,
          torch.uint8, torch.bool, torch.float8_e4m3fn, torch.float8_e5m2)
NAMES = st.text(alphabet=st.sampled_from('at0é"\\\n_Z9'), min_size=1, max_size=6)
TENSORS = st.dictionaries(NAMES, st.tuples(
    st.sampled_from(DTYPES), st.lists(st.integers(0, 3), max_size=3), st.integers(0, 99)),
    max_size=8)


@settings(max_examples=60, deadline=None)
@given(TENSORS, st.one_of(st.none(), st.dictionaries(NAMES, NAMES, min_size=1, max_size=1)))
def test_a_state_is_laid_out_byte_for_byte_as_safetensors_writes_it(
        specs: dict[str, tuple[torch.dtype, list[int], int]],
        metadata: dict[str, str] | None) -> None:
    tensors = {name: torch.randint(0, 100, shape, generator=torch.Generator().manual_seed(
        seed)).to(dtype) for name, (dtype, shape, seed) in specs.items()}
    sink = io.BytesIO()
    write(layout(tensors, metadata), sink.write)
    assert sink.getvalue() == _safetensors_bytes(tensors, metadata)


def _safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None,
                       ) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.safetensors"
        save_file(tensors, str(path), metadata=metadata)
        return path.read_bytes()


def _state(seed: int, width: int = 16) -> dict[str, object]:
    """A training state shaped like `ctx.training_state`'s: a model, an optimiser's
    integer-keyed state with moments and step counters, a generator, and plain values
    (made by hand: a first optimiser step would import torch._dynamo, seconds)."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(width, width)
    moments = {i: {"step": torch.tensor(float(seed)), "exp_avg": torch.randn_like(p),
                   "exp_avg_sq": torch.rand_like(p)} for i, p in enumerate(model.parameters())}
    return {"model": model.state_dict(),
            "optimizer": {"state": moments, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]},
            "torch_rng": torch.get_rng_state(), "step": seed, "note": [1.0, ("a", None)]}


def test_a_checkpoint_is_the_file_safetensors_would_have_written(tmp_path: Path) -> None:
    """The bytes (so the digests in transcripts of earlier builds) stay those of
    safetensors' own writer, and read back as the state."""
    from reweigh.digest import python_sorted_json
    from reweigh.weights import _skeleton

    state = _state(3)
    save_state(state, tmp_path / "ours.safetensors")
    tensors: dict[str, object] = {}
    skeleton = _skeleton(state, tensors, "state")  # what save_state wrote before
    save_tensors(tensors, tmp_path / "theirs.safetensors",
                 {"reweigh.state": python_sorted_json(skeleton).decode()})
    ours = (tmp_path / "ours.safetensors").read_bytes()
    assert ours == (tmp_path / "theirs.safetensors").read_bytes()
    assert state_layout(state).size == len(ours)
    assert load_state(tmp_path / "ours.safetensors")["note"] == [1.0, ("a", None)]


ARRAY_DTYPES = ("float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint64",
                "uint32", "uint16", "uint8", "bool")
ARRAYS = st.dictionaries(NAMES, st.tuples(
    st.sampled_from(ARRAY_DTYPES), st.lists(st.integers(0, 3), max_size=3),
    st.sampled_from(["plain", "reversed", "transposed", "every other"]), st.integers(0, 99)),
    max_size=6)


@settings(max_examples=80, deadline=None)
@given(ARRAYS, st.booleans())
def test_a_state_of_arrays_is_the_file_it_was_when_arrays_became_tensors_first(
        specs: dict[str, tuple[str, list[int], str, int]], with_a_tensor: bool) -> None:
    """numpy arrays are laid out without torch; the bytes are those of each array made a
    torch tensor first (`torch.from_numpy` of a contiguous copy), as every earlier build
    wrote them, so the digests in their transcripts still replay: 0-d arrays, empty ones,
    views of any strides, one tensor beside them."""
    from reweigh.weights import _checkpointable

    def array(dtype: str, shape: list[int], view: str, seed: int) -> np.ndarray:
        numbers = np.random.default_rng(seed).integers(0, 100, size=shape)
        value = numbers.astype(dtype)
        if value.ndim and view == "reversed":
            return value[::-1]
        if view == "transposed":
            return value.T
        return value[::2] if value.ndim and view == "every other" else value

    arrays: dict[str, object] = {name: array(*spec) for name, spec in specs.items()}
    if with_a_tensor:
        arrays["tensor"] = torch.arange(3.0)
    before = {name: torch.from_numpy(np.ascontiguousarray(value).copy())
              if isinstance(value, np.ndarray) else value for name, value in arrays.items()}
    sink, theirs = io.BytesIO(), io.BytesIO()
    write(layout(_checkpointable(arrays), {"m": "1"}), sink.write)
    write(layout(before, {"m": "1"}), theirs.write)
    assert sink.getvalue() == theirs.getvalue()


def test_arrays_no_checkpoint_can_hold_are_refused_by_name() -> None:
    from reweigh.weights import _checkpointable

    for odd in (np.arange(3, dtype=">f4"), np.zeros(2, np.complex64), np.array(["a"])):
        with pytest.raises(TypeError, match="checkpoint: w has dtype"):
            layout(_checkpointable({"w": odd}), None)
    same = np.ones(4, np.float32)  # two names for one array: written twice, as before
    assert layout({"a": same, "b": same}, None).size > layout({"a": same}, None).size


def test_tensors_that_share_memory_are_refused_as_safetensors_refuses_them() -> None:
    weight = torch.ones(4, 4)
    with pytest.raises(ValueError, match="share memory"):
        layout({"a": weight, "b": weight}, None)
    with pytest.raises(ValueError, match="share memory"):
        layout({"a": weight, "b": weight[1:]}, None)
    layout({"a": weight[:2].clone(), "b": weight[2:].clone()}, None)  # apart: fine


def test_retention_says_what_each_checkpoint_becomes() -> None:
    assert [retention(i, 0, 0) for i in (1, 2, 3)] == ["keep"] * 3  # nothing said: all
    assert [retention(i, 3, 0) for i in (1, 2, 3, 6)] == ["hash", "hash", "keep", "keep"]
    assert [retention(i, 3, 2) for i in (1, 2, 3)] == ["wait", "wait", "keep"]
    assert [retention(i, 0, 2) for i in (1, 2)] == ["wait", "wait"]
    assert retention(5, 1, 0) == "keep"


def _send(fd: int, states: list[tuple[int, dict[str, object]]]) -> None:
    """What the runtime does: each state framed down the pipe."""
    for step, state in states:
        laid = state_layout(state)
        os.write(fd, FRAME.pack(MAGIC, step, laid.size))
        write(laid, lambda view: _all(fd, view))


def _all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view):]


def _keep(tmp_path: Path, steps: list[int], every: int, last: int,
          chunks: Chunks | None = None) -> tuple[list[keeping.Kept], Path]:
    out = tmp_path / "build" / "out"
    out.mkdir(parents=True, exist_ok=True)
    chunks = chunks or Chunks(tmp_path / "store")
    (tmp_path / "store" / "tmp").mkdir(parents=True, exist_ok=True)
    keeper = Keeper(out, chunks, every, last, 2)
    try:
        fd = keeper.stream()
        sender = threading.Thread(target=_send, args=(fd, [(s, _state(s)) for s in steps]))
        sender.start()
        sender.join()
        os.close(fd)
        for step in steps:
            keeper.add(step, f"checkpoints/step-{step:09d}.safetensors")
        return keeper.finish(), out
    finally:
        keeper.close()


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 7), st.integers(0, 4), st.integers(0, 3))
def test_retention_keeps_exactly_every_nth_and_the_last_m(
        tmp_path_factory: pytest.TempPathFactory, count: int, every: int, last: int) -> None:
    tmp_path = tmp_path_factory.mktemp("keep")
    steps = [2 * (i + 1) for i in range(count)]
    kept, out = _keep(tmp_path, steps, every, last)
    expected = {s for i, s in enumerate(steps, 1) if (every == 0 and last == 0)
                or (every and i % every == 0) or i > count - last}
    assert [k.step for k in kept] == steps
    assert {k.step for k in kept if k.manifest} == expected
    assert sorted(p.name for p in (out / "checkpoints").glob("*.json")) == sorted(
        f"step-{s:09d}.json" for s in expected)
    for k in kept:  # every digest is that of the file the state makes
        saved = tmp_path / f"{k.step}.safetensors"
        save_state(_state(k.step), saved)
        from reweigh.digest import file_digest

        assert k.digest == file_digest(saved)
        if k.manifest:
            manifest = Manifest.read(out / k.manifest)
            back = materialise(manifest, Chunks(tmp_path / "store"), tmp_path / "back")
            assert back.read_bytes() == saved.read_bytes()
    assert not (out.parent / "checkpoints-waiting").exists()  # no scratch file left


def test_a_large_checkpoint_is_stored_as_it_is_and_a_small_one_compressed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "state.safetensors"
    save_state(_state(1, width=256), source)
    small_store, large_store = Chunks(tmp_path / "a"), Chunks(tmp_path / "b")
    for chunks in (small_store, large_store):
        chunks.tmp.mkdir(parents=True)
    small = pack(source, small_store, threads=2)
    monkeypatch.setattr(keeping, "COMPRESS_UP_TO", 0)  # as if it were over 64 MiB
    large = pack(source, large_store, threads=2)
    assert small.digest == large.digest
    assert small.chunks == large.chunks  # the same names: a chunk is named by its bytes
    assert [large_store.path(d).stat().st_size - RAW.size for d, _ in large.chunks] == [
        n for _, n in large.chunks]  # as it is, after its prefix
    squeezed = sum(small_store.path(d).stat().st_size for d, _ in small.chunks)
    assert squeezed < 0.95 * small.size
    for chunks in (small_store, large_store):
        back = materialise(large, chunks, tmp_path / "back")
        assert back.read_bytes() == source.read_bytes()
        back.unlink()


def test_small_tensors_that_follow_one_another_share_a_piece(tmp_path: Path) -> None:
    """Step counters and biases are a chunk together, not a file each; a tensor of
    another element size, or a large one, starts a piece of its own."""
    from reweigh.store_checkpoints import CHUNK, cut
    from reweigh.weights import read_header

    path = tmp_path / "c.safetensors"
    save_file({"a": torch.zeros(3), "b": torch.zeros(5), "c": torch.zeros(1 << 15),
               "d": torch.zeros(2), "e": torch.zeros(7, dtype=torch.int64),
               "f": torch.zeros(3, dtype=torch.uint8), "g": torch.zeros(4, dtype=torch.uint8)},
              str(path))
    header, size = read_header(path), path.stat().st_size
    tensors = header.tensors
    apart = cut(header, size)
    joined = cut(header, size, 64 << 10)
    assert len(apart) == 8 and sum(p.length for p in joined) == size
    assert [(p.start, p.length, p.itemsize) for p in joined] == [
        (0, tensors["e"].start, 1),  # the header
        (tensors["e"].start, 56, 8),  # e: the only 8-byte tensor
        (tensors["a"].start, 32, 4),  # a and b together
        (tensors["c"].start, 1 << 17, 4),  # c: large, alone
        (tensors["d"].start, 8, 4),  # d: after a large one, a piece of its own
        (tensors["f"].start, 7, 1)]  # f and g together
    assert all(p.length <= CHUNK for p in joined)


@pytest.mark.parametrize("length", [1, PAGE - 1, PAGE, 3 * PAGE + 17])
def test_a_file_written_past_the_cache_holds_every_byte(tmp_path: Path, length: int) -> None:
    import mmap

    buffer = mmap.mmap(-1, 4 * PAGE)
    buffer[:length] = bytes((i * 7) % 251 for i in range(length))
    write_new(tmp_path / "f", buffer, length)
    write_new(tmp_path / "f", buffer, length, 4 * PAGE)  # a second block further on
    data = (tmp_path / "f").read_bytes()
    assert data[:length] == buffer[:length] == data[4 * PAGE:]
    assert len(data) == 4 * PAGE + length


def test_a_frame_that_is_not_one_fails_the_build_and_keeps_nothing(tmp_path: Path) -> None:
    out = tmp_path / "build" / "out"
    out.mkdir(parents=True)
    keeper = Keeper(out, Chunks(tmp_path / "store"), 0, 0, 1)
    fd = keeper.stream()
    os.write(fd, b"NOPE" + bytes(16))
    with pytest.raises(BrokenPipeError):  # the reader stopped: the sender is told at once
        for _ in range(1000):
            os.write(fd, bytes(1 << 16))
    os.close(fd)
    with pytest.raises(BuildError, match="not a checkpoint frame"):
        keeper.finish()
    keeper.close()
    assert not (tmp_path / "store" / "chunks").exists()


def test_checkpoints_sent_must_be_those_reported(tmp_path: Path) -> None:
    out = tmp_path / "build" / "out"
    out.mkdir(parents=True)
    (tmp_path / "store" / "tmp").mkdir(parents=True)
    keeper = Keeper(out, Chunks(tmp_path / "store"), 0, 0, 1)
    fd = keeper.stream()
    _send(fd, [(2, _state(2))])
    os.close(fd)
    keeper.add(4, "checkpoints/step-000000004.safetensors")
    with pytest.raises(BuildError, match="not those it reported"):
        keeper.finish()
    keeper.close()
    with pytest.raises(BuildError, match="not one the runtime writes"):
        Keeper(out, None, 0, 0, 1).add(2, "../weights.safetensors")


def test_a_frame_cut_short_by_the_end_of_the_build_fails_it(tmp_path: Path) -> None:
    out = tmp_path / "build" / "out"
    out.mkdir(parents=True)
    keeper = Keeper(out, None, 0, 0, 1)
    fd = keeper.stream()
    os.write(fd, FRAME.pack(MAGIC, 2, 1000) + bytes(10))
    os.close(fd)
    with pytest.raises(BuildError, match="cut short"):  # from the report of it, or at the end
        keeper.add(2, "checkpoints/step-000000002.safetensors")
        keeper.finish()
    keeper.close()


def test_a_process_left_holding_the_pipe_does_not_keep_the_build_waiting(
        tmp_path: Path) -> None:
    """Something the recipe started may outlive the build with the pipe open: once the
    build has ended, the keeper stops waiting at the next frame's start."""
    out = tmp_path / "build" / "out"
    out.mkdir(parents=True)
    keeper = Keeper(out, None, 0, 0, 1)
    fd = keeper.stream()
    straggler = os.dup(fd)
    _send(fd, [(2, _state(2))])
    os.close(fd)
    keeper.add(2, "checkpoints/step-000000002.safetensors")
    start = time.monotonic()
    (kept,) = keeper.finish()
    assert kept.step == 2 and kept.manifest is None and time.monotonic() - start < 5
    keeper.close()
    os.close(straggler)
