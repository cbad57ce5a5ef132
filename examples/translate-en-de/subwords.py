"""Byte-pair-encoding subwords, learned from the training pairs (one vocabulary for both
languages, so that names, numbers and placeholders such as `%s` are shared).

Text is cut into chunks first: a run of letters or digits, or one other character, each
carrying the space before it as a leading `▁` (SentencePiece's convention), so that
`decode(encode(text))` gives the text back up to white space; a `▁` in the text itself
reads as a space (it could not be told from one after decoding). Merges are learned in the
manner of Sennrich et al. (2016): start from characters, repeatedly join the most frequent
adjacent pair; ties go to the pair that sorts first, so the vocabulary is a function of
the pairs alone. The learner counts pairs incrementally (only the chunks that hold the
merged pair are recounted) and keeps the counts in a heap whose stale entries are
skipped, which keeps a few thousand merges to seconds.
"""

from __future__ import annotations

import heapq
import itertools
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

SPACE = "▁"
PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIAL = ("<pad>", "<s>", "</s>", "<unk>")
_CHUNK_RE = re.compile(r" ?[^\W_]+| ?[^\s]")
MAX_VOCAB_JSON = 4 << 20


def chunks(text: str) -> list[str]:
    words = text.replace(SPACE, " ").split()
    return [c.replace(" ", SPACE) for c in _CHUNK_RE.findall(" " + " ".join(words))]


@dataclass
class Subwords:
    tokens: list[str]  # id -> piece; the first four are SPECIAL
    merges: list[tuple[str, str]]
    _ids: dict[str, int] = field(default_factory=dict, repr=False)
    _ranks: dict[tuple[str, str], int] = field(default_factory=dict, repr=False)
    _cache: dict[str, list[int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._ids = {t: i for i, t in enumerate(self.tokens)}
        self._ranks = {m: i for i, m in enumerate(self.merges)}

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for chunk in chunks(text):
            if chunk not in self._cache:
                self._cache[chunk] = [self._ids.get(p, UNK) for p in self._split(chunk)]
            ids.extend(self._cache[chunk])
        return ids

    def _split(self, chunk: str) -> list[str]:
        parts = list(chunk)
        while len(parts) > 1:
            ranked = [(self._ranks.get((a, b), len(self._ranks)), i)
                      for i, (a, b) in enumerate(itertools.pairwise(parts))]
            rank, i = min(ranked)
            if rank == len(self._ranks):
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        return parts

    def decode(self, ids: Iterable[int]) -> str:
        pieces = [self.tokens[i] for i in ids if i >= len(SPECIAL) or i == UNK]
        return "".join(pieces).replace(SPACE, " ").strip()

    def to_json(self) -> bytes:
        return json.dumps({"tokens": self.tokens, "merges": self.merges},
                          ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Subwords:
        """Read a vocabulary saved with the weights, checking its shape (it came in a
        weights file, which may come from anywhere)."""
        if len(data) > MAX_VOCAB_JSON:
            raise ValueError("the vocabulary is larger than expected")
        value = json.loads(data.decode("utf-8"))
        tokens, merges = value.get("tokens"), value.get("merges")
        if not (isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)
                and tokens[:len(SPECIAL)] == list(SPECIAL) and isinstance(merges, list)
                and all(isinstance(m, list) and len(m) == 2 and all(isinstance(p, str)
                        for p in m) for m in merges)):
            raise ValueError("not a vocabulary: expected tokens and merges")
        return cls(tokens, [(a, b) for a, b in merges])


def learn(texts: Iterable[str], merges: int) -> Subwords:
    """A vocabulary of the characters seen and up to `merges` merged pieces."""
    counts = Counter(chunk for text in texts for chunk in chunks(text))
    words = [list(w) for w in counts]  # (W, pieces)
    freq = list(counts.values())
    pairs: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for w, pieces in enumerate(words):
        for pair in itertools.pairwise(pieces):
            pairs[pair] += freq[w]
            where[pair].add(w)
    alphabet = sorted({c for w in words for c in w})
    heap = [(-n, pair) for pair, n in pairs.items()]
    heapq.heapify(heap)
    learned: list[tuple[str, str]] = []
    while len(learned) < merges and heap:
        negative, best = heapq.heappop(heap)
        if pairs.get(best) != -negative:  # a stale count: the pair was recounted since
            continue
        if -negative < 2:
            break
        learned.append(best)
        changed: set[tuple[str, str]] = set()
        for w in sorted(where.pop(best, ())):
            changed |= _merge_word(words, freq, w, best, pairs, where)
        pairs.pop(best, None)
        for pair in sorted(changed - {best}):
            if pair in pairs:
                heapq.heappush(heap, (-pairs[pair], pair))
    tokens = [*SPECIAL, *alphabet, *(a + b for a, b in learned)]
    unique = list(dict.fromkeys(tokens))  # a merge may rebuild a piece another one made
    return Subwords(unique, learned)


def _merge_word(words: list[list[str]], freq: list[int], w: int, best: tuple[str, str],
                pairs: Counter[tuple[str, str]],
                where: dict[tuple[str, str], set[int]]) -> set[tuple[str, str]]:
    """Merge `best` in chunk w, updating the pair counts; the pairs whose count changed."""
    pieces = words[w]
    changed = set()
    for pair in itertools.pairwise(pieces):
        pairs[pair] -= freq[w]
        changed.add(pair)
        if pairs[pair] <= 0:
            del pairs[pair]
    merged, i = [], 0
    while i < len(pieces):
        if i + 1 < len(pieces) and (pieces[i], pieces[i + 1]) == best:
            merged.append(pieces[i] + pieces[i + 1])
            i += 2
        else:
            merged.append(pieces[i])
            i += 1
    words[w] = merged
    for pair in itertools.pairwise(merged):
        pairs[pair] += freq[w]
        where[pair].add(w)
        changed.add(pair)
    return changed
