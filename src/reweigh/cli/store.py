"""reweigh store verify [--json]: rehash every item and input; exit 1 if anything is
corrupted or unknown to the index."""

from __future__ import annotations

import argparse

from ..store import Corruption
from .common import add_json_option, add_store_option, open_store, print_json


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("store", help="store maintenance")
    actions = parser.add_subparsers(dest="action", required=True)
    verify = actions.add_parser("verify", help="rehash everything, report corrupted items")
    add_store_option(verify)
    add_json_option(verify)
    verify.set_defaults(run=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    from ..verbs.store import verify_store

    store = open_store(args)
    problems = verify_store(store)
    if args.json:
        print_json({"ok": not problems, "items": len(store.items()),
                    "corrupted": [vars(p) for p in problems]})
    elif problems:
        for p in problems:
            print(f"{p.problem:10} {p.item}/{p.relpath}".rstrip("/"))
        print(_summary(problems))
    else:
        print(f"all {len(store.items())} items verified")
    return 1 if problems else 0


def _summary(problems: list[Corruption]) -> str:
    unknown = sum(p.problem == "unknown" for p in problems)
    damaged = len({p.item for p in problems if p.problem != "unknown"})
    parts = [f"{damaged} corrupted item(s) or input(s)" if damaged else "",
             f"{unknown} folder(s) the index does not know (hint: `reweigh store repair` "
             "indexes them)" if unknown else ""]
    return "; ".join(p for p in parts if p)
