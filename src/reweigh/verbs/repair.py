"""`store repair`: rebuild the store's index from what the items say about themselves.

The index is a cache of the items' own records: each built item carries its
`derivation.json` (whose canonical digest names the item) and its `provenance.json`
(the weights' digest, the environment's fingerprint, the inputs with their kinds and
origins); an imported item's provenance holds the claims its identity was computed
from. So an index that SQLite cannot read, or that lost rows, is moved aside
(`index.sqlite.broken-<time>`, kept for whoever wants to look) and every item folder
and input it does not know is indexed again, like `guix gc --verify=repair`.

Only what checks out is indexed: an item whose records disagree with its folder name,
or whose weights do not have the digest its provenance names, and an input whose
content does not have the digest its folder names, are reported and left alone. What
the items do not record is lost with a broken index: the history of build attempts and
of `--check` rebuilds. The other files of an item are indexed as they are found;
`reweigh build --check` rebuilds one to compare.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..derivation import digest_of
from ..digest import is_digest, record_digest, short
from ..errors import ReweighError
from ..provenance import BUILD_TYPE
from ..store import Store, default_root, file_rows, gc_lock
from ..store_index import set_aside
from ..store_inputs import holds
from ..trees import odd_entries
from .importing import IMPORT_BUILD_TYPE

JSON_LIMIT = 64 << 20  # an item's records are kilobytes; a larger one is not ours
# The fields an imported item's identity is the digest of (see `import_weights`).
IMPORT_IDENTITY = ("name", "version", "source_digest", "license", "origin",
                   "no_training_data")
IMPORT_FORMAT = "reweigh.import/1"


@dataclass(frozen=True)
class RepairReport:
    root: Path
    broken_index: Path | None  # where the unreadable index was moved, if it was
    items: list[str]  # item folders indexed again
    inputs: list[str]  # input digests indexed again
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path in the store, why)

    def to_json(self) -> dict[str, Any]:
        return {"store": str(self.root),
                "broken_index": str(self.broken_index) if self.broken_index else None,
                "items": self.items, "inputs": self.inputs,
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped]}


class _Unfit(Exception):
    """An item folder or input that cannot be indexed, and why."""


@dataclass(frozen=True)
class _Found:
    """An item folder's rows, as read back from its records."""

    record: dict[str, Any]  # as `Store.commit` takes it
    files: list[tuple[str, str, int]]
    created_at: float
    import_row: dict[str, Any] | None


def repair_store(store_root: Path | None = None) -> RepairReport:
    """Set an unreadable index aside and index every item and input it does not know.
    Holds the gc lock exclusively: no build commits, and no gc removes, meanwhile."""
    root = (store_root or default_root()).absolute()
    with gc_lock(root, exclusive=True):
        broken = set_aside(root)
        store = Store(root)
        items, skipped = _adopt_items(store)
        inputs, skipped_inputs = _adopt_inputs(store)
    return RepairReport(root, broken, items, inputs, skipped + skipped_inputs)


def _adopt_items(store: Store) -> tuple[list[str], list[tuple[str, str]]]:
    adopted, skipped = [], []
    for name in store.unknown_items():
        folder = store.root / "items" / name
        try:
            found = read_item(folder)
        except _Unfit as e:
            skipped.append((f"items/{folder.name}", str(e)))
            continue
        if found.import_row is not None:
            store.record_import(folder.name, found.import_row)
        store.index_item(folder.name, found.record, found.files, found.created_at)
        adopted.append(folder.name)
    return adopted, skipped


def read_item(folder: Path, known: dict[str, str] | None = None) -> _Found:
    """An item's index rows from its own records, checked against its name and weights.
    `known`: digests of files the caller hashed as it wrote them (`pull`), not read
    again."""
    if folder.is_symlink() or not folder.is_dir():
        raise _Unfit("not a folder")
    statement = _json_file(folder, "provenance.json")
    build_type = _get(statement, "predicate", "buildDefinition", "buildType")
    if build_type == BUILD_TYPE:
        record, import_row = _built(folder, statement), None
    elif build_type == IMPORT_BUILD_TYPE:
        record, import_row = _imported(statement)
    else:
        raise _Unfit(f"provenance.json: unknown build type {build_type!r}")
    named = f"{short(record['derivation'])}-{record['name']}-{record['version']}"
    if folder.name != named:
        raise _Unfit(f"its records name another item ({named})")
    if odd := odd_entries(folder):
        raise _Unfit(f"{odd[0]} is not a regular file or folder")
    claimed = f"sha256:{_get(statement, 'subject', 0, 'digest', 'sha256')}"
    try:
        files = file_rows(folder, known)  # each file hashed once, the weights among them
    except OSError as e:
        raise _Unfit(f"its files cannot be read ({e})") from e
    weights = next((digest for rel, digest, _ in files if rel == "weights.safetensors"), None)
    if weights is None:
        raise _Unfit("weights.safetensors is missing")
    if weights != claimed:
        raise _Unfit(f"weights.safetensors has {weights}, its provenance names {claimed}")
    return _Found({**record, "weights_digest": weights}, files, _finished(statement, folder),
                  import_row)


def _built(folder: Path, statement: Any) -> dict[str, Any]:
    """The record of an item built from a recipe: its derivation names it."""
    derivation = _json_file(folder, "derivation.json")
    digest = _get(statement, "predicate", "buildDefinition", "externalParameters",
                  "derivation")
    if not is_digest(digest) or not isinstance(derivation, dict):
        raise _Unfit("provenance.json or derivation.json does not name a derivation")
    try:  # the canonical form is the derivation's to say (it depends on the format)
        recomputed = digest_of(derivation)
    except (ReweighError, ValueError, TypeError) as e:
        raise _Unfit(f"derivation.json: {getattr(e, 'message', e)}") from e
    if recomputed != digest:
        raise _Unfit("derivation.json does not have the digest its provenance names")
    inputs = _get(derivation, "inputs")
    if not isinstance(inputs, dict):
        raise _Unfit("derivation.json: inputs is not a table")
    environment = _get(statement, "predicate", "runDetails", "environment")
    fingerprint = environment.get("fingerprint") if isinstance(environment, dict) else None
    return {"derivation": digest, "name": _text(derivation, "name"),
            "version": _text(derivation, "version"),
            "environment_digest": fingerprint if is_digest(fingerprint) else None,
            "inputs": {str(name): _text(entry, "digest") for name, entry in inputs.items()}}


def _imported(statement: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The record and import row of an imported item: its identity is the digest of the
    importer's claims, which its provenance keeps."""
    params = _get(statement, "predicate", "buildDefinition", "externalParameters")
    claims = {key: _get(params, key) for key in IMPORT_IDENTITY}
    identity = record_digest({"format": IMPORT_FORMAT, **claims})
    row = {"source_name": _text(params, "source"), "source_digest": claims["source_digest"],
           "format": _text(params, "format"), "license": claims["license"],
           "origin": claims["origin"], "no_training_data": int(bool(claims["no_training_data"]))}
    record: dict[str, Any] = {"derivation": identity, "name": _text(params, "name"),
              "version": _text(params, "version"), "environment_digest": None, "inputs": {}}
    return record, row


def _finished(statement: Any, folder: Path) -> float:
    """When the item was built, as its provenance says; else when its folder was made."""
    try:
        text = statement["predicate"]["runDetails"]["metadata"]["finishedOn"]
        when = dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
        return when.timestamp()
    except (KeyError, TypeError, ValueError):
        return folder.stat().st_mtime


def _adopt_inputs(store: Store) -> tuple[list[str], list[tuple[str, str]]]:
    """Index every input folder the index does not know whose content has its digest."""
    known = {digest for digest, _, _ in store.input_records()}
    origins = _input_origins(store.root / "items")
    adopted, skipped = [], []
    for home in sorted((store.root / "inputs").iterdir()):
        entries = sorted(home.iterdir()) if home.is_dir() and not home.is_symlink() else []
        digest = f"sha256:{home.name}"
        if len(entries) != 1 or not is_digest(digest):
            if entries or not home.is_dir():
                skipped.append((f"inputs/{home.name}", "not one input named by its digest"))
            continue
        rel = entries[0].relative_to(store.root).as_posix()
        if digest in known:  # its home is named by its digest, so its path is known too
            continue
        if not holds(entries[0], digest):
            skipped.append((rel, f"its content does not have the digest {digest}"))
            continue
        kind, origin = origins.get(digest, ("unknown", {}))
        store.index_input(digest, kind, origin, entries[0])
        adopted.append(digest)
    return adopted, skipped


def _input_origins(items: Path) -> dict[str, tuple[str, dict[str, Any]]]:
    """digest -> (kind, origin) of every input some item's provenance names."""
    origins: dict[str, tuple[str, dict[str, Any]]] = {}
    for folder in sorted(items.iterdir()):
        try:
            dependencies = _get(_json_file(folder, "provenance.json"), "predicate",
                                "buildDefinition", "resolvedDependencies")
        except _Unfit:
            continue
        for entry in dependencies if isinstance(dependencies, list) else []:
            found = _origin(entry)
            if found is not None:
                origins.setdefault(*found)
    return origins


def _origin(entry: Any) -> tuple[str, tuple[str, dict[str, Any]]] | None:
    """An input's digest, kind and origin from its entry among the resolved dependencies
    (the inverse of `provenance.statement`); None for code, items and what is not ours."""
    if not isinstance(entry, dict) or not str(entry.get("name", "")).startswith("input:"):
        return None
    annotations, digest = entry.get("annotations"), entry.get("digest")
    if not isinstance(annotations, dict) or not isinstance(digest, dict):
        return None
    kind = annotations.get("kind")
    if kind == "item" or not isinstance(kind, str):
        return None
    origin = {k: v for k, v in annotations.items() if k != "kind"}
    if "uri" in entry:
        origin["url"] = entry["uri"]
    return f"sha256:{digest.get('sha256')}", (kind, origin)


def _json_file(folder: Path, name: str) -> Any:
    path = folder / name
    try:
        if path.stat().st_size > JSON_LIMIT:
            raise _Unfit(f"{name}: larger than {JSON_LIMIT} bytes")
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise _Unfit(f"{name} is missing") from e
    except (OSError, ValueError, RecursionError) as e:  # unreadable, not JSON, too deep
        raise _Unfit(f"{name}: not readable JSON") from e


def _get(value: Any, *keys: str | int) -> Any:
    """value[k1][k2]..., or _Unfit naming the path that is not there."""
    for depth, key in enumerate(keys):
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError) as e:
            path = ".".join(str(k) for k in keys[:depth + 1])
            raise _Unfit(f"its records lack {path}") from e
    return value


def _text(value: Any, key: str) -> str:
    found = _get(value, key)
    if not isinstance(found, str):
        raise _Unfit(f"its records' {key} is not text")
    return found
