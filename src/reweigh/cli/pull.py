"""reweigh pull NAME-or-DERIVATION --from URL [--from URL...] [--require K]: install a
signed substitute.

Exit 1 when the signatures do not suffice or anything does not check out (nothing is
written then); 2 when no cache has the item or the call is wrong. A server whose copy is
refused (its record, or its archive as it streams) is named on stderr in one line, and
the next server listing the same signed item is tried. The store path is the
last line.
"""

from __future__ import annotations

import argparse

from ..keys import KeyRing
from ..progress import reporter_for
from ..verbs.pull import pull
from .common import (
    add_json_option,
    add_store_option,
    open_store,
    positive_int,
    print_json,
    warn_line,
)
from .keys import add_keys_option


def add_from_option(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--from", dest="sources", action="append", required=required,
                        default=None, metavar="URL",
                        help="a cache: an http(s):// URL or a folder; repeat for several, "
                        "asked in this order")


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("pull", help="install a signed item from binary caches")
    parser.add_argument("item", help="item name, derivation, weights digest or name")
    add_from_option(parser)
    parser.add_argument("--require", type=positive_int, default=1, metavar="K",
                        help="distinct trusted, valid keys that must sign it (default 1)")
    add_keys_option(parser)
    add_store_option(parser)
    add_json_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    report = pull(args.item, args.sources, require=args.require, store=open_store(args),
                  keyring=KeyRing(args.keys), reporter=reporter_for(args.json),
                  warn=warn_line)
    if args.json:
        print_json(report.to_json())
        return 0
    if report.reused:
        print(f"{report.item} is already in the store")
    else:
        resumed = f", resumed after {report.resumed_from} bytes" if report.resumed_from else ""
        print(f"pulled {report.item} from {report.source} ({report.received} bytes{resumed})")
        print(f"  signed by {len(report.signers)} of the {report.required} required: "
              f"{', '.join(report.signers)}")
        for line in report.refused:
            print(f"  not counted: {line}")
        chunks = report.checkpoint_chunks
        if chunks.get("named"):
            print(f"  kept checkpoints: {chunks['fetched']} of {chunks['named']} chunks fetched "
                  f"({chunks['received']} bytes)"
                  + (f"; {chunks['absent']} no cache asked had: those checkpoints are absent "
                     "(verify replays through them, or fetches them: verify --from URL)"
                     if chunks["absent"] else ""))
    print(report.path)
    return 0
