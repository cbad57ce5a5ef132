"""The paths of a cache folder and its records, read strictly.

Every path a client asks a server for is made here from an item name and key ids that
match their patterns, so no record a server sends can make a client ask for, or write
to, anything else. The records are claims: a reader checks their shape and types here
and their truth against the signed statements elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..digest import is_digest
from ..errors import SignatureError
from ..keys import KEYID_RE
from ..signing import ITEM_RE, FileEntry, safe_relative, strict_json

INDEX = "index.json"
INDEX_FORMAT = "reweigh.cache/1"
INFO_FORMAT = "reweigh.cache-item/1"
COMPRESSION = "zstd"
INDEX_LIMIT = 256 << 20
INFO_LIMIT = 64 << 20
MAX_SIZE = 1 << 50


def info_path(item: str) -> str:
    return f"items/{_item(item)}/info.json"


def archive_path(item: str) -> str:
    return f"items/{_item(item)}/item.tar.zst"


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


@dataclass(frozen=True)
class Archive:
    digest: str  # of the compressed bytes
    size: int
    unpacked: int  # the tar stream's size


@dataclass(frozen=True)
class Info:
    """An item's info record."""

    entry: Entry
    files: tuple[FileEntry, ...]
    archive: Archive | None

    def to_json(self) -> dict[str, Any]:
        archive = None if self.archive is None else {
            "path": archive_path(self.entry.item), "digest": self.archive.digest,
            "size": self.archive.size, "unpacked_size": self.archive.unpacked,
            "compression": COMPRESSION}
        return {"format": INFO_FORMAT, "item": self.entry.item, **self.entry.to_json(),
                "files": [{"path": f.path, "digest": f.digest, "size": f.size}
                          for f in self.files],
                "archive": archive}


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
        raise SignatureError(f"{where}: format: expected {INFO_FORMAT!r}")
    item = raw.get("item")
    if not isinstance(item, str):
        raise SignatureError(f"{where}: item: expected an item name")
    entry = _entry(item, raw, where)
    files = raw.get("files")
    if not isinstance(files, list) or not files:
        raise SignatureError(f"{where}: files: expected a list of files")
    listed = tuple(_file(f, f"{where}: files[{i}]") for i, f in enumerate(files))
    archive = raw.get("archive")
    if (archive is None) == entry.archive:
        raise SignatureError(f"{where}: archive: does not say what the index says")
    return Info(entry, listed, None if archive is None else _archive(archive, where))


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


def _archive(raw: Any, where: str) -> Archive:
    if not isinstance(raw, dict) or raw.get("compression") != COMPRESSION:
        raise SignatureError(f"{where}: archive.compression: expected {COMPRESSION!r}")
    digest, size, unpacked = raw.get("digest"), raw.get("size"), raw.get("unpacked_size")
    if not is_digest(digest):
        raise SignatureError(f"{where}: archive.digest: not a sha256 digest")
    for key, value in (("size", size), ("unpacked_size", unpacked)):
        if type(value) is not int or not 0 < value < MAX_SIZE:
            raise SignatureError(f"{where}: archive.{key}: not a size")
    assert isinstance(digest, str) and isinstance(size, int) and isinstance(unpacked, int)
    return Archive(digest, size, unpacked)
