"""reweigh install ITEM [--as NAME] [--profile DIR]: point NAME in a profile at ITEM.

Writes a new profile generation (so `reweigh profile rollback` undoes it) and makes
the item a gc root. Programs then find the network by NAME (`reweigh.profile`).
"""

from __future__ import annotations

import argparse

from ..verbs.profile import install
from .common import add_json_option, add_profile_option, add_store_option, open_store, print_json


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("install", help="make a store item a profile's network NAME")
    parser.add_argument("item", help="store path, name, derivation or weights digest")
    parser.add_argument("--as", dest="name", default=None,
                        help="the name programs ask for (default: the item's name)")
    add_profile_option(parser)
    add_store_option(parser)
    add_json_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    report = install(args.item, name=args.name, profile=args.profile, store=open_store(args))
    if args.json:
        print_json(report.to_json())
        return 0
    was = f" (was {report.replaced.name} {report.replaced.version})" if report.replaced else ""
    print(f"generation {report.generation}: {report.name} -> {report.entry.name} "
          f"{report.entry.version}{was}")
    print(f"  profile         {report.profile}")
    print(report.entry.item)
    return 0
