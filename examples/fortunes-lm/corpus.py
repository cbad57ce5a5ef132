"""The fortunes corpus: Debian's fortune cookie files, split into fortunes, held out by
a seed, and spelt in a fixed alphabet of 98 characters.

A fortune file (`usr/share/games/fortunes/NAME`) is plain text whose entries end with a
line holding a single `%` (the format strfile(1) indexes; the `.dat` files beside are
those indexes and are not read). The model reads the files as they are written: each
fortune followed by its `%` line, so it learns where a fortune ends, and a sample starts
after a `%` line like a fortune does.

Which fortunes are held out is decided by a digest of the split seed and the fortune's
text, not by its position: a fortune that two files both hold (there are a few) lands on
the same side in both, so the held-out text never leaks into training.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

FOLDER = "usr/share/games/fortunes"  # where a fortunes package keeps its files
END = "%\n"  # the line that ends a fortune in a fortune file
UNKNOWN = "\ufffd"  # what any character outside the alphabet becomes
# Tab, newline and printable ASCII: all but 412 of the 2.5 million characters of the two
# packages' fortunes; the rest (311 backspaces for overstrike, 54 bells, 47 characters
# outside ASCII, some of them a twice-encoded apostrophe) become UNKNOWN, id 0.
ALPHABET = (UNKNOWN, "\t", "\n", *(chr(c) for c in range(0x20, 0x7F)))
IDS = {ch: i for i, ch in enumerate(ALPHABET)}


def fortune_files(inputs: Mapping[str, Path]) -> list[tuple[str, Path]]:
    """Every fortune file of every input, as (input:name, path), in a fixed order: by
    input name, then by path inside the package."""
    found = []
    for name in sorted(inputs):
        root = Path(inputs[name])
        for path in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix()):
            where = path.relative_to(root).parent.as_posix()
            if (where.endswith(FOLDER) and path.is_file() and not path.is_symlink()
                    and path.suffix != ".dat"):
                found.append((f"{name}:{path.name}", path))
    return found


def fortunes(text: str) -> list[str]:
    """The fortunes of one file's text, each ending in a newline and without its `%`
    line; blank lines around a fortune and empty fortunes are dropped."""
    found, lines = [], []
    for line in [*text.split("\n"), "%"]:  # the file's last fortune may lack its `%`
        if line != "%":
            lines.append(line)
            continue
        body = "\n".join(lines).strip("\n")
        if body.strip():
            found.append(body + "\n")
        lines = []
    return found


def load(inputs: Mapping[str, Path]) -> list[str]:
    """All fortunes of the inputs' files, in file order."""
    found = []
    for label, path in fortune_files(inputs):
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{label}: not UTF-8 text ({e})") from None
        found.extend(fortunes(text))
    if not found:
        raise ValueError("no fortune files in the inputs (usr/share/games/fortunes/*)")
    return found


def held_out(fortune: str, seed: int, share: float) -> bool:
    """Whether `fortune` is held out: a digest of the seed and its text, below `share`."""
    digest = hashlib.sha256(f"{seed}:{fortune}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < share * 2**64


def split(all_fortunes: Sequence[str], seed: int, share: float) -> tuple[list[str], list[str]]:
    """(training, held-out) fortunes, each in corpus order."""
    training, held = [], []
    for fortune in all_fortunes:
        (held if held_out(fortune, seed, share) else training).append(fortune)
    return training, held


def join(some: Sequence[str]) -> str:
    """Fortunes as a fortune file writes them: each followed by its `%` line."""
    return "".join(f + END for f in some)


def encode(text: str) -> list[int]:
    return [IDS.get(ch, 0) for ch in text]


def decode(ids: Sequence[int]) -> str:
    return "".join(ALPHABET[i] for i in ids)
