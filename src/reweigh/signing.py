"""Signatures over store items: a DSSE envelope over an in-toto statement, in the bundle
OpenSSF Model Signing (v1.0) writes and verifies.

The statement is Model Signing's own: one subject named after the item, whose digest is
the SHA-256 of its files' digests in order, and a predicate
(`https://model_signing/signature/v1.0`) that lists every file of the item with its
SHA-256 (`resources`) and how the list was made (`serialization`: every file, sha256, no
symbolic links). Model Signing's verifiers ignore predicate fields they do not know, so
reweigh's own claims ride along in `predicate.reweigh`: the item, the derivation digest,
the weights digest, each file's size, the numerics platform the weights were built on,
who signs in what role (the publisher, or a rebuilder that got the same weights), and the
signer's key id, so a signature cannot be passed off as another key's.

The payload is the statement in RFC 8785 canonical JSON; the signature is ed25519 (or
ECDSA P-256, which Model Signing's key verifier accepts) over DSSE's pre-authentication
encoding of that payload, and the bundle is a Sigstore bundle (v0.3) with the key id as
the public key hint. One signer per bundle, as in Model Signing: several signers are
several bundles, and `cache.trust` counts them.

Verification trusts nothing in the bundle but the signature: the key comes from the
user's trust list by the hint, and every claim is read strictly from the signed payload
(a field missing, of the wrong type, a path that leaves the item, or a subject digest
that does not follow from the files is refused, naming the field).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from typing import Any

from .digest import canonical_json, is_digest
from .errors import SignatureError
from .keys import KEYID_RE, PublicKey, Signer

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
FORMAT = "reweigh.signature/1"
SERIALIZATION = {"method": "files", "hash_type": "sha256", "allow_symlinks": False}
ROLES = ("publisher", "rebuilder")
BUNDLE_LIMIT = 16 << 20
ITEM_RE = re.compile(r"^[0-9a-f]{32}-[a-z0-9][a-z0-9._-]{0,63}-[0-9A-Za-z][0-9A-Za-z.+_-]{0,31}$")
_HEX_RE = re.compile(r"^[0-9a-f]{64}$")
_MAX_FILE = 1 << 50


@dataclass(frozen=True, order=True)
class FileEntry:
    path: str  # relative, '/'-separated, inside the item
    digest: str  # sha256:<hex>
    size: int


@dataclass(frozen=True)
class Claim:
    """What one signer says about one item."""

    item: str  # the item's folder name, <32 hex of the derivation>-<name>-<version>
    name: str
    version: str
    derivation: str
    weights_digest: str
    files: tuple[FileEntry, ...]
    platform: dict[str, Any] | None  # environment["platform"], when the build recorded one
    environment_fingerprint: str | None  # environment.fingerprint of the build's record
    role: str = "publisher"
    rebuilt: dict[str, Any] | None = None  # a rebuilder's own platform and fingerprint
    keyid: str = ""
    signed_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def agreement(self) -> tuple[str, str, tuple[FileEntry, ...]]:
        """What signers must share to count together: the derivation, the weights and
        every file."""
        return self.derivation, self.weights_digest, tuple(sorted(self.files))


@dataclass(frozen=True)
class Verified:
    """A bundle whose signature holds under a key of the trust list."""

    claim: Claim
    key: PublicKey
    bundle: bytes


def sort_key(path: str) -> tuple[str, ...]:
    """Model Signing orders its resources as paths (component by component)."""
    return tuple(path.split("/"))


def root_digest(files: tuple[FileEntry, ...]) -> str:
    """The subject's digest: SHA-256 over the raw file digests, in resource order."""
    hasher = hashlib.sha256()
    for entry in files:
        hasher.update(bytes.fromhex(entry.digest.split(":", 1)[1]))
    return hasher.hexdigest()


def statement(claim: Claim) -> dict[str, Any]:
    """The in-toto statement a signer signs (pure)."""
    files = tuple(sorted(claim.files, key=lambda f: sort_key(f.path)))
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": claim.item, "digest": {"sha256": root_digest(files)}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": dict(SERIALIZATION),
            "resources": [{"name": f.path, "algorithm": "sha256",
                           "digest": f.digest.split(":", 1)[1]} for f in files],
            "reweigh": {
                "format": FORMAT, "item": claim.item, "name": claim.name,
                "version": claim.version, "derivation": claim.derivation,
                "weights_digest": claim.weights_digest,
                "sizes": {f.path: f.size for f in files},
                "platform": claim.platform,
                "environment_fingerprint": claim.environment_fingerprint,
                "role": claim.role, "rebuilt": claim.rebuilt, "keyid": claim.keyid,
                "signed_at": claim.signed_at, **claim.extra},
        },
    }


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1's pre-authentication encoding: what the signature is over."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def sign(claim: Claim, signer: Signer, now: float) -> bytes:
    """A Sigstore bundle (JSON bytes) holding the signed statement of `claim`."""
    keyid = signer.public.keyid
    signed = replace(claim, keyid=keyid, signed_at=dt.datetime.fromtimestamp(now, dt.UTC)
                     .strftime("%Y-%m-%dT%H:%M:%SZ"))
    payload = canonical_json(statement(signed))
    signature = signer.sign(pae(PAYLOAD_TYPE, payload))
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": keyid}, "tlogEntries": []},
        "dsseEnvelope": {"payload": base64.b64encode(payload).decode(),
                         "payloadType": PAYLOAD_TYPE,
                         "signatures": [{"sig": base64.b64encode(signature).decode(),
                                         "keyid": keyid}]},
    }
    return json.dumps(bundle, indent=2).encode() + b"\n"


def bundle_claim(data: bytes, what: str) -> Claim:
    """The claim a bundle carries, read strictly but NOT verified: for passing a bundle on
    (a mirror, `publish`), never for deciding whether to trust it."""
    hint, _, payload, _ = _bundle(data, what)
    claim = read_claim(payload, what)
    if claim.keyid != hint:
        raise SignatureError(f"{what}: predicate.reweigh.keyid: not the bundle's key")
    return claim


def verify(data: bytes, key: PublicKey, what: str) -> Verified:
    """Check a bundle's signature with `key` (the caller chose it from the trust list by
    the bundle's hint) and read its claim strictly."""
    hint, payload_type, payload, signature = _bundle(data, what)
    if hint != key.keyid:
        raise SignatureError(f"{what}: signed by key {hint[:16]}, not {key.keyid[:16]}")
    if payload_type != PAYLOAD_TYPE:
        raise SignatureError(f"{what}: dsseEnvelope.payloadType: {payload_type!r}, expected "
                             f"{PAYLOAD_TYPE}")
    if not key.verify(signature, pae(payload_type, payload)):
        raise SignatureError(f"{what}: the signature does not hold for key {key.keyid[:16]} "
                             "(the bundle was altered, or another key signed it)")
    claim = read_claim(payload, what)
    if claim.keyid != key.keyid:
        raise SignatureError(f"{what}: predicate.reweigh.keyid: the statement names another "
                             "key than the one that signed it")
    return Verified(claim, key, data)


def _bundle(data: bytes, what: str) -> tuple[str, str, bytes, bytes]:
    if len(data) > BUNDLE_LIMIT:
        raise SignatureError(f"{what}: larger than {BUNDLE_LIMIT} bytes")
    bundle = strict_json(data, what, SignatureError)
    if not isinstance(bundle, dict) or bundle.get("mediaType") != BUNDLE_MEDIA_TYPE:
        raise SignatureError(f"{what}: mediaType: expected {BUNDLE_MEDIA_TYPE}")
    hint = _path(bundle, what, "verificationMaterial", "publicKey", "hint")
    envelope = _path(bundle, what, "dsseEnvelope")
    signatures = _path(envelope, what, "signatures")
    if not isinstance(hint, str) or not KEYID_RE.fullmatch(hint):
        raise SignatureError(f"{what}: verificationMaterial.publicKey.hint: not a key id")
    if not isinstance(signatures, list) or len(signatures) != 1:
        raise SignatureError(f"{what}: dsseEnvelope.signatures: expected exactly one "
                             "signature (one signer per bundle)")
    try:
        payload = base64.b64decode(_path(envelope, what, "payload"), validate=True)
        signature = base64.b64decode(_path(signatures[0], what, "sig"), validate=True)
    except (binascii.Error, ValueError, TypeError) as e:
        raise SignatureError(f"{what}: dsseEnvelope: payload or sig is not base64") from e
    payload_type = _path(envelope, what, "payloadType")
    return hint, str(payload_type), payload, signature


def read_claim(payload: bytes, what: str) -> Claim:
    """The claim of a signed statement; anything off the format is refused by name."""
    data = strict_json(payload, what, SignatureError)
    if not isinstance(data, dict) or data.get("_type") != STATEMENT_TYPE:
        raise SignatureError(f"{what}: _type: expected {STATEMENT_TYPE}")
    if data.get("predicateType") != PREDICATE_TYPE:
        raise SignatureError(f"{what}: predicateType: expected {PREDICATE_TYPE}")
    subjects = data.get("subject")
    if not isinstance(subjects, list) or len(subjects) != 1:
        raise SignatureError(f"{what}: subject: expected exactly one subject")
    predicate = _path(data, what, "predicate")
    ours = _path(predicate, what, "reweigh")
    if not isinstance(ours, dict) or ours.get("format") != FORMAT:
        raise SignatureError(f"{what}: predicate.reweigh.format: expected {FORMAT}")
    if _path(predicate, what, "serialization") != SERIALIZATION:
        raise SignatureError(f"{what}: predicate.serialization: expected {SERIALIZATION}")
    files = _files(predicate, ours, what)
    item = _text(ours, "item", what)
    if not ITEM_RE.fullmatch(item) or _path(subjects[0], what, "name") != item:
        raise SignatureError(f"{what}: predicate.reweigh.item: not an item name, or not the "
                             "subject's")
    if _path(subjects[0], what, "digest") != {"sha256": root_digest(files)}:
        raise SignatureError(f"{what}: subject.digest: does not follow from the resources")
    return _claim(ours, item, files, what)


def _claim(ours: dict[str, Any], item: str, files: tuple[FileEntry, ...], what: str) -> Claim:
    derivation, weights = _text(ours, "derivation", what), _text(ours, "weights_digest", what)
    for key, value in (("derivation", derivation), ("weights_digest", weights)):
        if not is_digest(value):
            raise SignatureError(f"{what}: predicate.reweigh.{key}: not a sha256 digest")
    if not item.startswith(derivation.split(":", 1)[1][:32]):
        raise SignatureError(f"{what}: predicate.reweigh.item: not named by its derivation")
    weights_files = [f for f in files if f.path == "weights.safetensors"]
    if [f.digest for f in weights_files] != [weights]:
        raise SignatureError(f"{what}: predicate.reweigh.weights_digest: not the digest of "
                             "its weights.safetensors resource")
    role = _text(ours, "role", what)
    if role not in ROLES:
        raise SignatureError(f"{what}: predicate.reweigh.role: expected one of {ROLES}")
    platform, fingerprint, rebuilt = (ours.get(k) for k in
                                      ("platform", "environment_fingerprint", "rebuilt"))
    if platform is not None and not isinstance(platform, dict):
        raise SignatureError(f"{what}: predicate.reweigh.platform: expected an object")
    if fingerprint is not None and not is_digest(fingerprint):
        raise SignatureError(f"{what}: predicate.reweigh.environment_fingerprint: not a digest")
    if rebuilt is not None and not isinstance(rebuilt, dict):
        raise SignatureError(f"{what}: predicate.reweigh.rebuilt: expected an object")
    return Claim(item, _text(ours, "name", what), _text(ours, "version", what), derivation,
                 weights, files, platform, fingerprint, role, rebuilt,
                 _text(ours, "keyid", what), _text(ours, "signed_at", what))


def _files(predicate: dict[str, Any], ours: dict[str, Any], what: str) -> tuple[FileEntry, ...]:
    resources, sizes = _path(predicate, what, "resources"), _path(ours, what, "sizes")
    if not isinstance(resources, list) or not isinstance(sizes, dict) or not resources:
        raise SignatureError(f"{what}: predicate.resources: expected a list of files with "
                             "their sizes in predicate.reweigh.sizes")
    files = []
    for index, resource in enumerate(resources):
        where = f"{what}: predicate.resources[{index}]"
        if not isinstance(resource, dict) or resource.get("algorithm") != "sha256":
            raise SignatureError(f"{where}: expected a sha256 resource")
        path, digest = resource.get("name"), resource.get("digest")
        if not isinstance(path, str) or safe_relative(path) is None:
            raise SignatureError(f"{where}.name: {path!r} is not a plain relative path")
        if not isinstance(digest, str) or not _HEX_RE.fullmatch(digest):
            raise SignatureError(f"{where}.digest: not 64 lowercase hex digits")
        size = sizes.get(path)
        if type(size) is not int or not 0 <= size < _MAX_FILE:
            raise SignatureError(f"{what}: predicate.reweigh.sizes[{path!r}]: not a size")
        files.append(FileEntry(path, f"sha256:{digest}", size))
    paths = [f.path for f in files]
    if len(set(paths)) != len(paths) or set(sizes) != set(paths):
        raise SignatureError(f"{what}: predicate.resources: a path listed twice, or sizes "
                             "for other files")
    if [sort_key(p) for p in paths] != sorted(sort_key(p) for p in paths):
        raise SignatureError(f"{what}: predicate.resources: not in path order")
    _no_file_under_file(paths, what)
    return tuple(files)


def _no_file_under_file(paths: list[str], what: str) -> None:
    """`a` and `a/b` cannot both be files."""
    listed = set(paths)
    for path in paths:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in listed:
                raise SignatureError(f"{what}: predicate.resources: {path} lies under the "
                                     "file " + "/".join(parts[:depth]))


def safe_relative(path: str) -> str | None:
    """`path` when it is a plain relative path that stays inside its folder (no empty,
    `.` or `..` component, no leading `/`, no backslash or control character), else
    None."""
    if not path or len(path) > 4096 or path.startswith("/"):
        return None
    if any(ord(c) < 32 or c in "\\\x7f" for c in path):
        return None
    if any(part in ("", ".", "..") or len(part.encode()) > 255 for part in path.split("/")):
        return None
    return path


def strict_json(data: bytes, what: str, error: type[Exception]) -> Any:
    """JSON as a careful reader takes it from a stranger: UTF-8, no key twice, no NaN."""
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for key, value in items:
            if key in found:
                raise ValueError(f"the key {key!r} is given twice")
            found[key] = value
        return found

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=pairs,
                          parse_constant=constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise error(f"{what}: not valid JSON ({e})") from e


def _path(value: Any, what: str, *keys: str) -> Any:
    for depth, key in enumerate(keys):
        if not isinstance(value, dict) or key not in value:
            raise SignatureError(f"{what}: {'.'.join(keys[:depth + 1])}: missing")
        value = value[key]
    return value


def _text(value: dict[str, Any], key: str, what: str) -> str:
    found = value.get(key)
    if not isinstance(found, str):
        raise SignatureError(f"{what}: predicate.reweigh.{key}: expected text")
    return found
