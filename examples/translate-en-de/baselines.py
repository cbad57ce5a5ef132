"""The two baselines a translator must beat, both built from the same training pairs.

- **copy**: the English as it is. Many messages keep names, numbers, placeholders and
  loan words (`PNG image` -> `PNG-Bild`), so copying scores above zero; a translator
  that only learned to copy would match it.
- **dictionary**: word by word, each English word replaced by the German word that
  co-occurs with it most strongly in the training pairs (the Dice coefficient,
  2 c(e, g) / (c(e) + c(g)), over pairs; ties to the more frequent, then the first in
  order), unknown words copied. It knows every word the training pairs hold, and no
  grammar: no reordering, no compounds, no agreement.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

_WORD_RE = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    return _WORD_RE.findall(text)


def copy(sentences: Iterable[str]) -> list[str]:
    return list(sentences)


class Dictionary:
    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        english: Counter[str] = Counter()
        german: Counter[str] = Counter()
        both: Counter[tuple[str, str]] = Counter()
        for source, target in pairs:
            e, g = set(words(source)), set(words(target))
            english.update(e)
            german.update(g)
            both.update((a, b) for a in e for b in g)
        best: dict[str, tuple[float, int, str]] = {}
        for (a, b), n in both.items():
            score = (2 * n / (english[a] + german[b]), n)
            if a not in best or (score, _neg(b)) > (best[a][:2], _neg(best[a][2])):
                best[a] = (*score, b)
        self.table = {a: entry[2] for a, entry in best.items()}

    def translate(self, sentence: str) -> str:
        out = [self.table.get(w, w) for w in words(sentence)]
        return re.sub(r" ([^\w\s])", r"\1", " ".join(out))


def _neg(word: str) -> tuple[int, ...]:
    """A key that sorts words backwards, so that max() prefers the first in order."""
    return (*(-ord(c) for c in word), 0)
