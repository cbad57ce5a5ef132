"""`rebuild --from`: the independent rebuilder's role.

Fetch a published item from a cache, rebuild it here from the recipe source that comes
with it (its `source/` folder: recipe.toml and every hashed code file), in the sandbox,
and compare the weights bit for bit. The publisher need not be trusted: the archive is
checked against its record, the item's derivation.json must hash to the derivation it
claims, and the source must give that same derivation here (same code, inputs and
platform), else there is nothing to compare. When the rebuilt weights are identical,
the rebuilder signs the *published* item (its files, derivation, weights and platform,
role `rebuilder`, with its own platform and fingerprint in `rebuilt`), so that pullers
who trust the rebuilder can count it towards K. The bundle is kept in the store's
signatures/; `--to DIR` publishes it into a cache folder (beside the archive, or alone:
rebuilders need not host weights), `--output FILE` writes a copy.

What it does not do: fetch a recipe's `path` inputs, which an item does not carry
(recipes whose data comes from a package, a URL with a digest or nothing rebuild
anywhere); nor sign what it could not reproduce.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..cache import layout
from ..cache.client import Source, Unreachable, new_client
from ..cache.folder import CacheFolder
from ..cache.lookup import Caches
from ..errors import CheckFailed, SignatureError, StoreError, UsageError
from ..keys import KeyRing
from ..progress import QuietReporter, Reporter
from ..signing import Claim, sign
from ..store import Store, remove_tree
from ..store_signatures import KeptSignatures
from .build import build_plan, plan, threads_for
from .pull import Transfer, _check_item
from .sign import platform_claim


@dataclass(frozen=True)
class RebuildReport:
    item: str
    derivation: str
    published_digest: str
    rebuilt_digest: str
    identical: bool
    rebuilt: Path  # the local item
    signature: Path | None
    published_to: Path | None
    fallbacks: tuple[str, ...] = ()  # servers whose copy was refused before one checked out

    def to_json(self) -> dict[str, Any]:
        return {"item": self.item, "derivation": self.derivation,
                "published_weights_digest": self.published_digest,
                "rebuilt_weights_digest": self.rebuilt_digest, "identical": self.identical,
                "rebuilt": str(self.rebuilt),
                "signature": str(self.signature) if self.signature else None,
                "published_to": str(self.published_to) if self.published_to else None,
                "fallbacks": list(self.fallbacks)}


@dataclass(frozen=True)
class RebuildOptions:
    key: str | None = None  # own key to sign with (the only one when None)
    sign: bool = True
    to: Path | None = None  # a cache folder to publish the signature into
    output: Path | None = None  # also write the bundle here
    threads: int | None = None


def rebuild(ref: str, sources: list[str], options: RebuildOptions = RebuildOptions(), *,
            store: Store | None = None, keyring: KeyRing | None = None,
            reporter: Reporter | None = None,
            warn: Callable[[str], None] | None = None) -> RebuildReport:
    store = store or Store()
    refused: list[str] = []  # the servers whose copy was refused, and why
    keyring = keyring or KeyRing()
    reporter = reporter or QuietReporter()
    signer = keyring.signer(options.key) if options.sign else None  # refuse before building
    staging = store.new_staging_dir()
    try:
        claim, source_dir = _fetch(ref, sources, keyring, staging, reporter, refused,
                                   warn or (lambda line: None))
        with store.gc_lock(exclusive=False):
            the_plan = plan(source_dir, store)
            if the_plan.derivation.digest != claim.derivation:
                raise CheckFailed(f"{claim.item}: its source gives derivation "
                                  f"{the_plan.derivation.digest} here, not "
                                  f"{claim.derivation} (another platform, or inputs that "
                                  "resolve differently); nothing to compare")
            known = store.find(claim.derivation) is not None
            reporter.stage(f"rebuilding {claim.item} from its source")
            built = build_plan(the_plan, store, threads_for(options.threads), known, reporter)
    finally:
        remove_tree(staging)
    rebuilt = built.check.rebuilt_digest if built.check is not None else built.weights_digest
    identical = rebuilt == claim.weights_digest
    signature = published = None
    if identical and signer is not None:
        platform, fingerprint = platform_claim(built.path)
        vouched = replace(claim, role="rebuilder", rebuilt={
            "weights_digest": rebuilt, "platform": platform,
            "environment_fingerprint": fingerprint})
        bundle = sign(vouched, signer, time.time())
        kept = KeptSignatures(store.root).add(claim.item, signer.public.keyid, bundle)
        signature, published = _keep(bundle, vouched, signer.public.keyid, options)
        signature = signature or kept
    return RebuildReport(claim.item, claim.derivation, claim.weights_digest, rebuilt,
                         identical, built.path, signature, published, tuple(refused))


def _fetch(ref: str, sources: list[str], keyring: KeyRing, staging: Path,
           reporter: Reporter, refused: list[str],
           warn: Callable[[str], None]) -> tuple[Claim, Path]:
    """The published item, unpacked and checked against its own records; its claim (as
    a signer would make it) and its source folder. A server whose copy does not check
    out is said in one line (`refused`, `warn`) and the next that lists the same item
    (derivation and weights) is asked."""
    with new_client(sources) as client:
        caches = Caches.open(sources, client, keyring)
        found = caches.find(ref, lambda f: any(e.archive for _, e in f))
        with_archive = [(s, e) for s, e in found if e.archive]
        if not with_archive:
            raise UsageError(f"{ref}: no cache asked has its archive")
        first = with_archive[0][1]
        failed: list[tuple[str, SignatureError]] = []
        for source in caches.mirrors(found, first):
            if failed:
                line = (f"refused {first.item} from {failed[-1][0]}: {failed[-1][1].message}; "
                        f"trying {source.label}")
                refused.append(line)
                warn(line)
            try:
                claim = _fetch_from(caches, source, first, staging, reporter)
                break
            except SignatureError as e:
                remove_tree(staging / first.item)
                failed.append((source.label, e))
        else:
            if len(failed) == 1:
                raise failed[0][1]
            raise SignatureError(f"{ref}: no server gave a valid copy of {first.item} ("
                                 + "; ".join(f"{w}: {e.message}" for w, e in failed) + ")")
    source_dir = staging / first.item / "source"
    if not (source_dir / "recipe.toml").is_file():
        raise UsageError(f"{first.item}: carries no recipe source (an imported item cannot "
                         "be rebuilt)")
    return claim, source_dir


def _fetch_from(caches: Caches, source: Source, entry: layout.Entry, staging: Path,
                reporter: Reporter) -> Claim:
    """The item from one server, unpacked into `staging` and checked: its claim."""
    info = caches.checked_info(source, entry)
    assert info.archive is not None
    platform_free = Claim(entry.item, entry.name, entry.version, entry.derivation,
                          entry.weights_digest, info.files, None, None)
    folder = staging / entry.item
    folder.mkdir()
    reporter.stage(f"fetching {entry.item} from {source.label}")
    transfer = Transfer(source, info, f"{source.label}/{layout.archive_path(entry.item)}")
    try:
        unpacker = transfer.unpack(folder)
    except Unreachable as e:
        raise SignatureError(f"{entry.item}: the transfer stopped ({e.message})") from e
    except OSError as e:
        raise StoreError(f"{transfer.what}: cannot be written into {folder} "
                         f"({e.strerror or e})") from e
    platform, fingerprint = platform_claim(folder)
    claim = replace(platform_free, platform=platform, environment_fingerprint=fingerprint)
    _check_item(folder, claim, unpacker.digests)
    return claim


def _keep(bundle: bytes, claim: Claim, keyid: str,
          options: RebuildOptions) -> tuple[Path | None, Path | None]:
    written = None
    if options.output is not None:
        try:
            options.output.write_bytes(bundle)
        except OSError as e:
            raise UsageError(f"{options.output}: cannot write ({e.strerror})") from e
        written = options.output
    published = None
    if options.to is not None:
        folder = CacheFolder(options.to)
        with folder.locked() as entries:
            folder.put_signature(entries, claim, keyid, bundle)
        published = folder.root / layout.signature_path(claim.item, keyid)
        written = written or published
    return written, published

