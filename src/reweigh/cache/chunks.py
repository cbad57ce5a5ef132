"""Kept checkpoints in a cache: their chunks, published once per cache, fetched by digest.

An item keeps each checkpoint as a manifest among its files (`checkpoints/step-N.json`,
signed like every file of the item) that names the checkpoint's chunks by the SHA-256
of their bytes. A cache keeps the chunks beside its items, `chunks/<2 hex>/<64 hex>`,
in the store's chunk form (`store_checkpoints`), one copy for every item that has it,
as the store keeps them. A chunk needs no signature of its own: the manifest that names
it is signed, and a chunk is used only once its bytes decode to the length and digest
the manifest gives. A chunk no server has leaves its checkpoint absent (`verify` replays
through it, or fetches it later with `--from`); a chunk whose bytes are not what its
name says is a server lying, and refused.

`publish` copies into a cache folder the chunks it lacks, each checked first; `fetch`
asks servers for chunks, several at a time over kept-alive connections, and writes each
checked chunk into a folder of the caller's (a pull's staging folder, a verify's scratch
folder), from which the store adopts them.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ReweighError, SignatureError, WeightsError
from ..store_checkpoints import Chunks, Manifest, checked
from . import layout
from .client import Source

WORKERS = 8
_MANIFEST_RE = re.compile(r"^checkpoints/[^/]+\.json$")


def wanted(folder: Path, paths: Iterable[str]) -> dict[str, int]:
    """Chunk digest -> length of every chunk the item's kept checkpoints name (its
    manifests among `paths`, the item's files; one that does not read names none, as
    the store's index takes it)."""
    found: dict[str, int] = {}
    for rel in sorted(paths):
        if _MANIFEST_RE.fullmatch(rel):
            try:
                manifest = Manifest.read(folder / rel)
            except ReweighError:
                continue
            found.update(manifest.chunks)
    return found


@dataclass(frozen=True)
class Published:
    added: int  # chunks copied into the cache
    size: int  # their bytes there
    absent: tuple[str, ...]  # named by a manifest, but not whole in the store: not published


def publish(chunks: Chunks, needed: dict[str, int], root: Path) -> Published:
    """Copy into the cache folder `root` the chunks of `needed` it lacks, each checked
    against its digest first (a damaged one is left out, with the missing ones)."""
    added, size, absent = 0, 0, []
    for digest, length in sorted(needed.items()):
        target = root / layout.chunk_path(digest)
        if target.is_file():
            continue
        try:
            stored = chunks.stored(digest)
            checked(stored, digest, length, str(chunks.path(digest)))
        except WeightsError:
            absent.append(digest)
            continue
        _write(target, stored, 0o644)
        added += 1
        size += len(stored)
    return Published(added, size, tuple(absent))


@dataclass
class Fetched:
    """What `fetch` got: chunk digest -> its checked stored form's file, and the rest."""

    files: dict[str, Path] = field(default_factory=dict)
    absent: list[str] = field(default_factory=list)  # no server asked has it
    received: int = 0  # bytes over the network
    requests: int = 0


def fetch(sources: list[Source], needed: dict[str, int], target: Path) -> Fetched:
    """Fetch the chunks of `needed` into the folder `target` (`<64 hex>` each), asking
    the sources in order for each; a chunk an earlier, interrupted fetch left there is
    checked again and kept. SignatureError when a server sends a chunk that does not
    have its digest; Unreachable when a server cannot be asked."""
    target.mkdir(parents=True, exist_ok=True)
    fetched = Fetched()
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        for digest, (path, received, requests) in zip(
                sorted(needed), pool.map(lambda d: _one(sources, d, needed[d], target),
                                         sorted(needed)), strict=True):
            fetched.received += received
            fetched.requests += requests
            if path is None:
                fetched.absent.append(digest)
            else:
                fetched.files[digest] = path
    return fetched


def _one(sources: list[Source], digest: str, length: int,
         target: Path) -> tuple[Path | None, int, int]:
    """One chunk: (its file, or None when no source has it; bytes received; requests)."""
    path = target / digest.split(":", 1)[1]
    if path.is_file() and not path.is_symlink():
        try:
            checked(path.read_bytes(), digest, length, str(path))
            return path, 0, 0
        except WeightsError:
            path.unlink()
    rel = layout.chunk_path(digest)
    received = requests = 0
    for source in sources:
        requests += 1
        data = source.get(rel, layout.STORED_LIMIT)
        if data is None:
            continue
        received += len(data)
        where = f"{source.label}/{rel}"
        try:
            checked(data, digest, length, where)
        except WeightsError as e:
            raise SignatureError(f"{where}: not the chunk its digest names "
                                 f"({e.message.removeprefix(where + ': ')}); refused") from e
        _write(path, data, 0o600)
        return path, received, requests
    return None, received, requests


def _write(target: Path, data: bytes, mode: int) -> None:
    """Write a file whole or not at all (a temporary name, then one rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".{target.name}-{os.getpid()}-{time.time_ns()}"
    temporary.write_bytes(data)
    os.chmod(temporary, mode)
    os.replace(temporary, target)
