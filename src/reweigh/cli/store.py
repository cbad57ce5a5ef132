"""reweigh store verify|repair [--json]: check the store; rebuild its index from the items.

`verify` rehashes every item and input and exits 1 if anything is corrupted or unknown
to the index; `repair` sets an unreadable index aside, indexes every item and input the
index does not know, and exits 1 if some could not be indexed.
"""

from __future__ import annotations

import argparse

from ..store import Corruption
from .common import add_json_option, add_store_option, open_store, print_json


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("store", help="store maintenance")
    actions = parser.add_subparsers(dest="action", required=True)
    verify = actions.add_parser("verify", help="rehash everything, report corrupted items")
    repair = actions.add_parser("repair", help="rebuild the index from the items' own records")
    for action, run in ((verify, run_verify), (repair, run_repair)):
        add_store_option(action)
        add_json_option(action)
        action.set_defaults(run=run)


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


def run_repair(args: argparse.Namespace) -> int:
    from ..verbs.repair import repair_store

    report = repair_store(args.store)
    if args.json:
        print_json(report.to_json())
        return 1 if report.skipped else 0
    if report.broken_index is not None:
        print(f"the unreadable index is kept as {report.broken_index}; build attempts and "
              "checks it held are not recovered")
    for path, why in report.skipped:
        print(f"skipped {path}: {why}")
    print(f"indexed {len(report.items)} item(s) and {len(report.inputs)} input(s) again; "
          f"skipped {len(report.skipped)}")
    return 1 if report.skipped else 0
