"""`list`, `show`, `path`, `store verify`: reading the store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..store import Corruption, Store, StoreItem


def list_items(store: Store | None = None) -> list[StoreItem]:
    return (store or Store()).items()


def path(ref: str, store: Store | None = None) -> Path:
    return (store or Store()).resolve(ref).path


def show(ref: str, store: Store | None = None) -> dict[str, Any]:
    """An item with its inputs, metrics, environment and the checks run against it."""
    store = store or Store()
    item = store.resolve(ref)
    metrics = json.loads((item.path / "metrics.json").read_text())
    provenance = json.loads((item.path / "provenance.json").read_text())
    environment = provenance["predicate"]["runDetails"].get("environment", {})
    return {
        "path": str(item.path), "name": item.name, "version": item.version,
        "derivation": item.derivation, "weights_digest": item.weights_digest,
        "environment_digest": item.environment_digest, "created_at": item.created_at,
        "inputs": store.item_inputs(item), "metrics": metrics.get("evaluation", {}),
        "environment": environment, "checks": store.checks(item),
        "attempts": store.attempts(item.derivation),
    }


def verify_store(store: Store | None = None) -> list[Corruption]:
    return (store or Store()).verify()
