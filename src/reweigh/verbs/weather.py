"""`weather`: which caches have what, who signed it, and whether the signers agree.

Like `guix weather` (coverage per server) and `guix challenge` (do servers agree?) in
one report. Each server's index is read once; the signatures of keys the user trusts
and that are valid now are fetched (a few at a time over kept-alive connections) and
verified; other signers are named with the reason they do not count, and their
signatures are not fetched: an untrusted key's word proves nothing. Per item the
verdict is `agree` (every verified signer signs the same weights), `disagree` (verified
signers sign different weights for one derivation: someone trusted is wrong or lying),
`unverified` (signatures, none by a trusted valid key) or `unsigned`.
"""

from __future__ import annotations

import concurrent.futures
import enum
from dataclasses import dataclass
from typing import Any

from ..cache import layout
from ..cache.client import Source, new_client
from ..cache.lookup import Caches, matches_ref
from ..errors import SignatureError, UsageError
from ..keys import KeyRing
from ..signing import BUNDLE_LIMIT, verify

WORKERS = 8


class Agreement(enum.Enum):
    AGREE = "agree"
    DISAGREE = "disagree"
    UNVERIFIED = "unverified"
    UNSIGNED = "unsigned"


@dataclass(frozen=True)
class Signature:
    keyid: str
    name: str | None  # the trust list's name, None for an unknown key
    server: str
    status: str  # "verified", "not trusted", "revoked on ...", "expired on ...", "bad: ..."
    weights_digest: str | None  # what it signs, when verified
    role: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass(frozen=True)
class ItemWeather:
    item: str
    derivation: str
    servers: tuple[dict[str, Any], ...]  # server, archive, weights_digest (its claim)
    signatures: tuple[Signature, ...]
    agreement: Agreement

    def to_json(self) -> dict[str, Any]:
        return {"item": self.item, "derivation": self.derivation,
                "servers": list(self.servers),
                "signatures": [s.to_json() for s in self.signatures],
                "agreement": self.agreement.value}


@dataclass(frozen=True)
class WeatherReport:
    servers: tuple[dict[str, Any], ...]  # server, reachable, items, archives, problem
    items: tuple[ItemWeather, ...]
    requests: int

    @property
    def disagreements(self) -> list[ItemWeather]:
        return [i for i in self.items if i.agreement is Agreement.DISAGREE]

    def to_json(self) -> dict[str, Any]:
        return {"servers": list(self.servers), "items": [i.to_json() for i in self.items],
                "disagreements": len(self.disagreements), "requests": self.requests}


def weather(sources: list[str], refs: list[str] | None = None, *,
            keyring: KeyRing | None = None) -> WeatherReport:
    """The weather of every item the caches list (or of those `refs` name)."""
    with new_client(sources) as client:
        caches = Caches.open(sources, client, keyring or KeyRing())
        listed: dict[str, list[tuple[Source, layout.Entry]]] = {}
        servers = []
        for source in caches.sources:
            index = caches.index(source)
            entries = list((index or {}).values())
            servers.append({"server": source.label, "reachable": index is not None,
                            "items": len(entries), "archives": sum(e.archive for e in entries),
                            "problem": None if index is not None else caches.problems[-1]})
            for entry in entries:
                if refs is None or any(matches_ref(ref, entry) for ref in refs):
                    listed.setdefault(entry.item, []).append((source, entry))
        if refs and not listed:
            raise UsageError(f"{', '.join(refs)}: no cache lists it")
        signatures = _signatures(caches, listed)
        items = tuple(_item(name, listed[name], signatures.get(name, []))
                      for name in sorted(listed))
        return WeatherReport(tuple(servers), items, caches.requests)


def _signatures(caches: Caches, listed: dict[str, list[tuple[Source, layout.Entry]]]
                ) -> dict[str, list[Signature]]:
    known = {k.keyid: k for k in caches.keyring.trusted()}
    valid = caches.keyring.valid(caches.now)
    found: dict[str, list[Signature]] = {}
    tasks = []
    for item, entries in listed.items():
        for source, entry in entries:
            for keyid in entry.signers:
                key = known.get(keyid)
                if key is not None and keyid in valid:
                    tasks.append((item, source, entry, keyid))
                else:
                    status = key.state(caches.now) if key else "not trusted"
                    found.setdefault(item, []).append(
                        Signature(keyid, key.name if key else None, source.label, status, None))
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        checked = pool.map(lambda task: _check(caches, known, *task), tasks)
        for (item, *_), signature in zip(tasks, checked, strict=True):
            found.setdefault(item, []).append(signature)
    return found


def _check(caches: Caches, known: dict[str, Any], item: str, source: Source,
           entry: layout.Entry, keyid: str) -> Signature:
    key = known[keyid]
    rel = layout.signature_path(item, keyid)
    try:
        caches.requests += 1
        data = source.get(rel, BUNDLE_LIMIT)
        if data is None:
            raise SignatureError("listed in the index, but missing")
        claim = verify(data, key.key, f"{source.label}/{rel}").claim
        if claim.item != item or claim.derivation != entry.derivation:
            raise SignatureError(f"signs another item ({claim.item})")
    except SignatureError as e:
        return Signature(keyid, key.name, source.label, f"bad: {e.message}", None)
    return Signature(keyid, key.name, source.label, "verified", claim.weights_digest, claim.role)


def _item(item: str, entries: list[tuple[Source, layout.Entry]],
          signatures: list[Signature]) -> ItemWeather:
    servers = tuple({"server": s.label, "archive": e.archive, "weights_digest": e.weights_digest}
                    for s, e in entries)
    verified = {s.weights_digest for s in signatures if s.status == "verified"}
    if len(verified) > 1:
        agreement = Agreement.DISAGREE
    elif verified:
        agreement = Agreement.AGREE
    else:
        agreement = Agreement.UNVERIFIED if signatures else Agreement.UNSIGNED
    return ItemWeather(item, entries[0][1].derivation, servers, tuple(signatures), agreement)
