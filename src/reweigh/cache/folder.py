"""Writing a cache folder: archives, info records, signatures and the bulk index.

Each file appears with one rename, readable by all (a web server may run as another
user), and the index is rewritten last, under a lock, so a server never lists an item
whose records are not there yet. The chunks of items' kept checkpoints are kept once per
folder, by content (`cache.chunks`). Publishing an item again is cheap when its archive is
already there for the same files; a different item under the same name (another build
of the derivation with other files) is refused rather than replaced: a cache holds one
item per derivation, and its signers vouch for that one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import SignatureError, UsageError
from ..signing import Claim
from ..store_checkpoints import Chunks
from . import chunks as cache_chunks
from . import layout
from .archive import write_archive

_MODE_FILE = 0o644
_MODE_FOLDER = 0o755


class CacheFolder:
    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        if self.root.exists() and not self.root.is_dir():
            raise UsageError(f"--to: {root}: not a folder")
        self.root.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[dict[str, layout.Entry]]:
        """Hold the folder's lock; yields the index's entries, written back at the end."""
        with open(self.root / ".lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                entries = self.entries()
                yield entries
                self._write(layout.INDEX, json.dumps(layout.index_json(entries), indent=1)
                            .encode() + b"\n")
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def entries(self) -> dict[str, layout.Entry]:
        path = self.root / layout.INDEX
        if not path.exists():
            return {}
        try:
            return layout.read_index(path.read_bytes(), str(path))
        except SignatureError as e:
            raise UsageError(f"{path}: not a cache index this tool wrote ({e.message})") from e

    def put_item(self, entries: dict[str, layout.Entry], folder: Path, claim: Claim,
                 archive: bool) -> layout.Info:
        """The item's info record and (unless only signatures are published) its archive."""
        item = claim.item
        known = self._info(item)
        if known is not None and tuple(sorted(known.files)) != tuple(sorted(claim.files)):
            raise UsageError(f"{self.root}: already holds {item} with other files (another "
                             "build of this derivation); a cache holds one item per derivation")
        packed = known.archive if known is not None else None
        if archive and packed is None:
            self._forget_old(item)
            staged = self.root / "items" / item / f".item-{os.getpid()}-{time.time_ns()}"
            staged.parent.mkdir(parents=True, exist_ok=True, mode=_MODE_FOLDER)
            written = write_archive(folder, claim.files, staged)
            os.chmod(staged, _MODE_FILE)
            os.replace(staged, self.root / layout.archive_path(item))
            packed = layout.Archive(written.digest, written.size, written.pieces)
        signers = entries[item].signers if item in entries else ()
        entry = layout.Entry(item, claim.name, claim.version, claim.derivation,
                             claim.weights_digest, packed is not None, signers)
        info = layout.Info(entry, claim.files, packed)
        self._write(layout.info_path(item), _json(info.to_json()))
        entries[item] = entry
        return info

    def put_signature(self, entries: dict[str, layout.Entry], claim: Claim, keyid: str,
                      bundle: bytes) -> None:
        """Add one signer's bundle; an item the folder does not hold gets a record
        without an archive (a rebuilder's cache holds signatures only)."""
        if claim.item not in entries or self._info(claim.item) is None:
            self.put_item(entries, Path(), claim, archive=False)
        self._write(layout.signature_path(claim.item, keyid), bundle)
        entry = entries[claim.item]
        signers = tuple(dict.fromkeys((*entry.signers, keyid)))
        entries[claim.item] = replace(entry, signers=signers)
        info = self._info(claim.item)
        assert info is not None
        self._write(layout.info_path(claim.item),
                    _json(layout.Info(entries[claim.item], info.files, info.archive).to_json()))

    def put_chunks(self, chunks: Chunks, needed: dict[str, int]) -> cache_chunks.Published:
        """The chunks of an item's kept checkpoints that the folder lacks (`cache.chunks`)."""
        return cache_chunks.publish(chunks, needed, self.root)

    def _info(self, item: str) -> layout.Info | None:
        """The item's info record; None when there is none, or one of an older format
        (published again, it is replaced)."""
        path = self.root / layout.info_path(item)
        if not path.is_file():
            return None
        data = path.read_bytes()
        if layout.read_format(data) in layout.OLD_INFO_FORMATS:
            return None
        try:
            return layout.read_info(data, str(path))
        except SignatureError as e:
            raise UsageError(f"{path}: not an info record this tool wrote ({e.message})") from e

    def _forget_old(self, item: str) -> None:
        """Remove the archive of an older format an item's folder may hold."""
        (self.root / "items" / item / "item.tar.zst").unlink(missing_ok=True)

    def _write(self, rel: str, data: bytes) -> None:
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True, mode=_MODE_FOLDER)
        temporary = target.parent / f".{target.name}-{os.getpid()}-{time.time_ns()}"
        temporary.write_bytes(data)
        os.chmod(temporary, _MODE_FILE)
        os.replace(temporary, target)


def _json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, indent=1).encode() + b"\n"

