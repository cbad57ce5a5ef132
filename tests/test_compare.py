"""compare: two files judged as wholes, on small files written here (pure, fast).

`identical` means the same bytes. A file with the reference's tensors and anything
else beside them (a metadata key, a header written another way) is named for what
differs, and only a header's layout, never its metadata, may pass as equivalent
from another environment.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from reweigh.compare import (
    Change,
    EnvRelation,
    FileComparison,
    Verdict,
    compare_whole,
    decide,
)
from reweigh.recipe import Tolerance
from reweigh.weights import read_header

TENSORS = {"conv.weight": np.arange(6, dtype=np.float32).reshape(2, 3),  # (out, in)
           "conv.bias": np.array([0.5, -1.0], dtype=np.float64)}


def _parts(path: Path) -> tuple[str, bytes]:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return data[8:8 + length].decode(), data[8 + length:]


def _write(path: Path, text: str, body: bytes) -> Path:
    raw = text.encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
    return path


def _compact(header: dict, like: str) -> str:
    """The header written compactly, padded as the text it replaces was."""
    return json.dumps(header, separators=(",", ":")) + like[len(like.rstrip()):]


def _rewritten(change: Callable[[dict], dict]) -> Callable[[Path, Path], Path]:
    """A variant whose header is the reference's parsed, changed and written compactly."""
    def make(reference: Path, out: Path) -> Path:
        text, body = _parts(reference)
        return _write(out, _compact(change(json.loads(text)), text), body)
    return make


def _respelled(old: str, new: str) -> Callable[[Path, Path], Path]:
    def make(reference: Path, out: Path) -> Path:
        text, body = _parts(reference)
        assert old in text
        return _write(out, text.replace(old, new, 1), body)
    return make


def _data_swapped(reference: Path, out: Path) -> Path:
    """The same tensors with their data laid out in the other order."""
    text, body = _parts(reference)
    header = json.loads(text)
    (first, a), (second, b) = sorted(((n, e["data_offsets"]) for n, e in header.items()
                                      if n != "__metadata__"), key=lambda x: x[1])
    header[second]["data_offsets"] = [0, b[1] - b[0]]
    header[first]["data_offsets"] = [b[1] - b[0], b[1] - b[0] + a[1] - a[0]]
    return _write(out, _compact(header, text), body[b[0]:b[1]] + body[a[0]:a[1]])


def _saved_without_metadata(reference: Path, out: Path) -> Path:
    save_file(TENSORS, str(out))  # no __metadata__, and safetensors pads the header
    return out


@pytest.fixture
def reference(tmp_path: Path) -> Path:
    """As reweigh's builds write weights: with an empty __metadata__."""
    path = tmp_path / "reference.safetensors"
    save_file(TENSORS, str(path), metadata={})
    return path


@pytest.mark.parametrize(("make", "layout"), [
    pytest.param(_respelled("}}", "}}\n"), ["the padding after the JSON"], id="padding"),
    pytest.param(_rewritten(lambda h: h), [], id="the-same-text"),
    pytest.param(_rewritten(lambda h: dict(reversed(list(h.items())))), ["the order of keys"],
                 id="key-order"),
    pytest.param(_respelled('"dtype":"F32","shape":[2,3]', '"shape":[2,3],"dtype":"F32"'),
                 ["the order of keys"], id="field-order"),
    pytest.param(_respelled('"shape":[2,3]', '"shape": [2, 3]'),
                 ["whitespace inside the JSON"], id="whitespace"),
    pytest.param(_respelled('"conv.bias"', '"conv\\u002ebias"'),
                 ["how the same values are written"], id="string-escapes"),
    pytest.param(_respelled('"__metadata__":{}', '"__metadata__":null'),
                 ["how the same values are written"], id="null-metadata"),
    pytest.param(_data_swapped, ["the order of the tensors' data"], id="data-order"),
    pytest.param(_saved_without_metadata,
                 ["an empty __metadata__ written in one header, left out of the other",
                  "the padding after the JSON"], id="re-saved-without-metadata"),
])
def test_the_same_tensors_written_another_way_name_the_layout(
        reference: Path, tmp_path: Path, make: Callable[[Path, Path], Path],
        layout: list[str]) -> None:
    compared = compare_whole(read_header(reference),
                             read_header(make(reference, tmp_path / "b.safetensors")))
    assert all(t.status == "identical" for t in compared.tensors) and not compared.metadata
    assert len(compared.layout) == len(layout)
    assert all(got.startswith(want) for got, want in zip(compared.layout, layout, strict=True))
    assert compared.same_bytes == (not layout)


def test_metadata_keys_that_differ_are_named_with_their_sizes(tmp_path: Path) -> None:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(TENSORS, str(a), metadata={"format": "pt", "gone": "x"})
    save_file(TENSORS, str(b), metadata={"format": "np", "blob": "x" * 5_000_000})
    compared = compare_whole(read_header(a), read_header(b))
    assert [(m.key, m.change, m.size_a, m.size_b) for m in compared.metadata] == [
        ("blob", Change.ONLY_IN_B, 0, 5_000_000), ("format", Change.CHANGED, 2, 2),
        ("gone", Change.ONLY_IN_A, 1, 0)]
    assert compared.layout == () and not compared.same_bytes


# --- the verdict -------------------------------------------------------------------------------


def _decide(compared: FileComparison, env: EnvRelation) -> tuple[Verdict, list[str]]:
    return decide(compared, None, Tolerance(), env)


def test_only_the_same_bytes_are_identical(reference: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(reference.read_bytes())
    verdict, reasons = _decide(compare_whole(read_header(reference), read_header(copy)),
                               EnvRelation.UNKNOWN)
    assert verdict is Verdict.IDENTICAL and reasons[0].startswith("the same bytes")


@pytest.mark.parametrize("env", list(EnvRelation))
def test_a_metadata_blob_beside_identical_tensors_is_different_from_anywhere(
        reference: Path, tmp_path: Path, env: EnvRelation) -> None:
    blob = _rewritten(lambda h: {**h, "__metadata__": {"payload": "x" * 5_000_000}})(
        reference, tmp_path / "blob.safetensors")
    verdict, reasons = _decide(compare_whole(read_header(reference), read_header(blob)), env)
    assert verdict is Verdict.DIFFERENT
    assert reasons[0] == "all 2 tensors are bit-identical"
    assert reasons[1] == ("the metadata differs in 1 key: 'payload' only in the published file "
                          "(5000000 characters)")


def test_a_header_written_another_way_is_different_here_and_equivalent_from_elsewhere(
        reference: Path, tmp_path: Path) -> None:
    """Another environment's safetensors may lay a header out differently; this one's,
    or an unnamed one's, writes these very bytes."""
    padded = _respelled("}}", "}}    ")(reference, tmp_path / "padded.safetensors")
    compared = compare_whole(read_header(reference), read_header(padded))
    for env in (EnvRelation.SAME, EnvRelation.UNKNOWN):
        verdict, reasons = _decide(compared, env)
        assert verdict is Verdict.DIFFERENT
        assert "the header is written differently: the padding after the JSON" in reasons[1]
    verdict, _ = _decide(compared, EnvRelation.OTHER)
    assert verdict is Verdict.EQUIVALENT
