"""reweigh publish ITEM... --to DIR [--sign KEY] [--signatures-only]: a static cache folder.

Any static HTTP server can serve DIR (or `reweigh serve DIR`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..keys import KeyRing
from ..verbs.publish import publish
from .common import add_json_option, add_store_option, open_store, print_json
from .keys import add_keys_option


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("publish", help="lay items out as a binary cache folder")
    parser.add_argument("items", nargs="+", help="store paths, names or digests")
    parser.add_argument("--to", type=Path, required=True, help="the cache folder")
    parser.add_argument("--sign", default=None, metavar="KEY",
                        help="sign each item with this own key first")
    parser.add_argument("--signatures-only", action="store_true",
                        help="publish the records and signatures, not the archives")
    add_keys_option(parser)
    add_store_option(parser)
    add_json_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    report = publish(args.items, args.to, sign_with=args.sign,
                     archive=not args.signatures_only, store=open_store(args),
                     keyring=KeyRing(args.keys))
    if args.json:
        print_json(report.to_json())
        return 0
    for item in report.items:
        size = f"archive {item.archive_size} bytes" if item.archive else "no archive"
        print(f"published {item.item}: {size}, {len(item.signers)} signatures")
        if not item.signers:
            print("  warning: unsigned; pulls refuse it until someone signs it "
                  "(reweigh sign ITEM, then publish again)")
        for line in item.skipped:
            print(f"  not passed on: {line}")
        if item.chunks is not None and (item.chunks.added or item.chunks.absent):
            print(f"  checkpoints: {item.chunks.added} chunks added ({item.chunks.size} "
                  "bytes)" + (f"; {len(item.chunks.absent)} not in the store, left out "
                              "(pulls find those checkpoints absent)"
                              if item.chunks.absent else ""))
    print(report.folder)
    return 0
