"""reweigh list [--json]: the items in the store, oldest first."""

from __future__ import annotations

import argparse
import time

from ..verbs.store import list_items
from .common import add_json_option, add_store_option, open_store, print_json


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("list", help="list the store's items")
    add_store_option(parser)
    add_json_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    items = list_items(open_store(args))
    if args.json:
        print_json([{"path": str(i.path), "name": i.name, "version": i.version,
                     "derivation": i.derivation, "weights_digest": i.weights_digest,
                     "created_at": i.created_at} for i in items])
        return 0
    for i in items:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(i.created_at))
        print(f"{i.name:20} {i.version:10} {when}  {i.weights_digest[:19]}  {i.path}")
    return 0
