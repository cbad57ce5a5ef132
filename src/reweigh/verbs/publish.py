"""`publish`: lay store items out as a static binary cache folder.

Each item is hashed again and checked against the store's index before it is packed
(a file damaged in place is never published), then written as one compressed archive,
its info record and every signature the store keeps for it, and listed in the folder's
bulk index (`reweigh.cache`). The chunks of its kept checkpoints go beside, once per
folder, each checked first; one the store lacks (an item pulled without it) or holds
damaged is named in the report and left out, and pulls find that checkpoint absent.
`--sign KEY` signs it on the way. An item with no signature is published with a
warning: pulls refuse it until someone signs it.

A kept signature is passed on only when it signs exactly this item's files; whether
its key is to be trusted is each puller's decision, not the publisher's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cache.chunks import Published as ChunksPublished
from ..cache.chunks import wanted
from ..cache.folder import CacheFolder
from ..errors import SignatureError
from ..keys import KeyRing
from ..signing import bundle_claim, sign
from ..store import Store
from ..store_signatures import KeptSignatures
from .sign import item_claim


@dataclass(frozen=True)
class Published:
    item: str
    archive: bool
    archive_size: int | None
    signers: tuple[str, ...]  # key ids
    skipped: tuple[str, ...]  # kept signatures not passed on, and why
    chunks: ChunksPublished | None = None  # its kept checkpoints' chunks (with the archive)

    def to_json(self) -> dict[str, Any]:
        chunks = None if self.chunks is None else {
            "added": self.chunks.added, "added_size": self.chunks.size,
            "absent": list(self.chunks.absent)}
        return {"item": self.item, "archive": self.archive, "archive_size": self.archive_size,
                "signers": list(self.signers), "skipped": list(self.skipped),
                "checkpoint_chunks": chunks}


@dataclass(frozen=True)
class PublishReport:
    folder: Path
    items: tuple[Published, ...]

    def to_json(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "items": [i.to_json() for i in self.items]}


def publish(refs: list[str], to: Path, *, sign_with: str | None = None, archive: bool = True,
            store: Store | None = None, keyring: KeyRing | None = None) -> PublishReport:
    """Publish the items `refs` name into the cache folder `to`."""
    store = store or Store()
    items = [store.resolve(ref) for ref in refs]  # every name is checked before any write
    signer = (keyring or KeyRing()).signer(sign_with) if sign_with is not None else None
    kept = KeptSignatures(store.root)
    folder = CacheFolder(to)
    done = []
    with folder.locked() as entries:
        for item in items:
            claim = item_claim(store, item)
            if signer is not None:
                kept.add(item.path.name, signer.public.keyid, sign(claim, signer, time.time()))
            info = folder.put_item(entries, item.path, claim, archive)
            chunks = folder.put_chunks(store.chunks, wanted(
                item.path, [f.path for f in claim.files])) if archive else None
            signers, skipped = [], []
            for keyid, bundle in kept.of(item.path.name).items():
                try:
                    signed = bundle_claim(bundle, f"signatures/{item.path.name}/{keyid}.sig")
                except SignatureError as e:
                    skipped.append(f"{keyid[:16]}: {e.message}")
                    continue
                if signed.agreement != claim.agreement or signed.keyid != keyid:
                    skipped.append(f"{keyid[:16]}: signs other files than the item has")
                    continue
                folder.put_signature(entries, claim, keyid, bundle)
                signers.append(keyid)
            done.append(Published(item.path.name, info.archive is not None,
                                  info.archive.size if info.archive else None, tuple(signers),
                                  tuple(skipped), chunks))
    return PublishReport(folder.root, tuple(done))
