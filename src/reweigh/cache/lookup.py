"""Finding an item among several caches, and collecting its signers' votes.

One index per server, fetched at most once per command, in the order the user gave the
servers; a search stops at the first servers that together hold the item's archive and
enough trusted signers, so a pull from a good first server asks no other. Signatures
are fetched only for keys the user trusts (an untrusted signature cannot count, so
there is no point downloading it), and only until enough have verified, except those
that sign other weights for the same derivation, which are always checked: a trusted
signer that disagrees stops the pull.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx

from ..digest import is_digest
from ..errors import SignatureError, UsageError
from ..keys import KeyRing, TrustedKey
from ..signing import BUNDLE_LIMIT, verify
from . import layout
from .client import Source, Unreachable
from .trust import Refusal, Vote

Found = list[tuple[Source, layout.Entry]]


@dataclass
class Caches:
    """The caches of one command, with what was asked of each."""

    sources: list[Source]
    keyring: KeyRing
    now: float = field(default_factory=time.time)
    requests: int = 0
    problems: list[str] = field(default_factory=list)
    _indexes: dict[str, dict[str, layout.Entry] | None] = field(default_factory=dict)

    @classmethod
    def open(cls, locations: list[str], client: httpx.Client, keyring: KeyRing) -> Caches:
        if not locations:
            raise UsageError("--from: give at least one cache (an http(s):// URL or a folder)")
        return cls([Source(location, client) for location in locations], keyring)

    def index(self, source: Source) -> dict[str, layout.Entry] | None:
        """The server's index (None when it cannot be read; the reason is in problems)."""
        if source.label not in self._indexes:
            found = None
            try:
                self.requests += 1
                data = source.get(layout.INDEX, layout.INDEX_LIMIT)
                if data is None:
                    self.problems.append(f"{source.label}: no {layout.INDEX}; not a cache")
                else:
                    found = layout.read_index(data, f"{source.label}/{layout.INDEX}")
            except SignatureError as e:
                self.problems.append(e.message)
            self._indexes[source.label] = found
        return self._indexes[source.label]

    def find(self, ref: str, enough: Callable[[Found], bool]) -> Found:
        """The entries of the item `ref` names (item name, derivation, weights digest or
        name), server by server until `enough` says so."""
        found: Found = []
        for source in self.sources:
            index = self.index(source)
            if index is None:
                continue
            matches = sorted({e.item: e for e in index.values() if matches_ref(ref, e)}.values(),
                             key=lambda e: e.item)
            if found:  # the first server that had it decided which item `ref` means
                matches = [e for e in matches if e.item == found[0][1].item]
            if len(matches) > 1:
                raise UsageError(f"{ref}: ambiguous at {source.label}: "
                                 + ", ".join(e.item for e in matches) + " (give the derivation)")
            if matches:
                found.append((source, matches[0]))
                if enough(found):
                    break
        return found

    def listing(self, found: Found, source: Source, item: str) -> layout.Entry | None:
        """What `source` lists for `item`: its entry in `found`, else from its index (read
        once), then added to `found`."""
        listed = next((e for s, e in found if s is source), None)
        if listed is None:
            listed = (self.index(source) or {}).get(item)
            if listed is not None:
                found.append((source, listed))
        return listed

    def mirrors(self, found: Found, entry: layout.Entry) -> Iterator[Source]:
        """The servers with the archive of `entry`'s item (its derivation and weights):
        those in `found` first, then the others in the user's order, each one's index
        read only when the caller asks for the next server (a fallback costs nothing
        until it is needed)."""
        tried: set[str] = set()
        for source in [s for s, e in found if e.archive and same_item(e, entry)]:
            tried.add(source.label)
            yield source
        for source in self.sources:
            if source.label in tried:
                continue
            listed = self.listing(found, source, entry.item)
            if listed is not None and listed.archive and same_item(listed, entry):
                tried.add(source.label)
                yield source

    def checked_info(self, source: Source, entry: layout.Entry) -> layout.Info:
        """`source`'s info record of `entry`'s item, which must name the same derivation
        and weights as the index entry."""
        info = self.info(source, entry.item)
        if not same_item(info.entry, entry):
            raise SignatureError(f"{source.label}: the info record of {entry.item} says "
                                 "another derivation or weights than the index")
        return info

    def info(self, source: Source, item: str) -> layout.Info:
        where = f"{source.label}/{layout.info_path(item)}"
        self.requests += 1
        data = source.get(layout.info_path(item), layout.INFO_LIMIT)
        if data is None:
            raise SignatureError(f"{where}: missing, though the index lists the item")
        return layout.read_info(data, where)

    def trusted_count(self, found: Found, weights: str) -> int:
        valid = self.keyring.valid(self.now)
        return len({k for _, e in found if e.weights_digest == weights for k in e.signers
                    if k in valid})

    def votes(self, found: Found, info: layout.Info,
              required: int) -> tuple[list[Vote], list[Refusal], dict[str, bytes]]:
        """Verified votes of trusted keys for the item, the signatures that do not count
        and why, and the bundles of the votes (to keep)."""
        known = {k.keyid: k for k in self.keyring.trusted()}
        valid = self.keyring.valid(self.now)
        votes: list[Vote] = []
        refusals: list[Refusal] = []
        bundles: dict[str, bytes] = {}
        for source, entry in found:
            for keyid in entry.signers:
                key = known.get(keyid)
                if keyid in bundles or (key is None and keyid in {r.keyid for r in refusals}):
                    continue
                if key is None or keyid not in valid:
                    refusals.append(Refusal(keyid, key.name if key else None, source.label,
                                            key.state(self.now) if key else "not trusted"))
                    continue
                agreeing = sum(v.claim.weights_digest == info.entry.weights_digest
                               for v in votes)
                if entry.weights_digest == info.entry.weights_digest and agreeing >= required:
                    continue  # enough: those that sign the same need not be fetched
                vote = self._vote(source, entry, key, info, refusals)
                if vote is not None:
                    votes.append(vote[0])
                    bundles[keyid] = vote[1]
        return votes, refusals, bundles

    def _vote(self, source: Source, entry: layout.Entry, key: TrustedKey, info: layout.Info,
              refusals: list[Refusal]) -> tuple[Vote, bytes] | None:
        rel = layout.signature_path(entry.item, key.keyid)
        where = f"{source.label}/{rel}"
        try:
            self.requests += 1
            data = source.get(rel, BUNDLE_LIMIT)
            if data is None:
                raise SignatureError("listed in the index, but missing")
            claim = verify(data, key.key, where).claim
        except SignatureError as e:
            refusals.append(Refusal(key.keyid, key.name, source.label,
                                    e.message.removeprefix(f"{where}: ")))
            return None
        if claim.item != entry.item or claim.derivation != info.entry.derivation:
            refusals.append(Refusal(key.keyid, key.name, source.label,
                                    f"signs {claim.item} ({claim.derivation}), not the item "
                                    f"the records name ({info.entry.item}, "
                                    f"{info.entry.derivation})"))
            return None
        return Vote(key.keyid, key.name, source.label, claim), data


def same_item(a: layout.Entry, b: layout.Entry) -> bool:
    """The same item, derivation and weights (whoever lists it)."""
    return (a.item, a.derivation, a.weights_digest) == (b.item, b.derivation, b.weights_digest)


def matches_ref(ref: str, entry: layout.Entry) -> bool:
    if is_digest(ref):
        return ref in (entry.derivation, entry.weights_digest)
    return ref in (entry.item, entry.name) or (len(ref) >= 8 and entry.item.startswith(ref)
                                               and all(c in "0123456789abcdef" for c in ref))


__all__ = ["Caches", "Found", "Unreachable", "matches_ref", "same_item"]
