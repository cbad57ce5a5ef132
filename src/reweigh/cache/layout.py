"""The paths of a cache folder and its records, read strictly.

Every path a client asks a server for is made here from an item name, key ids and chunk
digests that match their patterns, so no record a server sends can make a client ask for, or write
to, anything else. The records are claims: a reader checks their shape and types here
and their truth against the signed statements elsewhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..digest import is_digest
from ..errors import SignatureError
from ..keys import KEYID_RE
from ..signing import ITEM_RE, FileEntry, safe_relative, strict_json
from ..store_checkpoints import CHUNK

INDEX = "index.json"
INDEX_FORMAT = "reweigh.cache/1"
INFO_FORMAT = "reweigh.cache-item/2"
OLD_INFO_FORMATS = {"reweigh.cache-item/1": "a tar archive, which this version no longer reads"}
ENCODING = "reweigh.chunk/1"  # each piece in the store's chunk form (`store_checkpoints`)
INDEX_LIMIT = 256 << 20
INFO_LIMIT = 64 << 20
MAX_SIZE = 1 << 50
PIECE_LIMIT = CHUNK  # the most bytes one piece decodes to...
STORED_LIMIT = CHUNK + 4096  # ...and the most it may take in the archive (planes' headers)
CHUNK_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def info_path(item: str) -> str:
    return f"items/{_item(item)}/info.json"


def archive_path(item: str) -> str:
    return f"items/{_item(item)}/archive.rwc"


def chunk_path(digest: str) -> str:
    """Where a cache keeps a chunk of a kept checkpoint: by content, shared by its items."""
    if not CHUNK_RE.fullmatch(digest):
        raise ValueError(f"not a chunk digest: {digest!r}")
    hexa = digest.split(":", 1)[1]
    return f"chunks/{hexa[:2]}/{hexa}"


def signature_path(item: str, keyid: str) -> str:
    if not KEYID_RE.fullmatch(keyid):
        raise ValueError(f"not a key id: {keyid!r}")
    return f"items/{_item(item)}/signatures/{keyid}.sig"


def _item(item: str) -> str:
    if not ITEM_RE.fullmatch(item):
        raise ValueError(f"not an item name: {item!r}")
    return item


@dataclass(frozen=True)
class Entry:
    """An item as a server's index lists it."""

    item: str
    name: str
    version: str
    derivation: str
    weights_digest: str
    archive: bool
    signers: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "derivation": self.derivation,
                "weights_digest": self.weights_digest, "archive": self.archive,
                "signers": sorted(self.signers)}


Piece = tuple[int, int]  # (bytes in the archive, bytes it decodes to)


@dataclass(frozen=True)
class Archive:
    """An item's archive: each file of the info record, in its order, cut into pieces
    that follow one another (`cache.archive`)."""

    digest: str  # of the archive's bytes, for mirrors; a pull checks every piece instead
    size: int
    pieces: tuple[tuple[Piece, ...], ...]  # per file of the record, in its order

    def starts(self) -> list[int]:
        """Where each file's first piece starts in the archive."""
        offsets, at = [], 0
        for file_pieces in self.pieces:
            offsets.append(at)
            at += sum(stored for stored, _ in file_pieces)
        return offsets


@dataclass(frozen=True)
class Info:
    """An item's info record."""

    entry: Entry
    files: tuple[FileEntry, ...]  # in the archive's order
    archive: Archive | None

    def to_json(self) -> dict[str, Any]:
        archive = None if self.archive is None else {
            "path": archive_path(self.entry.item), "digest": self.archive.digest,
            "size": self.archive.size, "encoding": ENCODING}
        files = []
        for index, f in enumerate(self.files):
            row: dict[str, Any] = {"path": f.path, "digest": f.digest, "size": f.size}
            if self.archive is not None:
                row["pieces"] = [list(p) for p in self.archive.pieces[index]]
            files.append(row)
        return {"format": INFO_FORMAT, "item": self.entry.item, **self.entry.to_json(),
                "files": files, "archive": archive}


def index_json(entries: dict[str, Entry]) -> dict[str, Any]:
    return {"format": INDEX_FORMAT,
            "items": {name: entries[name].to_json() for name in sorted(entries)}}


def read_index(data: bytes, where: str) -> dict[str, Entry]:
    found = strict_json(data, where, SignatureError)
    if not isinstance(found, dict) or found.get("format") != INDEX_FORMAT \
            or not isinstance(found.get("items"), dict):
        raise SignatureError(f"{where}: format: expected {INDEX_FORMAT!r} with an items table")
    return {item: _entry(item, raw, f"{where}: items[{item!r}]")
            for item, raw in found["items"].items()}


def read_info(data: bytes, where: str) -> Info:
    raw = strict_json(data, where, SignatureError)
    if not isinstance(raw, dict) or raw.get("format") != INFO_FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else None
        if isinstance(found, str) and found in OLD_INFO_FORMATS:
            raise SignatureError(f"{where}: format: {found} ({OLD_INFO_FORMATS[found]}); "
                                 "the cache must be published again (reweigh publish)")
        raise SignatureError(f"{where}: format: expected {INFO_FORMAT!r}")
    item = raw.get("item")
    if not isinstance(item, str):
        raise SignatureError(f"{where}: item: expected an item name")
    entry = _entry(item, raw, where)
    files = raw.get("files")
    if not isinstance(files, list) or not files:
        raise SignatureError(f"{where}: files: expected a list of files")
    listed = tuple(_file(f, f"{where}: files[{i}]") for i, f in enumerate(files))
    _distinct(listed, where)
    archive = raw.get("archive")
    if (archive is None) == entry.archive:
        raise SignatureError(f"{where}: archive: does not say what the index says")
    if archive is None:
        return Info(entry, listed, None)
    pieces = tuple(_pieces(f, entry, f"{where}: files[{i}]") for i, (f, entry)
                   in enumerate(zip(files, listed, strict=True)))
    return Info(entry, listed, _archive(archive, pieces, where))


def read_format(data: bytes) -> str | None:
    """The format a record says it has, or None (for telling an older cache's records
    from damaged ones)."""
    try:
        raw = strict_json(data, "", SignatureError)
    except SignatureError:
        return None
    found = raw.get("format") if isinstance(raw, dict) else None
    return found if isinstance(found, str) else None


def _entry(item: str, raw: Any, where: str) -> Entry:
    if not ITEM_RE.fullmatch(item) or not isinstance(raw, dict):
        raise SignatureError(f"{where}: not an item name and its record")
    texts = {}
    for key in ("name", "version", "derivation", "weights_digest"):
        if not isinstance(raw.get(key), str):
            raise SignatureError(f"{where}.{key}: expected text")
        texts[key] = raw[key]
    for key in ("derivation", "weights_digest"):
        if not is_digest(texts[key]):
            raise SignatureError(f"{where}.{key}: not a sha256 digest")
    if not item.startswith(texts["derivation"][7:39]) \
            or item != f"{item[:32]}-{texts['name']}-{texts['version']}":
        raise SignatureError(f"{where}: the item's name does not follow from its derivation, "
                             "name and version")
    signers = raw.get("signers")
    if not isinstance(signers, list) or not all(isinstance(s, str) and KEYID_RE.fullmatch(s)
                                                for s in signers):
        raise SignatureError(f"{where}.signers: expected a list of key ids")
    if not isinstance(raw.get("archive"), bool | dict | type(None)):
        raise SignatureError(f"{where}.archive: expected true or false")
    return Entry(item, texts["name"], texts["version"], texts["derivation"],
                 texts["weights_digest"], bool(raw.get("archive")), tuple(dict.fromkeys(signers)))


def _file(raw: Any, where: str) -> FileEntry:
    if not isinstance(raw, dict):
        raise SignatureError(f"{where}: expected an object")
    path, digest, size = raw.get("path"), raw.get("digest"), raw.get("size")
    if not isinstance(path, str) or safe_relative(path) is None:
        raise SignatureError(f"{where}.path: {path!r} is not a plain relative path")
    if not is_digest(digest):
        raise SignatureError(f"{where}.digest: not a sha256 digest")
    if type(size) is not int or not 0 <= size < MAX_SIZE:
        raise SignatureError(f"{where}.size: not a size")
    assert isinstance(digest, str)
    return FileEntry(path, digest, size)


def _distinct(files: tuple[FileEntry, ...], where: str) -> None:
    """No file twice, and none where another's folder would be."""
    paths = {f.path for f in files}
    if len(paths) != len(files):
        raise SignatureError(f"{where}: files: a path is listed twice")
    for f in files:
        parts = f.path.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in paths:
                raise SignatureError(f"{where}: files: {'/'.join(parts[:depth])!r} is both a "
                                     "file and a folder")


def _pieces(raw: Any, entry: FileEntry, where: str) -> tuple[Piece, ...]:
    pieces = raw.get("pieces")
    if not isinstance(pieces, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(type(n) is int for n in p)
            and 0 < p[0] <= STORED_LIMIT and 0 < p[1] <= PIECE_LIMIT for p in pieces):
        raise SignatureError(f"{where}.pieces: expected [[stored bytes, bytes], ...], each "
                             f"piece of at most {PIECE_LIMIT} bytes")
    if sum(p[1] for p in pieces) != entry.size:
        raise SignatureError(f"{where}.pieces: they do not add up to the file's size")
    return tuple((p[0], p[1]) for p in pieces)


def _archive(raw: Any, pieces: tuple[tuple[Piece, ...], ...], where: str) -> Archive:
    if not isinstance(raw, dict) or raw.get("encoding") != ENCODING:
        raise SignatureError(f"{where}: archive.encoding: expected {ENCODING!r}")
    digest, size = raw.get("digest"), raw.get("size")
    if not is_digest(digest):
        raise SignatureError(f"{where}: archive.digest: not a sha256 digest")
    if type(size) is not int or not 0 < size < MAX_SIZE:
        raise SignatureError(f"{where}: archive.size: not a size")
    if size != sum(stored for file_pieces in pieces for stored, _ in file_pieces):
        raise SignatureError(f"{where}: archive.size: not the sum of its files' pieces")
    assert isinstance(digest, str)
    return Archive(digest, size, pieces)
