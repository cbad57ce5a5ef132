"""Key rings: private keys that stay in their 0600 files, trust with windows, revocation."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from reweigh.errors import SignatureError, UsageError
from reweigh.keys import KeyRing, KeyStatus, parse_line, parse_time

from .helpers import run_reweigh


def test_generate_writes_the_private_key_0600_in_a_0700_folder_and_never_prints_it(
        tmp_path: Path) -> None:
    result = run_reweigh("keys", "generate", "alice", "--keys", tmp_path, "--json")
    assert result.returncode == 0, result.stderr
    key = tmp_path / "private" / "alice.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o700
    secret = key.read_text()
    body = "".join(secret.splitlines()[1:-1])
    listing = run_reweigh("keys", "list", "--keys", tmp_path)
    for output in (result.stdout, listing.stdout, (tmp_path / "trust.json").read_text()):
        assert "PRIVATE" not in output and body[:40] not in output
    report = json.loads(result.stdout)
    assert report["public_key"].startswith("alice:") and len(report["keyid"]) == 64
    again = run_reweigh("keys", "generate", "alice", "--keys", tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert key.read_text() == secret  # never overwritten


def test_a_private_key_others_may_read_is_refused(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path)
    own = ring.generate("alice")
    os.chmod(own.path, 0o644)
    with pytest.raises(UsageError, match="chmod 600"):
        ring.signer("alice")


def test_trusting_a_private_key_file_is_refused_without_showing_it(tmp_path: Path) -> None:
    own = KeyRing(tmp_path / "a").generate("alice")
    result = run_reweigh("keys", "trust", own.path, "--keys", tmp_path / "b")
    assert result.returncode == 2 and "a private key" in result.stderr
    assert "BEGIN" not in result.stderr


def test_a_public_key_line_round_trips_in_nix_form(tmp_path: Path) -> None:
    own = KeyRing(tmp_path).generate("cache.example.org-1")
    line = own.key.line(own.name)
    name, key = parse_line(line, "line")
    raw = line.split(":", 1)[1]
    assert name == "cache.example.org-1" and key == own.key
    assert len(__import__("base64").b64decode(raw)) == 32  # raw ed25519, as Nix writes it


def test_trust_windows_and_revocation_decide_whether_a_key_counts(tmp_path: Path) -> None:
    signer = KeyRing(tmp_path / "signer").generate("bob")
    ring = KeyRing(tmp_path / "ring")
    now = parse_time("2030-06-01", "now")
    entry = ring.trust(signer.key, "bob", not_before=parse_time("2030-01-01", "x"),
                       until=parse_time("2031-01-01", "x"), now=now)
    assert entry.status(now) is KeyStatus.VALID
    assert entry.status(parse_time("2029-12-31", "x")) is KeyStatus.NOT_YET
    assert entry.status(parse_time("2031-01-01", "x")) is KeyStatus.EXPIRED
    assert set(ring.valid(now)) == {signer.key.keyid}
    renewed = ring.trust(signer.key, "bob", until=parse_time("2032-01-01", "x"), now=now)
    assert renewed.status(parse_time("2031-06-01", "x")) is KeyStatus.VALID
    with pytest.raises(UsageError, match="already trusted as bob"):
        ring.trust(signer.key, "robert")
    ring.revoke(signer.key.keyid, "compromised", now=now)
    assert ring.valid(now) == {}
    with pytest.raises(UsageError, match="revoked"):
        ring.trust(signer.key, "bob")


def test_a_revoked_or_expired_own_key_may_not_sign(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path)
    ring.generate("old", until=parse_time("2020-01-01", "x"))
    with pytest.raises(SignatureError, match="expired"):
        ring.signer("old")
    ring.generate("lost")
    result = run_reweigh("keys", "revoke", "lost", "--reason", "stolen", "--keys", tmp_path)
    assert result.returncode == 0
    with pytest.raises(SignatureError, match=r"revoked on .*: stolen"):
        ring.signer("lost")


def test_a_damaged_trust_list_stops_with_one_line(tmp_path: Path) -> None:
    KeyRing(tmp_path).generate("alice")
    trust = json.loads((tmp_path / "trust.json").read_text())
    trust["keys"][0]["public_key"] = "alice:not-base64!"
    (tmp_path / "trust.json").write_text(json.dumps(trust))
    result = run_reweigh("keys", "list", "--keys", tmp_path)
    assert result.returncode == 2
    assert "trust.json: keys[0].public_key" in result.stderr and result.stderr.count("\n") == 1
