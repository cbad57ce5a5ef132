"""reweigh gc [--dry-run]: remove the store items and inputs no profile needs.

Kept: every item named by any generation of a registered profile (`reweigh install`
registers it), the items those were fine-tuned from, and the inputs they were built
from. Everything else is removed, as `guix gc` does.
"""

from __future__ import annotations

import argparse

from ..verbs.gc import GRACE_SECONDS, gc
from .common import add_json_option, add_store_option, non_negative_int, open_store, print_json


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("gc", help="remove items and inputs no profile needs")
    parser.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    parser.add_argument("--grace", type=non_negative_int, default=int(GRACE_SECONDS),
                        help="keep unused inputs added less than this many seconds ago "
                        f"(default {int(GRACE_SECONDS)}: a build may be about to use them)")
    add_store_option(parser)
    add_json_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    report = gc(open_store(args), dry_run=args.dry_run, grace=args.grace)
    if args.json:
        print_json(report.to_json())
        return 0
    verb = "would remove" if report.dry_run else "removed"
    for item in report.removed_items:
        print(f"{verb} {item}")
    for digest in report.removed_inputs:
        print(f"{verb} input {digest}")
    print(f"{verb} {len(report.removed_items)} item(s) and {len(report.removed_inputs)} "
          f"input(s), {report.freed_bytes / 1e6:.1f} MB; kept {len(report.kept)} item(s) "
          f"for {len(report.roots)} profile(s)")
    return 0
