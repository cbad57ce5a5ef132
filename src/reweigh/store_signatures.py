"""Signature bundles the store keeps beside its items.

    signatures/<item>/<key id>.sig    one Sigstore bundle per signer of the item

Beside the item, not in it: an item's folder is read-only and exactly the files its
signatures list, so a signature added later cannot change what it signs. `sign` adds
the local key's bundle, `pull` the verified bundles it counted, and `publish` copies them
all into a cache, so a mirror passes on every signature it was given. A kept bundle is a
copy, never a reason to trust: every reader verifies it again against its own trust list.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .keys import KEYID_RE
from .trees import discard


class KeptSignatures:
    def __init__(self, store_root: Path) -> None:
        self.root = store_root / "signatures"

    def add(self, item: str, keyid: str, bundle: bytes) -> Path:
        """Keep one signer's bundle for an item (replacing that signer's older one)."""
        if not KEYID_RE.fullmatch(keyid) or "/" in item or item.startswith("."):
            raise ValueError(f"not a key id or item name: {keyid!r}, {item!r}")
        folder = self.root / item
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{keyid}.sig"
        temporary = folder / f".{keyid}-{os.getpid()}-{time.time_ns()}"
        temporary.write_bytes(bundle)
        os.replace(temporary, target)
        return target

    def of(self, item: str) -> dict[str, bytes]:
        """Key id -> bundle of every kept signature of the item."""
        folder = self.root / item
        found = {}
        for path in sorted(folder.glob("*.sig")) if folder.is_dir() else []:
            if KEYID_RE.fullmatch(path.stem) and path.is_file() and not path.is_symlink():
                found[path.stem] = path.read_bytes()
        return found

    def discard(self, item: str) -> None:
        """Forget an item's signatures (its item is gone)."""
        discard(self.root / item, self.root.parent / "tmp")
