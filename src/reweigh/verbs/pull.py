"""`pull`: install a substitute from binary caches, only when enough trusted keys vouch.

The order of checks is the point. From the caches' indexes (one request per server,
stopping at the first servers that suffice) it finds the item and a server with its
archive, then fetches and verifies the bundles of trusted keys that are valid now until
K distinct keys sign the same derivation, weights and files; a trusted key that signs
other weights for the derivation stops the pull. Only then does the archive come, and
it is checked as it streams: every file must be one the signers list, of the listed size
and digest, and the archive must have the digest and size its record gives. The unpacked
item must then read as an item (`store repair`'s reader: its derivation.json hashes to
the signed derivation, its provenance names the signed weights) with the signed
platform, and it enters the store through `Store.commit` under the derivation's lock.
Any failure leaves the store as it was.

The download goes to the store's `tmp/pull-<archive digest>.part` as it arrives; an
interrupted pull keeps it, and the next pull of the same archive reads it back through
the same checks and asks the server only for the rest (`Range`). A refused archive's
part is deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cache import layout
from ..cache.archive import extract
from ..cache.client import Source, Unreachable, new_client
from ..cache.lookup import Caches, Found
from ..cache.trust import Refusal, Tally, tally
from ..errors import CheckFailed, SignatureError, UsageError
from ..keys import KeyRing
from ..progress import QuietReporter, Reporter
from ..signing import Claim
from ..store import Store, remove_tree
from ..store_signatures import KeptSignatures
from .repair import _Unfit as Unfit  # what its reader raises for an item that is not one
from .repair import read_item
from .sign import platform_claim


@dataclass(frozen=True)
class PullReport:
    path: Path
    item: str
    derivation: str
    weights_digest: str
    reused: bool
    source: str | None  # the cache the archive came from
    signers: tuple[str, ...]  # names of the distinct trusted keys counted
    required: int
    refused: tuple[str, ...] = ()  # signatures that did not count, and why
    requests: int = 0  # index, record and signature requests
    received: int = 0  # archive bytes over the network
    resumed_from: int = 0  # archive bytes read back from an earlier, interrupted pull
    problems: tuple[str, ...] = field(default=())  # caches that could not be read

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "item": self.item, "derivation": self.derivation,
                "weights_digest": self.weights_digest, "reused": self.reused,
                "source": self.source, "signers": list(self.signers),
                "required": self.required, "refused": list(self.refused),
                "requests": self.requests, "received": self.received,
                "resumed_from": self.resumed_from, "problems": list(self.problems)}


def pull(ref: str, sources: list[str], *, require: int = 1, store: Store | None = None,
         keyring: KeyRing | None = None, reporter: Reporter | None = None) -> PullReport:
    """Install the item `ref` names (item, derivation, weights digest or name) from the
    first of `sources` that has it, signed by `require` distinct trusted keys."""
    if require < 1:
        raise UsageError("--require: at least 1 signature")
    store = store or Store()
    reporter = reporter or QuietReporter()
    with new_client() as client:
        caches = Caches.open(sources, client, keyring or KeyRing())
        found = caches.find(ref, lambda f: _enough(caches, f, require))
        if not found:
            raise UsageError(f"{ref}: no cache has it ({_asked(caches)})")
        local = store.find(found[0][1].derivation)
        if local is not None and local.weights_digest != found[0][1].weights_digest:
            raise CheckFailed(f"{ref}: the store already holds {local.path.name} with weights "
                              f"{local.weights_digest}, and {found[0][0].label} lists "
                              f"{found[0][1].weights_digest} for the same derivation; not "
                              "replaced (compare them: reweigh weather, reweigh rebuild)")
        if local is not None:
            return PullReport(local.path, local.path.name, local.derivation,
                              local.weights_digest, True, None, (), require,
                              requests=caches.requests, problems=tuple(caches.problems))
        source, info = _archive_info(caches, found)
        votes, refusals, bundles = caches.votes(found, info, require)
        counted = tally(votes, info.entry.derivation, info.entry.weights_digest, info.files,
                        require)
        if not counted.met:
            raise SignatureError(refusal(ref, counted, refusals, info, source))
        reporter.stage(f"pulling {info.entry.item} from {source.label} (signed by "
                       f"{', '.join(counted.signers())})")
        report = _install(store, source, info, counted.counted[0].claim)
    kept = KeptSignatures(store.root)
    for vote in counted.counted:
        kept.add(info.entry.item, vote.keyid, bundles[vote.keyid])
    item = store.find(info.entry.derivation)
    assert item is not None
    store.record_check(item, "substitute", "pulled", {
        "from": source.label, "signers": counted.signers(), "required": require})
    return PullReport(item.path, item.path.name, item.derivation, item.weights_digest,
                      report.reused, source.label, tuple(counted.signers()), require,
                      tuple(r.line() for r in refusals), caches.requests, report.received,
                      report.resumed_from, tuple(caches.problems))


def _enough(caches: Caches, found: Found, require: int) -> bool:
    """Whether the servers asked so far hold the archive and `require` trusted signers."""
    with_archive = [e for _, e in found if e.archive]
    return bool(with_archive) and caches.trusted_count(found, with_archive[0].weights_digest) \
        >= require


def _asked(caches: Caches) -> str:
    asked = f"asked {', '.join(s.label for s in caches.sources)}"
    return asked + (f"; {'; '.join(caches.problems)}" if caches.problems else "")


def _archive_info(caches: Caches, found: Found) -> tuple[Source, layout.Info]:
    for source, entry in found:
        if entry.archive:
            info = caches.info(source, entry.item)
            if (info.entry.item, info.entry.derivation, info.entry.weights_digest) != \
                    (entry.item, entry.derivation, entry.weights_digest):
                raise SignatureError(f"{source.label}: the info record of {entry.item} says "
                                     "another derivation or weights than the index")
            return source, info
    raise SignatureError(f"{found[0][1].item}: no cache asked has its archive, only "
                         f"signatures ({_asked(caches)})")


def refusal(ref: str, counted: Tally, refusals: list[Refusal], info: layout.Info,
            source: Source) -> str:
    """One line: why the signatures do not suffice."""
    if counted.disagreeing:
        sides = "; ".join(f"{', '.join(names)} signed weights {digest[:19]}"
                          for digest, names in counted.disagreeing.items())
        return (f"{ref}: trusted signers disagree on derivation {info.entry.derivation}: "
                f"{sides}; refused (rebuild it yourself: reweigh rebuild --from ...)")
    names = counted.signers()
    line = (f"{ref}: {len(names)} of the {counted.required} distinct trusted signatures "
            f"required" + (f" ({', '.join(names)})" if names else ""))
    if counted.others:
        line += (f"; the records at {source.label} list other files than "
                 f"{', '.join(v.name for v in counted.others)} signed")
    if refusals:
        line += "; not counted: " + "; ".join(r.line() for r in refusals[:6])
    elif not names and not counted.others:
        line += "; the item is unsigned"
    return line + "; nothing was written"


@dataclass(frozen=True)
class _Installed:
    reused: bool
    received: int
    resumed_from: int


def _install(store: Store, source: Source, info: layout.Info, claim: Claim) -> _Installed:
    assert info.archive is not None
    with store.lock(claim.derivation):
        if store.find(claim.derivation) is not None:
            return _Installed(True, 0, 0)
        staged = store.new_build_dir(claim.derivation)
        part = store.root / "tmp" / f"pull-{info.archive.digest.split(':', 1)[1]}.part"
        transfer = Transfer(source, layout.archive_path(info.entry.item), info.archive, part)
        what = f"{source.label}/{layout.archive_path(claim.item)}"
        try:
            folder = staged / claim.item
            folder.mkdir()
            chunks = transfer.chunks()
            extract(chunks, claim.files, folder, what)
            for _ in chunks:  # the rest, so its size and digest are checked too
                pass
            record, import_row = _check_item(folder, claim)
            if import_row is not None:
                store.record_import(claim.item, import_row)
            # read_item has just hashed every file and found the signed digests: the
            # index takes those instead of reading the files once more
            store.commit(folder, claim.item, record, {f.path: f.digest for f in claim.files})
            part.unlink(missing_ok=True)
        except Unreachable as e:
            raise SignatureError(f"the transfer of {what} stopped after "
                                 f"{transfer.total} of {info.archive.size} bytes "
                                 f"({e.message}); nothing was written; pull again to resume "
                                 "from there") from e
        except SignatureError:
            part.unlink(missing_ok=True)  # a refused archive is no start for a resume
            raise
        finally:
            remove_tree(staged)
    return _Installed(False, transfer.received, transfer.resumed_from)


def _check_item(folder: Path, claim: Claim) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The item's index record, from its own records, which must say what was signed."""
    try:
        found = read_item(folder)
    except Unfit as e:
        raise SignatureError(f"{claim.item}: not an item ({e}); refused") from e
    record = found.record
    if (record["derivation"], record["weights_digest"]) != (claim.derivation,
                                                             claim.weights_digest):
        raise SignatureError(f"{claim.item}: its records name another derivation or weights "
                             "than its signatures")
    if sorted(found.files) != sorted((f.path, f.digest, f.size) for f in claim.files):
        raise SignatureError(f"{claim.item}: its files changed while being checked")
    if platform_claim(folder) != (claim.platform, claim.environment_fingerprint):
        raise SignatureError(f"{claim.item}: its provenance records another platform than "
                             "its signatures")
    return record, found.import_row


_DONE = object()


def ahead(chunks: Iterator[bytes], depth: int = 32) -> Iterator[bytes]:
    """`chunks`, produced on a thread of its own up to `depth` chunks ahead of the reader
    (receiving, writing and hashing on one core while the reader unpacks on another);
    its errors come out here, and a reader that stops early stops it."""
    pending: queue.Queue[Any] = queue.Queue(depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                if not _hand_over(pending, stop, chunk):
                    return
            pending.put(_DONE)
        except BaseException as e:  # handed to the reader, which raises it
            pending.put(e)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    try:
        while (item := pending.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():
            with contextlib.suppress(queue.Empty):
                pending.get(timeout=0.1)
        worker.join()


def _hand_over(pending: queue.Queue[Any], stop: threading.Event, chunk: bytes) -> bool:
    """Queue `chunk` for the reader; False when the reader stopped meanwhile."""
    while not stop.is_set():
        try:
            pending.put(chunk, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


class Transfer:
    """An archive's bytes in order: first those an interrupted pull left in `part`, then
    the rest from the server, appended to `part` as they come; the size and digest are
    checked when the last byte has passed."""

    def __init__(self, source: Source, rel: str, archive: layout.Archive, part: Path) -> None:
        self.source, self.rel, self.archive, self.part = source, rel, archive, part
        self.total = 0
        self.received = 0
        self.resumed_from = 0

    def chunks(self) -> Iterator[bytes]:
        hasher = hashlib.sha256()
        if self.part.exists() and self.part.stat().st_size > self.archive.size:
            self.part.unlink()
        fd = os.open(self.part, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "r+b") as handle:
            while data := handle.read(1 << 20):
                hasher.update(data)
                self.total += len(data)
                yield data
            self.resumed_from = self.total
            if self.total < self.archive.size:  # received on a thread of its own, so the
                yield from ahead(self._rest(handle, hasher))  # unpacking runs meanwhile
        url = f"{self.source.label}/{self.rel}"
        if self.total < self.archive.size:
            self.part.unlink(missing_ok=True)
            raise SignatureError(f"{url}: truncated: the cache has {self.total} of the "
                                 f"{self.archive.size} bytes its record gives; refused")
        digest = f"sha256:{hasher.hexdigest()}"
        if digest != self.archive.digest:
            raise SignatureError(f"{url}: its bytes hash to {digest}, its record says "
                                 f"{self.archive.digest}; refused")

    def _rest(self, handle: Any, hasher: Any) -> Iterator[bytes]:
        with self.source.stream(self.rel, self.total) as (start, chunks):
            skip = self.total - start  # a server that ignores Range sends it all again
            for chunk in chunks:
                if skip:
                    dropped = min(skip, len(chunk))
                    chunk, skip = chunk[dropped:], skip - dropped
                    if not chunk:
                        continue
                if self.total + len(chunk) > self.archive.size:
                    raise SignatureError(f"{self.source.label}/{self.rel}: longer than the "
                                         f"{self.archive.size} bytes its record gives; refused")
                handle.write(chunk)
                hasher.update(chunk)
                self.total += len(chunk)
                self.received += len(chunk)
                yield chunk
