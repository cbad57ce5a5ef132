"""`pull`: install a substitute from binary caches, only when enough trusted keys vouch.

The order of checks is the point. From the caches' indexes (one request per server,
stopping at the first servers that suffice) it finds the item and a server with its
archive, then fetches and verifies the bundles of trusted keys that are valid now until
K distinct keys sign the same derivation, weights and files; a trusted key that signs
other weights for the derivation stops the pull. Only then does the archive come, and
it is checked as it streams (`cache.archive`): each piece decoded, and each file hashed
as it is written, straight into the folder that becomes the item, must have the digest
its signers give, and the archive must end where its record says. The item must then
read as an item (`store repair`'s reader, given the digests just hashed: its
derivation.json hashes to the signed derivation, its provenance names the signed
weights) with the signed platform. The chunks of its kept checkpoints, which its signed
manifests name, come next (`cache.chunks`), each checked against its digest; then the
item enters the store through `Store.commit` under the derivation's lock, and with it
the chunks. Any failure leaves the store as it was. Each byte is hashed once.

The transfer is written to the store's `tmp/pull-<archive digest>/` as it arrives; an
interrupted pull keeps it, and the next pull of the same archive reads back (and
hashes again) the files and pieces it finished and asks the server only for the rest
(`Range`). A refused archive's folder is deleted.

A server's copy that is refused (a record that lies, an archive that does not check out,
is missing or stops part way) is not the end: the next server that lists the same
derivation and weights is tried (its index read only then), one line said for each
refusal (`warn`). The signatures are counted once: they vouch for the bytes, whoever
serves them. A transfer that went on from what an earlier one left (the same archive,
cut off at another server or in an earlier pull) and is then refused is tried once more
from nothing: the whole pieces of the file it stopped in are checked only by that file's
digest, so a wrong piece a dying server left is no proof against the next server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cache import layout
from ..cache.archive import Unpacker, cut
from ..cache.chunks import fetch, wanted
from ..cache.client import Source, Unreachable, ahead, new_client
from ..cache.lookup import Caches, Found
from ..cache.trust import Refusal, Tally, Vote, tally
from ..digest import short
from ..errors import CheckFailed, SignatureError, StoreError, UsageError
from ..keys import KeyRing
from ..progress import QuietReporter, Reporter
from ..signing import Claim
from ..store import Store, StoreItem, remove_tree
from ..store_signatures import KeptSignatures
from .gc import PULL_PREFIX, partial_pulls
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
    # the chunks of the item's kept checkpoints: named by its manifests, fetched (with the
    # bytes received), absent (no server asked had them: verify --from can fetch them)
    checkpoint_chunks: dict[str, int] = field(default_factory=dict)
    # the servers whose copy was refused before one served a valid one, and why
    fallbacks: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "item": self.item, "derivation": self.derivation,
                "weights_digest": self.weights_digest, "reused": self.reused,
                "source": self.source, "signers": list(self.signers),
                "required": self.required, "refused": list(self.refused),
                "requests": self.requests, "received": self.received,
                "resumed_from": self.resumed_from, "problems": list(self.problems),
                "checkpoint_chunks": self.checkpoint_chunks,
                "fallbacks": list(self.fallbacks)}


def pull(ref: str, sources: list[str], *, require: int = 1, store: Store | None = None,
         keyring: KeyRing | None = None, reporter: Reporter | None = None,
         warn: Callable[[str], None] | None = None) -> PullReport:
    """Install the item `ref` names (item, derivation, weights digest or name) from the
    first of `sources` that has it, signed by `require` distinct trusted keys. When a
    server's copy is refused (its records, or its archive as it streams), the next server
    listing the same derivation and weights is tried; `warn` hears one line each time."""
    if require < 1:
        raise UsageError("--require: at least 1 signature")
    store = store or Store()
    reporter = reporter or QuietReporter()
    with new_client(sources) as client:
        caches = Caches.open(sources, client, keyring or KeyRing())
        found = caches.find(ref, lambda f: _enough(caches, f, require))
        if not found:
            raise UsageError(f"{ref}: no cache has it ({_asked(caches)})")
        where, wanted = _wanted(found, caches, require)
        local = store.find(wanted.derivation)
        if local is not None and local.weights_digest != wanted.weights_digest:
            raise CheckFailed(f"{ref}: the store already holds {local.path.name} with weights "
                              f"{local.weights_digest}, and {where.label} lists "
                              f"{wanted.weights_digest} for the same derivation; not "
                              "replaced (compare them: reweigh weather, reweigh rebuild)")
        if local is not None:
            return PullReport(local.path, local.path.name, local.derivation,
                              local.weights_digest, True, None, (), require,
                              requests=caches.requests, problems=tuple(caches.problems))
        attempt = _Attempts(ref, caches, found, wanted, require, warn)
        for source in attempt.servers():
            try:
                info = attempt.info(source)
                counted, refusals, bundles = attempt.counted(source, info)
            except Refused as e:
                attempt.refused(source, e.cause)
                continue
            reporter.stage(f"pulling {info.entry.item} from {source.label} (signed by "
                           f"{', '.join(counted.signers())})")
            others = [s for s, _ in attempt.found if s is not source]  # for chunks it lacks
            check = {"from": source.label, "signers": counted.signers(), "required": require}
            report = attempt.install(store, [source, *others], info, counted.counted[0].claim,
                                     check)
            if report is not None:
                break
        else:
            raise attempt.failure()
    kept = KeptSignatures(store.root)
    for vote in counted.counted:
        kept.add(info.entry.item, vote.keyid, bundles[vote.keyid])
    item = report.item
    return PullReport(item.path, item.path.name, item.derivation, item.weights_digest,
                      report.reused, source.label, tuple(counted.signers()), require,
                      tuple(r.line() for r in refusals), caches.requests, report.received,
                      report.resumed_from, tuple(caches.problems), report.chunks,
                      tuple(attempt.lines))


class AfterResume(SignatureError):
    """An archive refused after its transfer went on from what an earlier one left."""


class Refused(SignatureError):
    """One server's copy of the item is refused; another server's may still do."""

    def __init__(self, cause: SignatureError) -> None:
        super().__init__(cause.message, cause.hint, cause.details)
        self.cause = cause


class _Attempts:
    """The servers a pull tries for the archive, in the user's order, and what each
    refused: the first server that lists the archive decides which item (derivation and
    weights) is wanted; any other listing the same is a fallback, its index read only
    when an earlier one failed. The signatures are counted once, as they do not depend
    on the server that serves the bytes; each server's record must list the files they
    sign."""

    def __init__(self, ref: str, caches: Caches, found: Found, wanted: layout.Entry,
                 require: int, warn: Callable[[str], None] | None) -> None:
        self.ref, self.caches, self.found, self.require = ref, caches, found, require
        self.warn = warn or (lambda line: None)
        if not any(e.archive for _, e in found):
            raise SignatureError(f"{found[0][1].item}: no cache asked has its archive, only "
                                 f"signatures ({_asked(caches)})")
        self.entry = wanted
        self.errors: list[tuple[Source, SignatureError]] = []
        self.lines: list[str] = []
        self.unsaid = False  # the last refusal is not said yet (said when a next server comes)
        for source, entry in found:
            if entry is self.entry:
                break
            if entry.archive and entry.weights_digest != self.entry.weights_digest:
                self._say(f"passed over {entry.item} at {source.label}: its weights "
                          f"{entry.weights_digest} are not those enough trusted keys are "
                          f"listed for ({self.entry.weights_digest})")
        self._votes: tuple[list[Vote], list[Refusal], dict[str, bytes]] | None = None

    def servers(self) -> Iterator[Source]:
        """The servers with the wanted archive: those found, then the rest, asked only
        when every earlier one was refused."""
        for source in self.caches.mirrors(self.found, self.entry):
            yield self._next(source)

    def _more_signers(self) -> bool:
        """Read the servers not yet asked, for signatures of the wanted derivation: a
        bundle that did not verify at one server may be whole at another."""
        before = len(self.found)
        for source in self.caches.sources:
            self.caches.listing(self.found, source, self.entry.item)
        return len(self.found) > before

    def info(self, source: Source) -> layout.Info:
        try:
            return self.caches.checked_info(source, self.entry)
        except SignatureError as e:
            raise Refused(e) from e

    def counted(self, source: Source,
                info: layout.Info) -> tuple[Tally, list[Refusal], dict[str, bytes]]:
        """The votes that count for this server's record of the item; a shortfall that
        is no fault of the server's record ends the pull."""
        while True:
            if self._votes is None:
                self._votes = self.caches.votes(self.found, info, self.require)
            votes, refusals, bundles = self._votes
            counted = tally(votes, info.entry.derivation, info.entry.weights_digest,
                            info.files, self.require)
            if counted.met:
                return counted, refusals, bundles
            line = refusal(self.ref, counted, refusals, info, source)
            if counted.others and not counted.disagreeing:  # this server lists other files
                raise Refused(SignatureError(line))
            # signers that disagree stop the pull; more of them cannot settle it
            if counted.disagreeing or not self._more_signers():
                raise SignatureError(self._with_earlier(line))
            self._votes = None  # counted again with the other servers' signatures

    def _next(self, source: Source) -> Source:
        """The next server to try, once the last refusal is said (when there is a next
        server, which is when it is no longer the pull's own error)."""
        if self.unsaid:
            self.unsaid = False
            failed, error = self.errors[-1]
            self._say(f"refused {self.entry.item} from {failed.label}: {error.message}; "
                      f"trying {source.label}")
        return source

    def _say(self, line: str) -> None:
        self.lines.append(line)
        self.warn(line)

    def install(self, store: Store, sources: list[Source], info: layout.Info, claim: Claim,
                check: dict[str, Any]) -> _Installed | None:
        """The item from `sources[0]`'s archive, or None when it is refused."""
        try:
            return _install(store, sources, info, claim, check)
        except SignatureError as e:  # this server's bytes (or the server itself)
            if not self.again(sources[0], e):
                self.refused(sources[0], e)
                return None
        try:  # once more, from nothing: the refused transfer's folder is gone
            return _install(store, sources, info, claim, check)
        except SignatureError as e:
            self.refused(sources[0], e)
            return None

    def refused(self, source: Source, error: SignatureError) -> None:
        self.errors.append((source, error))
        self.unsaid = True

    def again(self, source: Source, error: SignatureError) -> bool:
        """Whether to ask `source` once more from nothing: its bytes went on from what an
        earlier transfer left (another server cut off earlier in this pull, or an earlier
        pull: the whole pieces of the file it stopped in, which only that file's digest
        checks), so a wrong piece there is no proof against this server. Said in one
        line."""
        if not isinstance(error, AfterResume):
            return False
        self._say(f"refused {self.entry.item} from {source.label}: {error.message}; once "
                  f"more from nothing at {source.label}")
        return True

    def _with_earlier(self, line: str) -> str:
        if not self.errors:
            return line
        return line + " (" + "; ".join(f"refused from {s.label}: {e.message}"
                                       for s, e in self.errors) + ")"

    def failure(self) -> SignatureError:
        """The error when no server gave a valid copy: one server's own error, as it
        was; several servers' reasons in one line."""
        if len(self.errors) == 1:
            return self.errors[0][1]
        if not self.errors:  # cannot happen: the first server listing the archive is tried
            return SignatureError(f"{self.entry.item}: no cache asked has its archive")
        reasons = "; ".join(f"{s.label}: {e.message}" for s, e in self.errors)
        return SignatureError(f"{self.ref}: no server gave a valid copy of "
                              f"{self.entry.item} ({reasons}); nothing was written")


def _wanted(found: Found, caches: Caches, require: int) -> tuple[Source, layout.Entry]:
    """The item to install: the first archive of weights that enough trusted keys are
    listed for (a server listing other weights cannot stand in the way of one that has
    the signed ones), else the first archive, else the first entry."""
    with_archive = [(s, e) for s, e in found if e.archive]
    signed = [(s, e) for s, e in with_archive
              if caches.trusted_count(found, e.weights_digest) >= require]
    return (signed or with_archive or found)[0]


def _enough(caches: Caches, found: Found, require: int) -> bool:
    """Whether the servers asked so far hold the archive and `require` trusted signers."""
    with_archive = [e for _, e in found if e.archive]
    return bool(with_archive) and caches.trusted_count(found, with_archive[0].weights_digest) \
        >= require


def _asked(caches: Caches) -> str:
    asked = f"asked {', '.join(s.label for s in caches.sources)}"
    return asked + (f"; {'; '.join(caches.problems)}" if caches.problems else "")


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
    item: StoreItem
    reused: bool
    received: int
    resumed_from: int
    chunks: dict[str, int] = field(default_factory=dict)


def _install(store: Store, sources: list[Source], info: layout.Info, claim: Claim,
             check: dict[str, Any]) -> _Installed:
    """Unpack the archive from `sources[0]` and commit it with its checkpoints' chunks
    (asked of `sources` in order) and the check row `check` says."""
    assert info.archive is not None
    source = sources[0]
    with store.lock(claim.derivation):
        if (there := store.find(claim.derivation)) is not None:  # pulled meanwhile
            store.record_check(there, "substitute", "pulled", check)
            _forget_partials(store, claim.item)
            return _Installed(there, True, 0, 0)
        work = store.root / "tmp" / f"{PULL_PREFIX}{short(info.archive.digest, 64)}"
        folder = work / claim.item  # the item's own name: its records are checked by it
        folder.mkdir(parents=True, exist_ok=True)
        what = f"{source.label}/{layout.archive_path(claim.item)}"
        transfer = Transfer(source, info, what)
        try:
            unpacker = transfer.unpack(folder)
            record, import_row = _check_item(folder, claim, unpacker.digests)
            named = wanted(folder, unpacker.digests)
            needed = {d: n for d, n in named.items() if not store.chunks.has(d)}
            fetched = fetch(sources, needed, work / "chunks")
            for digest, path in fetched.files.items():
                store.chunks.adopt(digest, path)
            rows = {"import": import_row, "checks": [("substitute", "pulled", check)]}
            item = store.commit(folder, claim.item, {**record, **rows}, unpacker.digests)
        except Unreachable as e:
            stage = (f"the transfer of {what} stopped after {transfer.reached} of "
                     f"{info.archive.size} bytes" if transfer.reached < info.archive.size
                     else f"fetching the chunks of {claim.item}'s kept checkpoints stopped")
            raise SignatureError(f"{stage} ({e.message}); nothing was written; pull again to "
                                 "resume from there") from e
        except OSError as e:  # the disk, not the archive: what was written is kept
            raise StoreError(f"{what}: cannot be written into {work} ({e.strerror or e}); "
                             "nothing was committed; pull again to resume") from e
        except SignatureError as e:
            remove_tree(work)  # a refused archive is no start for a resume
            if transfer.resumed_from:  # perhaps refused for what an earlier transfer left
                raise AfterResume(e.message, e.hint, e.details) from e
            raise
        remove_tree(work)
        _forget_partials(store, claim.item)
    return _Installed(item, False, transfer.received, transfer.resumed_from,
                      {"named": len(named), "fetched": len(fetched.files),
                       "received": fetched.received, "absent": len(fetched.absent)})


def _forget_partials(store: Store, item: str) -> None:
    """Once the item is in, what earlier transfers of it kept for a resume (from another
    server, or another archive of the same item) is of no use. Under the derivation's
    lock: no other pull of it is writing there."""
    for work, items in partial_pulls(store):
        if item in items:
            remove_tree(work)


def _check_item(folder: Path, claim: Claim, known: dict[str, str] | None = None
                ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The item's index record, from its own records, which must say what was signed
    (`known`: the digests its files were hashed to as they were written)."""
    try:
        found = read_item(folder, known)
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


class Transfer:
    """An archive's pieces from `offset` on, received on a thread of their own while the
    caller decodes, hashes and writes them; what came and how far it got."""

    def __init__(self, source: Source, info: layout.Info, what: str) -> None:
        assert info.archive is not None
        self.source, self.info, self.archive, self.what = source, info, info.archive, what
        self.rel = layout.archive_path(info.entry.item)
        self.received = 0  # bytes over the network
        self.resumed_from = 0  # archive bytes an earlier, interrupted pull had written
        self.reached = 0  # how far into the archive this transfer got

    def unpack(self, folder: Path) -> Unpacker:
        """Unpack the archive into `folder`, going on from what an earlier transfer left
        there; the unpacker holds each file's digest."""
        unpacker = Unpacker(folder, self.info.files, self.archive, self.what)
        self.resumed_from = self.reached = unpacker.start.offset
        if unpacker.start.offset >= self.archive.size:
            unpacker.take(iter(()))
            return unpacker
        with self.source.stream(self.rel, unpacker.start.offset) as (start, chunks):
            stream = self._counted(chunks, unpacker.start.offset - start)
            # three threads: receiving and cutting, decoding, hashing and writing
            pieces = ahead(cut(stream, unpacker.lengths(), self.what))
            unpacker.take(ahead(unpacker.decoded(pieces)))
        return unpacker

    def _counted(self, chunks: Iterator[bytes], skip: int) -> Iterator[bytes]:
        """The chunks, counted, less the first `skip` bytes (a server that ignores Range
        sends the whole archive again)."""
        for chunk in chunks:
            self.received += len(chunk)
            if skip:
                dropped = min(skip, len(chunk))
                chunk, skip = chunk[dropped:], skip - dropped
            self.reached += len(chunk)
            if chunk:
                yield chunk
