"""reweigh profile list|rollback|switch|delete|remove: a profile's generations.

`list` shows every generation and what each name pointed at; `rollback` switches to
the generation before the current one, `switch N` to any; `delete N...` drops old
generations (their items become garbage for `reweigh gc`); `remove NAME` writes a
new generation without NAME.
"""

from __future__ import annotations

import argparse
import time

from ..profile import Generation
from ..verbs.profile import (
    delete_generations,
    list_generations,
    rollback,
    switch_generation,
    uninstall,
)
from .common import add_json_option, add_profile_option, non_negative_int, print_json


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("profile", help="a profile's generations")
    actions = parser.add_subparsers(dest="action", required=True)
    for name, text, run in (("list", "list generations and their networks", run_list),
                            ("rollback", "switch to the previous generation", run_rollback)):
        action = actions.add_parser(name, help=text)
        action.set_defaults(run=run)
    switch = actions.add_parser("switch", help="switch to generation N")
    switch.add_argument("generation", type=non_negative_int)
    switch.set_defaults(run=run_switch)
    delete = actions.add_parser("delete", help="delete generations (not the current one)")
    delete.add_argument("generations", type=non_negative_int, nargs="+")
    delete.set_defaults(run=run_delete)
    remove = actions.add_parser("remove", help="a new generation without NAME")
    remove.add_argument("name")
    remove.set_defaults(run=run_remove)
    for action in actions.choices.values():
        add_profile_option(action)
        add_json_option(action)


def _show(generation: Generation, current: bool) -> None:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(generation.created_at))
    print(f"generation {generation.number}  {when}{'  (current)' if current else ''}")
    for name, entry in sorted(generation.networks.items()):
        missing = "" if entry.item.is_dir() else "  [gone from the store]"
        print(f"  {name:16} {entry.name} {entry.version}  {entry.item}{missing}")


def run_list(args: argparse.Namespace) -> int:
    report = list_generations(args.profile)
    if args.json:
        print_json(report.to_json())
        return 0
    if not report.generations:
        print(f"{report.profile}: no generations yet (reweigh install ITEM --as NAME)")
    for generation in report.generations:
        _show(generation, generation.number == report.current)
    return 0


def _switched(args: argparse.Namespace, generation: Generation, verb: str) -> int:
    if args.json:
        print_json({"generation": generation.number, "networks": {
            n: e.to_json() for n, e in generation.networks.items()}})
        return 0
    print(f"{verb} generation {generation.number}")
    _show(generation, True)
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    return _switched(args, rollback(args.profile), "rolled back to")


def run_switch(args: argparse.Namespace) -> int:
    return _switched(args, switch_generation(args.generation, args.profile), "switched to")


def run_remove(args: argparse.Namespace) -> int:
    return _switched(args, uninstall(args.name, args.profile), "removed " + args.name + ": ")


def run_delete(args: argparse.Namespace) -> int:
    deleted = delete_generations(args.generations, args.profile)
    if args.json:
        print_json({"deleted": deleted})
    else:
        print("deleted generation(s) " + ", ".join(map(str, deleted)))
    return 0
