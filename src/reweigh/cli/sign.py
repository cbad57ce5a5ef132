"""reweigh sign ITEM [--key NAME] [--output FILE]: vouch for a store item.

The bundle is kept in the store's signatures/ (where `publish` finds it); --output
writes a copy. Its path is the last line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..keys import KeyRing
from ..verbs.sign import sign_item
from .common import add_json_option, add_store_option, open_store, print_json
from .keys import add_keys_option


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("sign", help="sign a store item with your key")
    parser.add_argument("item", help="store path, name, derivation or weights digest")
    parser.add_argument("--key", default=None, help="own key to sign with (default: the "
                        "only one)")
    parser.add_argument("--output", type=Path, default=None, help="also write the bundle here")
    add_keys_option(parser)
    add_store_option(parser)
    add_json_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    report = sign_item(args.item, key=args.key, output=args.output, store=open_store(args),
                       keyring=KeyRing(args.keys))
    if args.json:
        print_json(report.to_json())
        return 0
    print(f"signed {report.item.name} with {report.key_name} ({report.keyid[:16]}): "
          f"{report.files} files, derivation, weights"
          + (", platform " + str(report.platform.get("name")) if report.platform else "")
          + (", environment fingerprint" if report.environment_fingerprint else ""))
    print(report.bundle)
    return 0
