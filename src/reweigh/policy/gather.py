"""Reading evidence out of the store: builds, rebuilds, challenges, imports, costs.

The I/O half of `evidence`: it opens an item's provenance and derivation, counts its
checkpoints, and asks the store's index which builds, checks and imports it has seen.
A built item is judged from its own files, so `reweigh check ITEM` works without the
recipe directory at hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..digest import file_digest
from ..provenance import environment_of
from ..store import Store, StoreItem
from .evidence import (
    DATA_KINDS,
    Cost,
    DataSource,
    Evidence,
    Imported,
    Origin,
    StoreRecord,
    build_cost,
    data_status,
    describe_origin,
)


def isolation_of(item_path: Path) -> str:
    """How an item's build was isolated, from its provenance: a sandbox's name, "none"
    (built with --sandbox none), or "unrecorded" (built before reweigh recorded it)."""
    isolation = _isolation_record(item_path)
    if not isinstance(isolation.get("sandbox"), str):
        return "unrecorded"
    return str(isolation["sandbox"])


def cluster_of(item_path: Path) -> str | None:
    """The Ray cluster an item's build ran ctx.map's tasks on (--cluster), from its
    provenance; None for a build that joined none."""
    cluster = _isolation_record(item_path).get("cluster")
    return cluster if isinstance(cluster, str) else None


def _isolation_record(item_path: Path) -> dict[str, Any]:
    try:
        env = environment_of(json.loads((item_path / "provenance.json").read_text()))
    except (OSError, ValueError, RecursionError):
        return {}
    isolation = (env or {}).get("isolation")
    return isolation if isinstance(isolation, dict) else {}


def store_record(store: Store, item: StoreItem) -> StoreRecord:
    """How often the item was built and rebuilt, on how many environments, and challenged."""
    checks = store.checks(item)
    rebuilds = [c for c in checks if c["kind"] == "rebuild"]
    same = [c for c in rebuilds if c["result"] == "identical"]
    environments = {item.environment_digest} | {c["detail"].get("environment_digest")
                                                 for c in same}
    builds = [a for a in store.attempts(item.derivation)
              if a["status"] == "built" and a["purpose"] == "build"]
    return StoreRecord(
        item=item.path.name, builds=len(builds), rebuilds_identical=len(same),
        rebuilds_different=len(rebuilds) - len(same),
        environments=tuple(sorted(e for e in environments if e)),
        challenges=tuple(c["result"] for c in checks if c["kind"] == "challenge"),
        isolation=isolation_of(item.path), cluster=cluster_of(item.path))


def measured_cost(store: Store, item: StoreItem) -> Cost | None:
    """The cost of the item's most recent successful build, as the store timed it."""
    done = [a for a in store.attempts(item.derivation)
            if a["status"] == "built" and a["ended_at"] is not None]
    if not done:
        return None
    last = done[-1]
    return build_cost({"started": last["started_at"], "finished": last["ended_at"],
                       "threads": last["threads"]},
                      what=f"the {last['purpose']} of {item.path.name} (attempt {last['id']})")


def item_evidence(store: Store, item: StoreItem) -> Evidence:
    """Evidence for a store item, from its files and the store's index."""
    imported = store.import_record(item)
    if imported is not None:
        return _imported(item, imported)
    definition = _read_json(item.path / "provenance.json").get("predicate", {}).get(
        "buildDefinition", {})
    dependencies = definition.get("resolvedDependencies", [])
    derivation = _read_json(item.path / "derivation.json")
    licence = definition.get("externalParameters", {}).get("recipe", {}).get("license", {})
    sources = tuple(_source(d) for d in dependencies if d["name"].startswith("input:")
                    and d.get("annotations", {}).get("kind") in DATA_KINDS)
    status, note = data_status(licence.get("data"), sources)
    # kept checkpoints: a manifest each (their files are chunks in the store); items built
    # before checkpoints were kept by content hold the files themselves
    checkpoints = sorted((item.path / "checkpoints").glob("*.json")) or sorted(
        (item.path / "checkpoints").glob("*.safetensors"))
    return Evidence(
        subject=f"{item.name} {item.version} (store item {item.path.name})",
        origin=Origin.RECIPE, code_licence=licence.get("code"),
        data_licence=licence.get("data"), weights_licence=licence.get("weights"),
        code=tuple(d["name"].removeprefix("code:") for d in dependencies
                   if d["name"].startswith("code:")),
        evaluate=derivation.get("evaluate"), data=sources, data_status=status, data_note=note,
        base_models=tuple(d.get("annotations", {}).get("item", d["name"]) for d in dependencies
                          if d.get("annotations", {}).get("kind") == "item"),
        intermediate=(f"{len(checkpoints)} checkpoint(s) in the item, chained in "
                      "transcript.json" if checkpoints else None),
        weights_digest=item.weights_digest, built=True, store=store_record(store, item),
        cost=measured_cost(store, item) or Cost(how="no build of it was timed"))


def _source(dependency: dict[str, Any]) -> DataSource:
    annotations = dict(dependency.get("annotations", {}))
    kind = annotations.pop("kind")
    if "uri" in dependency:
        annotations["url"] = dependency["uri"]
    algorithm, value = next(iter(dependency["digest"].items()))
    return DataSource(dependency["name"].removeprefix("input:"), kind, f"{algorithm}:{value}",
                      describe_origin(kind, annotations))


def _imported(item: StoreItem, record: dict[str, Any]) -> Evidence:
    training = "not published" if record["no_training_data"] else "not stated"
    return Evidence(
        subject=f"{item.name} {item.version} (imported item {item.path.name})",
        origin=Origin.IMPORTED, code_licence=None, data_licence=None,
        weights_licence=record["license"], data_status=data_status(None, (), _NO_DATA)[0],
        data_note=_NO_DATA + (" (the importer said none is published)"
                              if record["no_training_data"] else ""),
        weights_digest=item.weights_digest, built=False, store=StoreRecord(item=item.path.name),
        cost=Cost(how="imported without a recipe, there is nothing to recompute"),
        imported=Imported(record["source_name"], record["source_digest"], record["format"],
                          record["origin"], training))


_NO_DATA = "imported without a recipe: reweigh holds no training data for it"


def file_evidence(store: Store, path: Path) -> Evidence:
    """Evidence for a weights file: its item if the store knows its bytes, else nothing."""
    digest = file_digest(path)
    known = store.find_weights(digest)
    if known is not None:
        return item_evidence(store, known)
    return Evidence(
        subject=f"{path} (a file the store does not know)", origin=Origin.UNKNOWN_FILE,
        code_licence=None, data_licence=None, weights_licence=None,
        data_note="no recipe and no import record: nothing says what it was trained on",
        weights_digest=digest,
        cost=Cost(how="no recipe, so nothing can be recomputed"))


def _read_json(path: Path) -> dict[str, Any]:
    """An item's JSON file; a missing or damaged one reads as empty (the store verifies)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
