"""English -> German message pairs from the catalogues of the recipe's Debian packages.

Every input of the recipe is a Debian package unpacked by reweigh (its `files` keep
the German catalogues only); every `.mo` file in it is read with the strict reader in
`mofile`, in a fixed order (inputs by name, files by path). A message becomes a pair
when it has a translation, after light cleaning that a user interface would apply:

- the context (`print operation status\\x04Finished`) is dropped, the singular kept;
- mnemonic markers are removed (`_Open` -> `Open`, `O_pen` -> `Open`; GTK's convention);
- runs of white space become one space; messages over `max_words` words or spread over
  several lines (command-line help) are left out: this is a model of short messages.

The split is by the English text: a message is held out when the SHA-256 of its cleaned
English falls in the held-out share, so the same English never lies on both sides, even
when two packages translate it (GTK 2 and GTK 3 share hundreds of messages).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mofile import read_mo

_MNEMONIC_RE = re.compile(r"_(?=\w)")
_SPACE_RE = re.compile(r"\s+")


@dataclass(frozen=True)
class Pair:
    english: str
    german: str
    source: str  # package folder and catalogue, for people


def catalogues(inputs: dict[str, Path]) -> list[tuple[str, Path]]:
    """(label, path) of every .mo file of every input, in a fixed order."""
    found = []
    for name in sorted(inputs):
        root = Path(inputs[name])
        for path in sorted(root.rglob("*.mo"), key=lambda p: p.relative_to(root).as_posix()):
            found.append((f"{name}:{path.name}", path))
    return found


def clean(text: str) -> str:
    return _SPACE_RE.sub(" ", _MNEMONIC_RE.sub("", text)).strip()


def read_pairs(inputs: dict[str, Path], max_words: int) -> list[Pair]:
    """Every usable pair, in catalogue order, each (English, German) once."""
    pairs, seen = [], set()
    for label, path in catalogues(inputs):
        for message in read_mo(path):
            if "\n" in message.msgid.strip() or not message.translations[0].strip():
                continue
            english, german = clean(message.msgid), clean(message.translations[0])
            if not english or not german or len(english.split()) > max_words \
                    or len(german.split()) > 2 * max_words or (english, german) in seen:
                continue
            seen.add((english, german))
            pairs.append(Pair(english, german, label))
    return pairs


def held_out(english: str, share: float) -> bool:
    bucket = int.from_bytes(hashlib.sha256(english.encode()).digest()[:4], "big")
    return bucket < share * 2**32


def split(pairs: Iterable[Pair], share: float) -> tuple[list[Pair], list[Pair]]:
    """(training pairs, held-out pairs): held-out English keeps its first translation."""
    train, test, tested = [], [], set()
    for pair in pairs:
        if not held_out(pair.english, share):
            train.append(pair)
        elif pair.english not in tested:
            tested.add(pair.english)
            test.append(pair)
    return train, test
