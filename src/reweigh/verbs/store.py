"""`list`, `show`, `path`, `store verify`: reading the store.

`store verify` rehashes everything and also reports what the index does not know
(folders in items/ or inputs/ without a row: an interrupted commit, or an index that
was lost or replaced), so that an empty index never reads as a verified store.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..digest import file_digest
from ..errors import WeightsError
from ..store import Corruption, Store, StoreItem, cores
from ..store_checkpoints import chunk_digest, decode
from ..store_inputs import holds
from ..trees import tree_stats


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
    """Rehash every file of every item and every input; report what does not match, and
    the folders the index does not know."""
    store = store or Store()
    problems = []
    for item, listing in sorted(store.item_listings().items()):
        problems.extend(_verify_item(store.root / "items" / item, item, listing))
    problems.extend(Corruption(name, "", "unknown") for name in store.unknown_items())
    inputs = store.input_listings()
    for digest, (rel, files) in sorted(inputs.items(), key=lambda kv: kv[1][0]):
        problems.extend(_verify_input(store.root, rel, digest, files))
    known = {rel for rel, _ in inputs.values()}
    problems.extend(Corruption(rel, "", "unknown") for rel in _input_entries(store.root)
                    if rel not in known)
    problems.extend(_verify_chunks(store))
    return problems


def _verify_chunks(store: Store) -> list[Corruption]:
    """Every chunk of kept checkpoints read back and rehashed (in parallel), and every
    chunk an item's manifest names present."""
    present = list(store.chunks.all())
    with ThreadPoolExecutor(cores()) as pool:
        damaged = [d for d, ok in zip(present, pool.map(_chunk_holds, [store] * len(present),
                                                        present), strict=True) if not ok]
    missing = sorted(set(store.chunk_references()) - set(present))
    where = lambda d: store.chunks.path(d).relative_to(store.root).as_posix()  # noqa: E731
    return ([Corruption(where(d), "", "modified") for d in damaged]
            + [Corruption(where(d), "", "missing") for d in missing])


def _chunk_holds(store: Store, digest: str) -> bool:
    try:
        data = decode(store.chunks.path(digest).read_bytes(), digest)
    except (OSError, WeightsError):
        return False
    return chunk_digest(data) == digest


def _verify_item(root: Path, item: str, listing: dict[str, str]) -> list[Corruption]:
    """An item's files against its listing; its files are rehashed in parallel."""
    problems = []
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} \
        if root.is_dir() else set()
    there = sorted(rel for rel in listing if rel in present)
    with ThreadPoolExecutor(min(cores(), len(there)) or 1) as pool:
        found = dict(zip(there, pool.map(file_digest, [root / rel for rel in there]),
                         strict=True))
    for relpath, digest in sorted(listing.items()):
        if relpath not in present:
            problems.append(Corruption(item, relpath, "missing"))
        elif found[relpath] != digest:
            problems.append(Corruption(item, relpath, "modified"))
    problems.extend(Corruption(item, rel, "unexpected") for rel in sorted(present - listing.keys()))
    return problems


def _verify_input(root: Path, rel: str, digest: str, files: list[str]) -> list[Corruption]:
    """An input's missing and unexpected files (against those recorded when it entered),
    else whether it still has its digest."""
    path = root / rel
    if not path.exists():
        return [Corruption(rel, "", "missing")]
    present = {s[0] for s in tree_stats(path)}
    problems = [Corruption(rel, f, "missing") for f in sorted(set(files) - present)]
    if files:
        problems += [Corruption(rel, f, "unexpected") for f in sorted(present - set(files))]
    if not problems and not holds(path, digest):
        problems.append(Corruption(rel, "", "modified"))
    return problems


def _input_entries(root: Path) -> list[str]:
    """Every file or folder kept under inputs/<hex>/, relative to the root."""
    return sorted(entry.relative_to(root).as_posix()
                  for home in (root / "inputs").iterdir() if home.is_dir()
                  for entry in home.iterdir())
