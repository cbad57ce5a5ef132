"""A strict reader of GNU gettext's compiled catalogues (`.mo` files).

The catalogues come from Debian packages, which is to say from elsewhere, so they are
read here rather than by `gettext.GNUTranslations`, which trusts the tables it is given.
This reader checks everything it uses: the magic number (either byte order), a known
major revision, that both string tables and every string lie inside the file, that each
string is followed by the NUL the format puts after it, that the original strings are in
strictly increasing order (msgfmt sorts them for its binary search, so a file out of order
was not written by it), that the catalogue declares UTF-8 (or plain ASCII) and that every
string decodes as such. Anything else is a `MoError` naming the file and the reason.

The format (GNU gettext manual, "The Format of GNU MO Files"): a header of 32-bit words:
magic 0x950412de, revision, N strings, the offset of the table of original strings, the
offset of the table of translations, and a hash table's size and offset (not used
here); each table holds N (length, offset) pairs. An original may hold a context
(`context EOT msgid`) and a plural form (`msgid NUL msgid_plural`); a translation of a
plural holds its forms separated by NUL. Minor revision 1 adds system-dependent strings
(`<inttypes.h>` formats) in further tables, which this reader leaves out.
"""

from __future__ import annotations

import itertools
import re
import struct
from dataclasses import dataclass
from pathlib import Path

MAGIC = 0x950412DE
MAX_BYTES = 64 << 20
HEADER_WORDS = 7
_CHARSET_RE = re.compile(r"charset=([A-Za-z0-9_.:-]+)", re.IGNORECASE)


class MoError(ValueError):
    """A file that is not a well-formed .mo catalogue this reader accepts."""


@dataclass(frozen=True)
class Message:
    context: str | None
    msgid: str
    plural: str | None
    translations: tuple[str, ...]  # one, or one per plural form


def read_mo(path: Path) -> list[Message]:
    """The messages of a catalogue (without its header entry), in file order."""
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise MoError(f"{path}: larger than {MAX_BYTES} bytes")
    return parse_mo(path.read_bytes(), str(path))


def parse_mo(data: bytes, label: str = "catalogue") -> list[Message]:
    if len(data) < 4 * HEADER_WORDS:
        raise MoError(f"{label}: too short for a .mo header")
    order = _byte_order(data, label)
    _, revision, count, originals, translations, _, _ = struct.unpack_from(
        f"{order}{HEADER_WORDS}I", data)
    if revision >> 16 not in (0, 1):
        raise MoError(f"{label}: unknown major revision {revision >> 16}")
    if count > len(data) // 16:  # each message needs two table entries of 8 bytes at least
        raise MoError(f"{label}: {count} messages cannot fit in {len(data)} bytes")
    keys = _strings(data, order, originals, count, label, "original")
    values = _strings(data, order, translations, count, label, "translation")
    for before, after in itertools.pairwise(keys):
        if not before < after:
            raise MoError(f"{label}: original strings are not in strictly increasing order "
                          f"({after[:40]!r} after {before[:40]!r})")
    _check_charset(keys, values, label)
    return [_message(k, v, label) for k, v in zip(keys, values, strict=True) if k]


def _byte_order(data: bytes, label: str) -> str:
    if struct.unpack_from("<I", data)[0] == MAGIC:
        return "<"
    if struct.unpack_from(">I", data)[0] == MAGIC:
        return ">"
    raise MoError(f"{label}: not a .mo file (bad magic number)")


def _strings(data: bytes, order: str, table: int, count: int, label: str,
             what: str) -> list[bytes]:
    if table % 4 or table + 8 * count > len(data) or (table < 4 * HEADER_WORDS and count):
        raise MoError(f"{label}: the table of {what} strings lies outside the file or inside "
                      "the header")
    found = []
    for i in range(count):
        length, offset = struct.unpack_from(f"{order}2I", data, table + 8 * i)
        if offset + length >= len(data):
            raise MoError(f"{label}: {what} string {i} lies outside the file")
        if data[offset + length] != 0:
            raise MoError(f"{label}: {what} string {i} is not followed by a NUL")
        found.append(data[offset:offset + length])
    return found


def _check_charset(keys: list[bytes], values: list[bytes], label: str) -> None:
    """The header entry (the translation of the empty msgid) must declare UTF-8 or ASCII;
    a catalogue without one must be ASCII."""
    header = values[keys.index(b"")] if b"" in keys else b""
    match = _CHARSET_RE.search(header.decode("ascii", "replace"))
    charset = match.group(1).lower() if match else "ascii"
    if charset not in ("utf-8", "utf8", "ascii", "us-ascii"):
        raise MoError(f"{label}: declares charset {charset}; only UTF-8 is read")


def _text(raw: bytes, label: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MoError(f"{label}: a string is not UTF-8 at byte {e.start}") from e


def _message(key: bytes, value: bytes, label: str) -> Message:
    context, _, msgid = key.partition(b"\x04") if b"\x04" in key else (None, None, key)
    singular, _, plural = msgid.partition(b"\x00")
    forms = tuple(_text(f, label) for f in value.split(b"\x00"))
    if plural and b"\x00" in plural:
        raise MoError(f"{label}: message {singular[:40]!r} has more than one plural msgid")
    return Message(None if context is None else _text(context, label), _text(singular, label),
                   _text(plural, label) if b"\x00" in msgid else None, forms)
