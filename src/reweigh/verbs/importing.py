"""`import`: bring an opaque weights file, with no recipe, into the store.

So that it can be checked against the policies, compared with other networks and
installed like any item, while nobody mistakes it for something built from source: its
provenance says it was imported (in-toto Statement with a SLSA predicate whose build
type is the import itself), the store's index keeps an import row, and `check` explains
from that row why it is not built from source.

Formats: safetensors (validated field by field, kept byte for byte), or a PyTorch
`.pt`/`.pth`/`.bin` file, loaded only with `torch.load(..., weights_only=True)`, which
refuses any pickled object that is not tensors and plain containers, then converted
to safetensors. Nothing is ever unpickled otherwise.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..digest import copy_hashing, file_digest, record_digest, short
from ..errors import UsageError, WeightsError
from ..policy import licenses
from ..provenance import in_toto
from ..store import Store, StoreItem, remove_tree
from ..weights import read_header, save_tensors, sniff_format

IMPORT_BUILD_TYPE = "urn:reweigh:build-type:import:v1"
IMPORTER_ID = "urn:reweigh:importer:local"
SAFETENSORS = "safetensors"
PYTORCH = "pytorch (torch.load weights_only=True)"
# The same rules as a recipe's name and version (recipe.py), so items look alike.
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,31}$")


@dataclass(frozen=True)
class ImportReport:
    path: Path
    name: str
    version: str
    weights_digest: str
    source: Path
    source_digest: str
    format: str
    tensors: int
    skipped: tuple[str, ...]  # non-tensor entries of a PyTorch file, left out
    reused: bool

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "name": self.name, "version": self.version,
                "weights_digest": self.weights_digest, "source": str(self.source),
                "source_digest": self.source_digest, "format": self.format,
                "tensors": self.tensors, "skipped": list(self.skipped), "reused": self.reused}


@dataclass(frozen=True)
class Claims:
    """What the importer says about the file; recorded, never verified."""

    license: str | None = None
    origin: str | None = None
    no_training_data: bool = False


def import_weights(file: Path | str, *, name: str, version: str = "imported",
                   license: str | None = None, origin: str | None = None,
                   no_training_data: bool = False, store: Store | None = None) -> ImportReport:
    """Import `file` as a store item named `name`; reuse the item if it is already there."""
    source = Path(file)
    claims = Claims(license, origin, no_training_data)
    _validate(source, name, version, claims)
    store = store or Store()
    staging = store.new_staging_dir()
    try:
        # Read once: the file is hashed while it is copied in (or, a PyTorch file, hashed
        # and then loaded), and the copy is what is checked and kept.
        copied = _stage(source, staging / "weights.safetensors")
        record = {"format": "reweigh.import/1", "name": name, "version": version,
                  "source_digest": copied.source_digest, "license": license,
                  "origin": origin, "no_training_data": no_training_data}
        identity = record_digest(record)
        item_name = f"{short(identity)}-{name}-{version}"
        with store.lock(identity):
            item = store.find(identity)
            if item is not None:
                return _report(item, source, True)
            staged = store.new_build_dir(identity)
            try:
                out = staged / "out"
                out.mkdir()
                os.replace(staging / "weights.safetensors", out / "weights.safetensors")
                _write_files(out, copied.weights_digest,
                             {**record, "source": source.name, "format": copied.format,
                              "skipped": list(copied.skipped)})
                store.record_import(item_name, {
                    "source_name": source.name, "source_digest": copied.source_digest,
                    "format": copied.format, "license": license, "origin": origin,
                    "no_training_data": int(no_training_data)})
                item = store.commit(out, item_name, {
                    "derivation": identity, "name": name, "version": version,
                    "weights_digest": copied.weights_digest, "environment_digest": None,
                    "inputs": {}}, known={"weights.safetensors": copied.weights_digest})
            finally:
                remove_tree(staged)
    finally:
        remove_tree(staging)
    return _report(item, source, False)


def _validate(source: Path, name: str, version: str, claims: Claims) -> None:
    if not source.is_file():
        raise UsageError(f"{source}: no such file")
    if not _NAME_RE.fullmatch(name):
        raise UsageError(f"--name: {name!r}: expected a lowercase name of letters, digits, "
                         "'.', '_', '-'")
    if not _VERSION_RE.fullmatch(version):
        raise UsageError(f"--version: {version!r}: expected a version such as 1.0.0")
    if claims.license is not None:
        try:
            licenses.parse(claims.license)
        except licenses.LicenceExpressionError as e:
            raise UsageError(f"--license: {claims.license!r}: {e}") from e
    if claims.origin is not None and not re.fullmatch(r"https?://\S{1,2000}", claims.origin):
        raise UsageError(f"--origin: {claims.origin!r}: expected an http:// or https:// URL")


def _report(item: StoreItem, source: Path, reused: bool) -> ImportReport:
    statement = json.loads((item.path / "provenance.json").read_text())
    parameters = statement["predicate"]["buildDefinition"]["externalParameters"]
    return ImportReport(item.path, item.name, item.version, item.weights_digest, source,
                        parameters["source_digest"], parameters["format"],
                        len(read_header(item.weights).tensors),
                        tuple(parameters.get("skipped", [])), reused)


@dataclass(frozen=True)
class _Copied:
    source_digest: str
    weights_digest: str
    format: str
    skipped: tuple[str, ...]


def _stage(source: Path, target: Path) -> _Copied:
    """A safetensors file copied as is, hashed as it is copied (one read), its copy's
    header checked; or a PyTorch file hashed, loaded weights-only and converted, and the
    converted file hashed."""
    if sniff_format(source) == "pytorch":
        source_digest = file_digest(source)
        fmt, skipped = _from_pytorch(source, target)
        return _Copied(source_digest, file_digest(target), fmt, skipped)
    digest = copy_hashing(source, target)
    read_header(target)  # what is kept is what was checked, whatever the source does next
    return _Copied(digest, digest, SAFETENSORS, ())


def _from_pytorch(source: Path, target: Path) -> tuple[str, tuple[str, ...]]:
    import pickle

    import torch

    try:  # weights_only: tensors and plain containers only, never arbitrary objects
        state = torch.load(source, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise WeightsError(f"{source}: refused by torch.load(weights_only=True): "
                           f"{_why(e)}; reweigh never unpickles anything else") from e
    except Exception as e:  # a hostile file can make the loader fail in any way
        raise WeightsError(f"{source}: torch.load(weights_only=True) failed: "
                           f"{type(e).__name__}: {_why(e)}") from e
    tensors: dict[str, Any] = {}
    skipped: list[str] = []
    _flatten("", state, tensors, skipped, source)
    if not tensors:
        raise WeightsError(f"{source}: holds no tensors")
    for name, tensor in tensors.items():
        unfit = ("the name __metadata__" if name == "__metadata__"
                 else f"a {tensor.layout} tensor" if tensor.layout != torch.strided
                 else "a quantized tensor" if tensor.is_quantized
                 else f"a {tensor.dtype} tensor" if tensor.is_complex() else None)
        if unfit:
            raise WeightsError(f"{source}: {name}: {unfit} has no safetensors form")
    try:  # clone: safetensors refuses tensors that share storage (tied weights)
        save_tensors({k: v.detach().clone() for k, v in tensors.items()}, target)
    except Exception as e:  # a dtype safetensors or reweigh cannot store, say
        raise WeightsError(f"{source}: cannot be written as safetensors: "
                           f"{type(e).__name__}: {_why(e)}") from e
    read_header(target)  # only what reweigh reads back enters the store
    return PYTORCH, tuple(skipped)


def _why(error: Exception) -> str:
    """The line of torch's message that names the refused object, not its general advice."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "Unsupported" in line]
    return (named or lines or [type(error).__name__])[0]


def _flatten(prefix: str, value: Any, tensors: dict[str, Any], skipped: list[str],
             source: Path) -> None:
    import torch

    if isinstance(value, torch.Tensor):
        name = prefix or "tensor"
        if name in tensors:  # {"a.b": x, "a": {"b": y}}: one would silently replace the other
            raise WeightsError(f"{source}: two tensors would both be named {name!r}")
        tensors[name] = value
    elif isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, tensors, skipped, source)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _flatten(f"{prefix}.{index}" if prefix else str(index), item, tensors, skipped,
                     source)
    else:
        skipped.append(prefix or "(top level)")


def _write_files(out: Path, weights_digest: str, parameters: dict[str, Any]) -> None:
    """provenance.json (in-toto + SLSA, build type: import), metrics.json, MODEL_CARD.md."""
    statement = in_toto(
        weights_digest, IMPORT_BUILD_TYPE, external=parameters,
        dependencies=[{"name": f"imported:{parameters['source']}",
                       "digest": {"sha256": parameters["source_digest"].split(":", 1)[1]},
                       **({"uri": parameters["origin"]} if parameters["origin"] else {})}],
        builder={"id": IMPORTER_ID, "version": {"reweigh": __version__}})
    (out / "provenance.json").write_text(json.dumps(statement, indent=2) + "\n")
    (out / "metrics.json").write_text(json.dumps({"evaluation": {}}, indent=2) + "\n")
    (out / "MODEL_CARD.md").write_text(_card(parameters, weights_digest))


def _card(parameters: dict[str, Any], weights_digest: str) -> str:
    licence = parameters["license"] or "unknown"
    return "\n".join([
        "---", f"license: {json.dumps(licence)}", "library_name: reweigh",
        f"tags: {json.dumps(['reweigh', 'imported'])}", "---",
        f"# {parameters['name']} {parameters['version']} (imported)", "",
        f"Imported with `reweigh import` from `{parameters['source']}` ({parameters['format']})"
        f"{', which came from ' + parameters['origin'] if parameters['origin'] else ''}.",
        "It was not built from source: no recipe, training code or training data comes with it,"
        " so it cannot be rebuilt or verified. `reweigh check` says what each policy makes of it.",
        "", f"- weights: `{weights_digest}`", f"- source file: `{parameters['source_digest']}`",
        f"- licence (as stated by the importer): {licence}",
        f"- training data: {'not published' if parameters['no_training_data'] else 'not stated'}",
        ""])
