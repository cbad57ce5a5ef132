"""reweigh gc [--dry-run]: remove the store items and inputs no profile needs.

Kept: every item named by any generation of a registered profile (`reweigh install`
registers it), the items those were fine-tuned from, and the inputs they were built
from. Everything else is removed, as `guix gc` does.
"""

from __future__ import annotations

import argparse

from ..verbs.gc import GRACE_SECONDS, PARTIAL_AGE, gc
from .common import add_json_option, add_store_option, non_negative_int, open_store, print_json


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("gc", help="remove items and inputs no profile needs")
    parser.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    parser.add_argument("--partial-age", type=non_negative_int, default=int(PARTIAL_AGE),
                        metavar="SECONDS",
                        help="remove interrupted pulls' transfers nothing was written to for "
                        f"this long (default {int(PARTIAL_AGE)}: a day); younger ones stay "
                        "for a resume unless their item is in the store")
    parser.add_argument("--grace", type=non_negative_int, default=int(GRACE_SECONDS),
                        help="keep unused inputs added less than this many seconds ago "
                        f"(default {int(GRACE_SECONDS)}: a build may be about to use them)")
    add_store_option(parser)
    add_json_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    report = gc(open_store(args), dry_run=args.dry_run, grace=args.grace,
                partial_age=args.partial_age)
    if args.json:
        print_json(report.to_json())
        return 0
    verb = "would remove" if report.dry_run else "removed"
    for item in report.removed_items:
        print(f"{verb} {item}")
    for digest in report.removed_inputs:
        print(f"{verb} input {digest}")
    for partial in report.partials:
        print(f"{verb} the interrupted pull tmp/{partial['folder']} ({partial['reason']})")
    for name in report.vanished:
        print(f"{'would forget' if report.dry_run else 'forgot'} {name}: its folder was "
              "deleted by hand (its index rows remained)")
    print(f"{verb} {len(report.removed_items)} item(s) and {len(report.removed_inputs)} "
          f"input(s), {report.freed_bytes / 1e6:.1f} MB; kept {len(report.kept)} item(s) "
          f"for {len(report.roots)} profile(s)")
    return 0
