"""Digests: the one canonical way the tool names content.

Every digest that leaves the tool is written `sha256:<hex>`. Files are hashed
as bytes, folders as the canonical JSON list of their files' relative paths and
digests, and records as their canonical JSON (see `canonical_json`), so that the
same content always gets the same name and nothing else feeds the hash.

Canonical JSON is RFC 8785 (JSON Canonicalization Scheme), so a rebuilder written
in another language can recompute any digest from the specification alone. It is
not a general serialisation: I-JSON numbers only (integers within +-(2**53 - 1)),
and a whole float such as 1.0 is written like the integer 1. Whatever must read
back its exact Python types (a checkpoint's skeleton) uses plain `json` instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import rfc8785

from .errors import InputError, UsageError

ALGORITHM = "sha256"
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_CHUNK = 1 << 20
_COPY_CHUNK = 8 << 20


# The largest integer magnitude RFC 8785 accepts (I-JSON, RFC 7493: exact as a double).
MAX_SAFE_INTEGER = 2**53 - 1


def canonical_json(value: Any) -> bytes:
    """The single canonical serialisation that every hashed record goes through: RFC 8785.

    Raises ValueError (rfc8785's CanonicalizationError) for what I-JSON cannot hold:
    an integer beyond MAX_SAFE_INTEGER, NaN or an infinity, a non-string key, a string
    that is not valid Unicode."""
    return rfc8785.dumps(value)


def python_sorted_json(value: Any) -> bytes:
    """Python's `json.dumps` with sorted keys: how reweigh.derivation/1 records were
    canonicalised, kept to recompute and explain their digests; no specification
    defines it (keys sorted by code point, not UTF-16 unit; Python's float repr). Also
    the form of checkpoint skeletons, which must read back their Python types exactly
    and are not a record anyone else recomputes."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def bytes_digest(data: bytes | memoryview) -> str:
    return f"{ALGORITHM}:{hashlib.sha256(data).hexdigest()}"


def record_digest(value: Any) -> str:
    return bytes_digest(canonical_json(value))


def file_digest(path: Path) -> str:
    """Digest of a file's bytes, read in large chunks (runs near memory bandwidth)."""
    with open(path, "rb", buffering=0) as handle:
        return f"{ALGORITHM}:{hashlib.file_digest(handle, 'sha256').hexdigest()}"


class HashingWriter:
    """Writes blocks to an open file and hashes exactly the bytes written (`pull` unpacks
    an archive through it; `copy_hashing` does the same past the page cache), so what a
    store item's index names is what is on disk, read once. `hasher` continues a digest
    of bytes already in the file (a resumed write)."""

    def __init__(self, fd: int, hasher: Any = None, size: int = 0) -> None:
        self.fd = fd
        self.hasher = hasher or hashlib.sha256()
        self.size = size

    def write(self, block: bytes | bytearray | memoryview) -> None:
        view = memoryview(block)
        self.hasher.update(view)
        written = 0
        while written < len(view):
            written += os.write(self.fd, view[written:])
        self.size += len(view)

    def digest(self) -> str:
        return f"{ALGORITHM}:{self.hasher.hexdigest()}"


def copy_hashing(source: Path, target: Path) -> str:
    """Copy a file and return the digest of the bytes copied, reading it once: the digest
    is of exactly what was written, even if the source changes meanwhile. The copy goes
    past the page cache (`direct`): an imported model is not read again soon."""
    from .direct import buffer, write_new

    hasher, at = hashlib.sha256(), 0
    memory = buffer(_COPY_CHUNK)
    target.open("wb").close()
    try:
        with open(source, "rb", buffering=0) as reader, memoryview(memory) as view:
            while count := reader.readinto(view):
                hasher.update(view[:count])
                write_new(target, memory, count, at)
                at += count
    finally:
        memory.close()
    return f"{ALGORITHM}:{hasher.hexdigest()}"


def tree_files(root: Path) -> list[Path]:
    """Regular files under root, sorted; symlinks are refused so nothing escapes root."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in (*dirnames, *filenames):
            if (Path(dirpath) / name).is_symlink():
                raise InputError(f"{Path(dirpath) / name}: symbolic links are not allowed "
                                 "in inputs")
        found.extend(Path(dirpath) / name for name in sorted(filenames))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def tree_digest(root: Path) -> str:
    """Digest of a folder: `{"tree": [[path, file digest], ...]}`, each path relative
    and '/'-separated, sorted by code point (the order of their UTF-8 bytes)."""
    listing = [[p.relative_to(root).as_posix(), file_digest(p)] for p in tree_files(root)]
    return record_digest({"tree": listing})


def path_digest(path: Path) -> str:
    return tree_digest(path) if path.is_dir() else file_digest(path)


def is_digest(text: object) -> bool:
    return isinstance(text, str) and bool(_DIGEST_RE.fullmatch(text))


def parse_digest(text: str, what: str = "digest") -> str:
    """Validate a user-supplied digest string and return it unchanged."""
    if not is_digest(text):
        raise UsageError(f"{what}: expected 'sha256:' followed by 64 lowercase hex digits")
    return text


def short(digest: str, length: int = 32) -> str:
    """The hex part of a digest, cut to `length` characters (for store paths)."""
    return digest.split(":", 1)[1][:length]
