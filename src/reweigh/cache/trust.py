"""K of N: whether enough distinct trusted signers vouch for one item (pure).

A vote is a verified signature by a key of the trust list that is valid now. Votes are
counted by key id, so one key signing twice, or trusted under two names, is one signer
(in-toto#202). A vote counts for an item when it signs the same derivation, the same
weights and the same files as the item to be installed. When trusted signers sign
*different weights* for one derivation, somebody trusted is wrong or lying, and no
threshold is met, whatever the count: `guix challenge` would report it, and so does
`reweigh weather`. Signers who agree on the weights but list other files (two
independent builds with their own logs) do not count for each other's item, and are no
disagreement.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..signing import Claim, FileEntry


@dataclass(frozen=True)
class Vote:
    keyid: str
    name: str  # as the trust list names the key
    server: str
    claim: Claim


@dataclass(frozen=True)
class Refusal:
    """A signature that was listed but does not count, and why."""

    keyid: str
    name: str | None  # None: a key the trust list does not know
    server: str
    reason: str

    def line(self) -> str:
        who = self.name or f"key {self.keyid[:16]}"
        return f"{who} at {self.server}: {self.reason}"


@dataclass(frozen=True)
class Tally:
    counted: tuple[Vote, ...]  # one per distinct key, in the order found
    required: int
    disagreeing: dict[str, tuple[str, ...]]  # weights digest -> names of keys that signed it
    others: tuple[Vote, ...]  # agree on the weights, list other files

    @property
    def met(self) -> bool:
        return not self.disagreeing and len(self.counted) >= self.required

    def signers(self) -> list[str]:
        return [v.name for v in self.counted]


def tally(votes: list[Vote], derivation: str, weights: str, files: tuple[FileEntry, ...],
          required: int) -> Tally:
    """Count the distinct keys among `votes` that sign `derivation`, `weights` and exactly
    `files`; note any that sign other weights for the same derivation."""
    wanted = tuple(sorted(files))
    counted: dict[str, Vote] = {}
    others: dict[str, Vote] = {}
    by_weights: dict[str, dict[str, str]] = {}
    for vote in votes:
        claim = vote.claim
        if claim.derivation != derivation:
            continue
        by_weights.setdefault(claim.weights_digest, {})[vote.keyid] = vote.name
        if claim.weights_digest == weights and tuple(sorted(claim.files)) == wanted:
            counted.setdefault(vote.keyid, vote)
        elif claim.weights_digest == weights:
            others.setdefault(vote.keyid, vote)
    disagreeing = {}
    if len(by_weights) > 1:
        disagreeing = {digest: tuple(sorted(set(names.values())))
                       for digest, names in sorted(by_weights.items())}
    return Tally(tuple(counted.values()), required, disagreeing,
                 tuple(v for k, v in others.items() if k not in counted))
