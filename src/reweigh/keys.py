"""Signing keys, and the public keys a user trusts to vouch for substitutes.

A key ring is a folder (`$REWEIGH_KEYS`, else `$XDG_CONFIG_HOME/reweigh/keys`):

    private/NAME.key    one's own private keys: PKCS#8 PEM, mode 0600 in a 0700 folder
    trust.json          every public key the user trusts or has revoked, with its window

A private key is read only to sign, in this process, and never leaves its file: no
command prints, exports or publishes it, and a key file that others may read is refused
(as ssh refuses one). What is shared is the public half, in one line: `NAME:BASE64`, the
raw 32 bytes of an ed25519 key as Nix writes its `trusted-public-keys`, or the DER
SubjectPublicKeyInfo of an ECDSA P-256 key (the curve OpenSSF Model Signing's own key
verifier accepts).

A key is known by its *key id*: the SHA-256 of its public key in PEM
(SubjectPublicKeyInfo), the `hint` OpenSSF Model Signing writes into a bundle. Names are
for people; thresholds count key ids, so one key trusted under two names is still one
signer (in-toto#202: several subkeys of one key once counted as several votes).

Trust has a window from the start (Nix's cache key has had none since 2015, RFC 0149):
`--until` ends it, `--not-before` starts it, and `revoke` ends it for good. A revoked key
stays in trust.json, so that trusting it again is refused rather than silently undone.
There is no trusted clock in a signature, so an expired or revoked key vouches for
nothing, whenever it signed: re-sign with a fresh key, or renew the trust.

What this module does not do: passphrases on private keys, hardware keys, or
distributing revocations to other machines (each user revokes in their own ring).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import enum
import fcntl
import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from .errors import SignatureError, UsageError

KEYS_ENV = "REWEIGH_KEYS"
TRUST_FORMAT = "reweigh.trust/1"
ED25519 = "ed25519"
P256 = "ecdsa-p256"
ALGORITHMS = (ED25519, P256)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
KEYID_RE = re.compile(r"^[0-9a-f]{64}$")
_TRUST_LIMIT = 16 << 20
_KEY_FILE_LIMIT = 64 << 10


class KeyStatus(enum.Enum):
    VALID = "valid"
    NOT_YET = "not yet valid"
    EXPIRED = "expired"
    REVOKED = "revoked"


@dataclass(frozen=True)
class PublicKey:
    """The public half of a signing key."""

    algorithm: str
    pem: bytes  # SubjectPublicKeyInfo, PEM

    @property
    def keyid(self) -> str:
        return hashlib.sha256(self.pem).hexdigest()

    def line(self, name: str) -> str:
        """`NAME:BASE64`: raw bytes for ed25519 (Nix's form), DER for P-256."""
        loaded = serialization.load_pem_public_key(self.pem)
        if isinstance(loaded, ed25519.Ed25519PublicKey):
            raw = loaded.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        else:
            raw = loaded.public_bytes(serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)
        return f"{name}:{base64.b64encode(raw).decode()}"

    def verify(self, signature: bytes, message: bytes) -> bool:
        loaded = serialization.load_pem_public_key(self.pem)
        try:
            if isinstance(loaded, ed25519.Ed25519PublicKey):
                loaded.verify(signature, message)
            elif isinstance(loaded, ec.EllipticCurvePublicKey):
                loaded.verify(signature, message, ec.ECDSA(hashes.SHA256()))
            else:
                return False
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class TrustedKey:
    """A public key in the trust list, with its window and whether it was revoked."""

    name: str
    key: PublicKey
    trusted_at: float
    not_before: float | None = None
    until: float | None = None
    revoked_at: float | None = None
    reason: str | None = None

    @property
    def keyid(self) -> str:
        return self.key.keyid

    def status(self, now: float) -> KeyStatus:
        if self.revoked_at is not None:
            return KeyStatus.REVOKED
        if self.not_before is not None and now < self.not_before:
            return KeyStatus.NOT_YET
        if self.until is not None and now >= self.until:
            return KeyStatus.EXPIRED
        return KeyStatus.VALID

    def describe(self, now: float) -> str:
        """`alice (valid until 2027-01-01T00:00:00Z)`, `bob (revoked on ...: reason)`."""
        return f"{self.name} ({self.state(now)})"

    def state(self, now: float) -> str:
        """`valid until ...`, `revoked on ...: reason`, `expired on ...`, ..."""
        status = self.status(now)
        if status is KeyStatus.REVOKED:
            assert self.revoked_at is not None
            why = f": {self.reason}" if self.reason else ""
            return f"revoked on {timestamp(self.revoked_at)}{why}"
        if status is KeyStatus.EXPIRED:
            assert self.until is not None
            return f"expired on {timestamp(self.until)}"
        if status is KeyStatus.NOT_YET:
            assert self.not_before is not None
            return f"not valid before {timestamp(self.not_before)}"
        return f"valid{' until ' + timestamp(self.until) if self.until else ''}"

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name, "keyid": self.keyid, "algorithm": self.key.algorithm,
            "public_key": self.key.line(self.name), "trusted_at": timestamp(self.trusted_at),
            "not_before": _maybe_time(self.not_before), "until": _maybe_time(self.until),
            "revoked_at": _maybe_time(self.revoked_at), "reason": self.reason}
        if now is not None:
            data["status"] = self.status(now).value
        return data


@dataclass(frozen=True)
class OwnKey:
    """One of the user's own signing keys: its name, public half and private key file."""

    name: str
    key: PublicKey
    path: Path


class Signer:
    """Signs with a private key read from its file for this one use; the key object lives
    as long as the signer and is never written anywhere."""

    def __init__(self, own: OwnKey, private: Any) -> None:
        self.name = own.name
        self.public = own.key
        self._private = private

    def sign(self, message: bytes) -> bytes:
        if isinstance(self._private, ed25519.Ed25519PrivateKey):
            return self._private.sign(message)
        return bytes(self._private.sign(message, ec.ECDSA(hashes.SHA256())))


def default_root() -> Path:
    if env := os.environ.get(KEYS_ENV):
        return Path(env)
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "reweigh" / "keys"


def timestamp(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _maybe_time(seconds: float | None) -> str | None:
    return None if seconds is None else timestamp(seconds)


def parse_time(text: str, option: str) -> float:
    """An ISO 8601 date (`2027-01-01`, meaning its first second, UTC) or date and time
    (`2027-01-01T12:00:00Z`, `...+02:00`; UTC when no offset is given)."""
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{option}: {text!r}: expected a date such as 2027-01-01 or "
                         "2027-01-01T12:00:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def public_key_from_pem(pem: bytes, what: str) -> PublicKey:
    try:
        loaded = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise UsageError(f"{what}: not a PEM public key ({e})") from e
    return _public(loaded, what)


def _public(loaded: Any, what: str) -> PublicKey:
    if isinstance(loaded, ed25519.Ed25519PublicKey):
        algorithm = ED25519
    elif isinstance(loaded, ec.EllipticCurvePublicKey) and loaded.curve.name == "secp256r1":
        algorithm = P256
    else:
        raise UsageError(f"{what}: an unsupported kind of key (ed25519 or ECDSA P-256 only)")
    pem = loaded.public_bytes(serialization.Encoding.PEM,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    return PublicKey(algorithm, pem)


def parse_line(text: str, what: str) -> tuple[str, PublicKey]:
    """`NAME:BASE64` -> (name, key); BASE64 is 32 raw ed25519 bytes or a DER public key."""
    name, sep, encoded = text.strip().rpartition(":")
    if not sep or not NAME_RE.fullmatch(name):
        raise UsageError(f"{what}: expected NAME:BASE64 (a public key line, as `reweigh keys "
                         "list` prints it) or a PEM public key file")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as e:
        raise UsageError(f"{what}: the key is not base64 ({e})") from e
    try:
        if len(raw) == 32:
            loaded: Any = ed25519.Ed25519PublicKey.from_public_bytes(raw)
        else:
            loaded = serialization.load_der_public_key(raw)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise UsageError(f"{what}: not a public key ({e})") from e
    return name, _public(loaded, what)


class KeyRing:
    """One user's keys: their own signing keys and the public keys they trust."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or default_root()).absolute()

    # --- own keys -----------------------------------------------------------------
    def generate(self, name: str, algorithm: str = ED25519, until: float | None = None,
                 now: float | None = None) -> OwnKey:
        """A new private key in private/NAME.key (created 0600, never overwritten), its
        public half trusted in this ring (so one's own cache can be pulled from)."""
        _check_name(name)
        if algorithm not in ALGORITHMS:
            raise UsageError(f"--algorithm: {algorithm!r}: expected one of "
                             f"{', '.join(ALGORITHMS)}")
        private = (ed25519.Ed25519PrivateKey.generate() if algorithm == ED25519
                   else ec.generate_private_key(ec.SECP256R1()))
        folder = self.root / "private"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(folder, 0o700)
        path = folder / f"{name}.key"
        data = private.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            raise UsageError(f"{path}: a key named {name} already exists") from None
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        own = OwnKey(name, _public(private.public_key(), str(path)), path)
        try:
            self.trust(own.key, name, until=until, now=now)
        except UsageError:
            path.unlink()
            raise
        return own

    def own(self) -> list[OwnKey]:
        folder = self.root / "private"
        found = []
        for path in sorted(folder.glob("*.key")) if folder.is_dir() else []:
            found.append(OwnKey(path.stem, _public(self._load_private(path).public_key(),
                                                   str(path)), path))
        return found

    def signer(self, name: str | None, now: float | None = None) -> Signer:
        """The signer of own key `name` (or the only own key), refused when its trust here
        was revoked, has ended or has not begun: what the owner does not trust, nobody
        should be asked to."""
        owned = self.own()
        if name is None:
            if len(owned) != 1:
                names = ", ".join(k.name for k in owned) or "none; make one with `reweigh keys "\
                                                             "generate NAME`"
                raise UsageError(f"--key: which signing key? (own keys in {self.root}: {names})")
            chosen = owned[0]
        else:
            matching = [k for k in owned if k.name == name]
            if not matching:
                raise UsageError(f"--key: {name}: no private key of that name in "
                                 f"{self.root / 'private'}")
            chosen = matching[0]
        entry = self.lookup(chosen.key.keyid)
        moment = time.time() if now is None else now
        if entry is not None and entry.status(moment) is not KeyStatus.VALID:
            raise SignatureError(f"key {entry.describe(moment)} may not sign")
        return Signer(chosen, self._load_private(chosen.path))

    def _load_private(self, path: Path) -> Any:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{path}: not a regular file")
        if st.st_mode & 0o077:
            raise UsageError(f"{path}: a private key that others may read or write "
                             f"(mode {stat.S_IMODE(st.st_mode):o}); chmod 600 it")
        if st.st_uid != os.getuid():
            raise UsageError(f"{path}: a private key owned by another user")
        try:
            loaded = serialization.load_pem_private_key(path.read_bytes(), None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:
            raise UsageError(f"{path}: not an unencrypted PKCS#8 private key") from e
        _public(loaded.public_key(), str(path))
        return loaded

    # --- trust ----------------------------------------------------------------------
    def trusted(self) -> list[TrustedKey]:
        """Every entry of trust.json (valid, expired, not yet valid and revoked)."""
        return _read_trust(self.root / "trust.json")

    def lookup(self, keyid: str) -> TrustedKey | None:
        return next((k for k in self.trusted() if k.keyid == keyid), None)

    def valid(self, now: float | None = None) -> dict[str, TrustedKey]:
        """Key id -> entry of every key that vouches now."""
        moment = time.time() if now is None else now
        return {k.keyid: k for k in self.trusted() if k.status(moment) is KeyStatus.VALID}

    def trust(self, key: PublicKey, name: str, *, until: float | None = None,
              not_before: float | None = None, now: float | None = None) -> TrustedKey:
        """Trust `key` under `name`; trusting an already trusted key again sets its window
        (a renewal); a revoked key stays revoked."""
        _check_name(name)
        moment = time.time() if now is None else now
        if until is not None and not_before is not None and until <= not_before:
            raise UsageError("--until: the window ends before it begins (--not-before)")
        with self._locked():
            entries = self.trusted()
            same = next((e for e in entries if e.keyid == key.keyid), None)
            if same is not None and same.revoked_at is not None:
                raise UsageError(f"{name}: this key was revoked as {same.describe(moment)}; "
                                 "a revoked key is not trusted again")
            if same is not None and same.name != name:
                raise UsageError(f"{name}: this key is already trusted as {same.name}")
            if same is None and any(e.name == name for e in entries):
                raise UsageError(f"{name}: another key is already trusted under this name")
            entry = (replace(same, until=until, not_before=not_before) if same is not None
                     else TrustedKey(name, key, moment, not_before, until))
            kept = [e for e in entries if e.keyid != key.keyid]
            self._write(sorted([*kept, entry], key=lambda e: e.name))
        return entry

    def revoke(self, ref: str, reason: str | None = None,
               now: float | None = None) -> TrustedKey:
        """Revoke a trusted key by name or key id (or one's own key by name, trusted or
        not): from now on it vouches for nothing, and one's own may no longer sign."""
        moment = time.time() if now is None else now
        with self._locked():
            entries = self.trusted()
            found = next((e for e in entries if ref in (e.name, e.keyid)), None)
            if found is None:
                own = next((k for k in self.own() if k.name == ref), None)
                if own is None:
                    raise UsageError(f"{ref}: no trusted or own key of that name or key id")
                found = TrustedKey(own.name, own.key, moment)
            if found.revoked_at is not None:
                return found
            revoked = replace(found, revoked_at=moment, reason=reason)
            kept = [e for e in entries if e.keyid != found.keyid]
            self._write(sorted([*kept, revoked], key=lambda e: e.name))
        return revoked

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _write(self, entries: list[TrustedKey]) -> None:
        data = {"format": TRUST_FORMAT, "keys": [e.to_json() for e in entries]}
        target = self.root / "trust.json"
        temporary = self.root / f".trust-{os.getpid()}-{time.time_ns()}.json"
        temporary.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, target)


def _check_name(name: str) -> None:
    if not NAME_RE.fullmatch(name):
        raise UsageError(f"{name!r}: a key name is letters, digits, '.', '_' and '-' "
                         "(at most 64, starting with a letter or digit)")


def _read_trust(path: Path) -> list[TrustedKey]:
    """trust.json, read strictly: a damaged list must not quietly trust less or more."""
    try:
        if path.stat().st_size > _TRUST_LIMIT:
            raise UsageError(f"{path}: larger than {_TRUST_LIMIT} bytes")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError, RecursionError) as e:
        raise UsageError(f"{path}: not a readable trust list ({e})") from e
    if not isinstance(data, dict) or data.get("format") != TRUST_FORMAT \
            or not isinstance(data.get("keys"), list):
        raise UsageError(f"{path}: format: expected {TRUST_FORMAT!r} with a list of keys")
    return [_entry(path, index, raw) for index, raw in enumerate(data["keys"])]


def _entry(path: Path, index: int, raw: Any) -> TrustedKey:
    where = f"{path}: keys[{index}]"
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: expected an object")
    line = raw.get("public_key")
    if not isinstance(line, str):
        raise UsageError(f"{where}.public_key: missing")
    name, key = parse_line(line, f"{where}.public_key")
    if raw.get("name") != name:
        raise UsageError(f"{where}.name: does not match its public key line")
    times = {}
    for field in ("trusted_at", "not_before", "until", "revoked_at"):
        value = raw.get(field)
        if value is not None and not isinstance(value, str):
            raise UsageError(f"{where}.{field}: expected a date and time")
        times[field] = None if value is None else parse_time(value, f"{where}.{field}")
    reason = raw.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise UsageError(f"{where}.reason: expected text")
    return TrustedKey(name, key, times["trusted_at"] or 0.0, times["not_before"],
                      times["until"], times["revoked_at"], reason)


def read_key_argument(text: str, name: str | None) -> tuple[str, PublicKey]:
    """What `keys trust` is given: a file (a PEM public key, or a key line) or a key
    line itself; the name comes from --name, the line, or the file's name."""
    path = Path(text)
    if "\n" not in text and len(text) < 4096 and path.is_file():
        if path.stat().st_size > _KEY_FILE_LIMIT:
            raise UsageError(f"{path}: too large for a public key")
        content = path.read_bytes()
        if b"PRIVATE KEY" in content:
            raise UsageError(f"{path}: a private key; trust its public half (`reweigh keys "
                             "list` prints it), and keep the private key where it is")
        if content.lstrip().startswith(b"-----BEGIN"):
            return name or path.stem, public_key_from_pem(content, str(path))
        found_name, key = parse_line(content.decode("utf-8", "replace"), str(path))
        return name or found_name, key
    found_name, key = parse_line(text, "KEY")
    return name or found_name, key
