"""reweigh keys generate|list|trust|revoke: signing keys and the keys one trusts.

`generate NAME` makes a private key (mode 0600, never printed) and trusts its public
half; `list` shows one's own keys and every trusted key with its window and state (the
public key lines are what to give others); `trust FILE-or-KEY [--until DATE]` trusts a
public key (a PEM file, or a `NAME:BASE64` line as `list` prints it); `revoke NAME`
ends a key's trust for good. The ring is `$REWEIGH_KEYS` or `--keys DIR`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..keys import ALGORITHMS, ED25519, KeyRing, KeyStatus, parse_time, read_key_argument
from .common import add_json_option, print_json


def add_keys_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keys", type=Path, default=None,
                        help="key ring folder (default: $REWEIGH_KEYS, else "
                        "$XDG_CONFIG_HOME/reweigh/keys)")


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("keys", help="signing keys and the keys you trust")
    actions = parser.add_subparsers(dest="action", required=True)
    generate = actions.add_parser("generate", help="make a signing key (and trust it)")
    generate.add_argument("name")
    generate.add_argument("--algorithm", choices=ALGORITHMS, default=ED25519,
                          help="ed25519 (default) or ecdsa-p256 (which OpenSSF Model "
                          "Signing's key verifier also accepts)")
    generate.add_argument("--until", default=None, help="the key's trust ends then (a date)")
    generate.set_defaults(run=run_generate)
    listing = actions.add_parser("list", help="own keys and trusted keys")
    listing.set_defaults(run=run_list)
    trust = actions.add_parser("trust", help="trust a public key, or renew its window")
    trust.add_argument("key", help="a public key file (PEM or a NAME:BASE64 line) or a line")
    trust.add_argument("--name", default=None, help="the name to trust it under")
    trust.add_argument("--until", default=None, help="trust ends then (a date, UTC)")
    trust.add_argument("--not-before", default=None, help="trust begins then (a date, UTC)")
    trust.set_defaults(run=run_trust)
    revoke = actions.add_parser("revoke", help="revoke a key for good (by name or key id)")
    revoke.add_argument("key")
    revoke.add_argument("--reason", default=None)
    revoke.set_defaults(run=run_revoke)
    for action in actions.choices.values():
        add_keys_option(action)
        add_json_option(action)


def _time(text: str | None, option: str) -> float | None:
    return None if text is None else parse_time(text, option)


def run_generate(args: argparse.Namespace) -> int:
    ring = KeyRing(args.keys)
    own = ring.generate(args.name, args.algorithm, until=_time(args.until, "--until"))
    line = own.key.line(own.name)
    if args.json:
        print_json({"name": own.name, "keyid": own.key.keyid, "algorithm": own.key.algorithm,
                    "public_key": line, "private_key": str(own.path)})
        return 0
    print(f"generated {own.key.algorithm} key {own.name} ({own.key.keyid[:16]})")
    print(f"  private key  {own.path} (mode 600; never leaves this file)")
    print("  trusted here; others trust it with:")
    print(f"  reweigh keys trust {line}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    ring = KeyRing(args.keys)
    now = time.time()
    own, trusted = ring.own(), ring.trusted()
    if args.json:
        print_json({"keys": str(ring.root),
                    "own": [{"name": k.name, "keyid": k.key.keyid, "algorithm": k.key.algorithm,
                             "public_key": k.key.line(k.name), "private_key": str(k.path)}
                            for k in own],
                    "trusted": [k.to_json(now) for k in trusted]})
        return 0
    print(f"own keys ({ring.root / 'private'}):" if own else "own keys: none")
    for k in own:
        print(f"  {k.name:20} {k.key.algorithm:10} {k.key.keyid[:16]}  {k.key.line(k.name)}")
    print("trusted keys:" if trusted else "trusted keys: none")
    for t in trusted:
        mark = "" if t.status(now) is KeyStatus.VALID else "  [does not count]"
        print(f"  {t.describe(now):50} {t.keyid[:16]}{mark}")
    return 0


def run_trust(args: argparse.Namespace) -> int:
    ring = KeyRing(args.keys)
    name, key = read_key_argument(args.key, args.name)
    entry = ring.trust(key, name, until=_time(args.until, "--until"),
                       not_before=_time(args.not_before, "--not-before"))
    now = time.time()
    if args.json:
        print_json(entry.to_json(now))
        return 0
    print(f"trusted {entry.describe(now)}, key id {entry.keyid}")
    if entry.status(now) is not KeyStatus.VALID:
        print(f"  note: it vouches for nothing now ({entry.status(now).value})")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    entry = KeyRing(args.keys).revoke(args.key, args.reason)
    if args.json:
        print_json(entry.to_json(time.time()))
        return 0
    print(f"revoked {entry.describe(time.time())}: it vouches for nothing from now on")
    return 0
