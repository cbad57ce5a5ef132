"""reweigh path ITEM: the store path of an item (for scripts)."""

from __future__ import annotations

import argparse

from ..verbs.store import path
from .common import add_store_option, open_store


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("path", help="print an item's store path")
    parser.add_argument("item", help="store path, name, derivation or weights digest")
    add_store_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    print(path(args.item, open_store(args)))
    return 0
