"""reweigh rebuild NAME --from URL [--key K] [--to DIR] [--output FILE] [--no-sign]:
rebuild a published item from its own source, and vouch for it when the weights are
bit-identical.

Exit 0: identical (and signed, unless --no-sign); 1: the rebuild gave other weights (or
another derivation here); 2: bad input. The signature's path is the last line. A
server whose copy does not check out is named on stderr in one line, and the next
`--from` server listing the same item is asked.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..keys import KeyRing
from ..progress import reporter_for
from ..verbs.rebuild import RebuildOptions, rebuild
from .common import add_run_options, open_store, print_json, warn_line
from .keys import add_keys_option
from .pull import add_from_option


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("rebuild", help="rebuild a published item from its source "
                                 "and sign it when the weights are identical")
    parser.add_argument("item", help="item name, derivation, weights digest or name")
    add_from_option(parser)
    parser.add_argument("--key", default=None, help="own key to sign with (default: the only)")
    parser.add_argument("--no-sign", action="store_true", help="only rebuild and compare")
    parser.add_argument("--to", type=Path, default=None,
                        help="a cache folder to publish the signature into")
    parser.add_argument("--output", type=Path, default=None, help="also write the bundle here")
    add_keys_option(parser)
    add_run_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    options = RebuildOptions(args.key, not args.no_sign, args.to, args.output, args.threads)
    report = rebuild(args.item, args.sources, options, store=open_store(args),
                     keyring=KeyRing(args.keys), reporter=reporter_for(args.json),
                     warn=warn_line)
    if args.json:
        print_json(report.to_json())
        return 0 if report.identical else 1
    print(f"published {report.item}: weights {report.published_digest}")
    print(f"rebuilt   {report.rebuilt}: weights {report.rebuilt_digest}")
    if not report.identical:
        print("verdict: different: the rebuild does not reproduce the published weights; "
              "not signed")
        return 1
    print("verdict: bit-identical")
    if report.signature is not None:
        if report.published_to is not None:
            print(f"signature published to {report.published_to}")
        print(report.signature)
    return 0
