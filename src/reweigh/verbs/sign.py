"""`sign`: vouch for a store item with one's own key.

The signer signs what the store holds, checked first: every file of the item is hashed
again and must match the digests the index recorded when the item entered, so a file
altered in place since is never signed. The bundle (`reweigh.signing`) binds the
derivation, the weights digest, every file's digest and size, and the numerics platform
the provenance records; it is kept in the store's `signatures/` beside the item, where
`publish` finds it, and can be written to a file as well.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..environment import claim_problem, fingerprint
from ..errors import SignatureError, UsageError
from ..keys import KeyRing
from ..provenance import environment_of
from ..signing import Claim, FileEntry, sign
from ..store import Store, StoreItem, file_rows
from ..store_signatures import KeptSignatures
from ..trees import odd_entries


@dataclass(frozen=True)
class SignReport:
    item: Path
    keyid: str
    key_name: str
    bundle: Path
    files: int
    platform: dict[str, Any] | None
    environment_fingerprint: str | None

    def to_json(self) -> dict[str, Any]:
        return {"item": str(self.item), "keyid": self.keyid, "key": self.key_name,
                "bundle": str(self.bundle), "files": self.files, "platform": self.platform,
                "environment_fingerprint": self.environment_fingerprint}


def sign_item(ref: str, *, key: str | None = None, output: Path | None = None,
              store: Store | None = None, keyring: KeyRing | None = None) -> SignReport:
    """Sign the item `ref` with own key `key` (the only one when None)."""
    store = store or Store()
    keyring = keyring or KeyRing()
    item = store.resolve(ref)
    signer = keyring.signer(key)
    claim = item_claim(store, item)
    bundle = sign(claim, signer, time.time())
    kept = KeptSignatures(store.root).add(item.path.name, signer.public.keyid, bundle)
    if output is not None:
        try:
            output.write_bytes(bundle)
        except OSError as e:
            raise UsageError(f"{output}: cannot write the signature ({e.strerror})") from e
    return SignReport(item.path, signer.public.keyid, signer.name, output or kept,
                      len(claim.files), claim.platform, claim.environment_fingerprint)


def item_claim(store: Store, item: StoreItem, role: str = "publisher",
               rebuilt: dict[str, Any] | None = None) -> Claim:
    """What a signature of `item` says, from its files as they are now (hashed again and
    checked against the index) and its provenance."""
    listing = store.item_listings().get(item.path.name, {})
    if odd := odd_entries(item.path):
        raise SignatureError(f"{item.path}: {odd[0]} is not a regular file; not signed")
    files = tuple(FileEntry(rel, digest, size) for rel, digest, size in file_rows(item.path))
    if {f.path: f.digest for f in files} != listing:
        raise SignatureError(f"{item.path}: its files are not those the store recorded "
                             "(`reweigh store verify` names them); not signed")
    return Claim(item.path.name, item.name, item.version, item.derivation,
                 item.weights_digest, files, *platform_claim(item.path), role=role,
                 rebuilt=rebuilt)


def platform_claim(folder: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The numerics platform an item's provenance records (`environment["platform"]`, for
    builds that record one), and the environment fingerprint the build wrote (computed
    from the record for builds that did not write it); (None, None) for an import."""
    try:
        statement = json.loads((folder / "provenance.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SignatureError(f"{folder}/provenance.json: unreadable ({e})") from e
    env = environment_of(statement) or {}
    platform = env.get("platform") if isinstance(env.get("platform"), dict) else None
    recorded = env.get("fingerprint")
    if isinstance(recorded, str) and recorded.startswith("sha256:"):
        return platform, recorded
    return platform, (fingerprint(env) if env and claim_problem(env) is None else None)


def signed_platform(bundle: Path, weights_digest: str,
                    keyring: KeyRing | None = None) -> dict[str, Any]:
    """The platform a signed bundle claims for the weights `weights_digest`: verified with
    a key of the trust list that is valid now, or SignatureError. For `challenge` and
    `verify`, where only a signed environment claim should earn a published file the
    slack between platforms; the record returned is the provenance's `platform`, or for a
    build from before platforms `{"fingerprint": ...}`."""
    from ..signing import bundle_claim, verify

    keyring = keyring or KeyRing()
    what = str(bundle)
    try:
        data = bundle.read_bytes()
    except OSError as e:
        raise UsageError(f"{bundle}: cannot read the signature ({e.strerror})") from e
    keyid = bundle_claim(data, what).keyid
    key = keyring.valid().get(keyid)
    if key is None:
        known = keyring.lookup(keyid)
        state = known.describe(time.time()) if known else f"key {keyid[:16]}, not trusted"
        raise SignatureError(f"{bundle}: signed by {state}; an unsigned or untrusted "
                             "environment claim earns no slack")
    claim = verify(data, key.key, what).claim
    if claim.weights_digest != weights_digest:
        raise SignatureError(f"{bundle}: signs weights {claim.weights_digest}, not the "
                             f"published file's {weights_digest}")
    if claim.platform is not None:
        return claim.platform
    if claim.environment_fingerprint is not None:
        return {"fingerprint": claim.environment_fingerprint}
    raise SignatureError(f"{bundle}: claims no platform (an imported item)")
