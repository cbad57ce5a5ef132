"""`export transcript`: an item's weights, transcript and kept checkpoints as plain files.

The store keeps checkpoints as chunks (`store_checkpoints`), which no one outside reweigh
reads. What a maintainer publishes beside the weights, so that anyone can `verify` them,
is the transcript with each kept checkpoint's file where the transcript names it; this
writes exactly that into a folder: every file of the item but the checkpoint manifests
(the weights, transcript.json, provenance, model card, metrics, the source), and each kept
checkpoint written out of its chunks, checked against its digest on the way.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import transcript as tr
from ..errors import UsageError
from ..store import Store
from ..store_checkpoints import Manifest, materialise
from .verify import _load


@dataclass(frozen=True)
class ExportReport:
    item: Path
    folder: Path
    checkpoints: int  # checkpoint files written
    recorded: int  # checkpoints the transcript records (kept or not)

    def to_json(self) -> dict[str, Any]:
        return {"item": str(self.item), "folder": str(self.folder),
                "checkpoints": self.checkpoints, "recorded": self.recorded}


def export_transcript(ref: str, folder: Path | str, store: Store | None = None) -> ExportReport:
    """Write item `ref`'s files and kept checkpoints into `folder` (new, or empty)."""
    store = store or Store()
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UsageError(f"{folder}: exists and is not an empty folder")
    item = store.resolve(ref)
    parsed = _load(item.path / "transcript.json")
    folder.mkdir(parents=True, exist_ok=True)
    manifests = set((item.path / "checkpoints").glob("*.json"))
    for path in sorted(item.path.rglob("*")):
        if path.is_file() and path not in manifests:
            target = folder / path.relative_to(item.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    written = 0
    for c in parsed.checkpoints:
        if c.file is not None:
            written += _write(c, item.path, folder, store)
    return ExportReport(item.path, folder, written, len(parsed.checkpoints))


def _write(c: tr.Checkpoint, item: Path, folder: Path, store: Store) -> int:
    """Write one kept checkpoint where the transcript names it."""
    assert c.file is not None
    manifest_path = (item / c.file).with_suffix(".json")
    manifest = (Manifest.read(manifest_path) if manifest_path.is_file()
                else store.kept_checkpoint(c.digest))
    if manifest is None or manifest.digest != c.digest:
        raise UsageError(f"{item}: step {c.step}: the store keeps no checkpoint "
                         f"{c.digest}")
    target = folder / c.file
    target.parent.mkdir(parents=True, exist_ok=True)
    materialise(manifest, store.chunks, target)
    return 1
