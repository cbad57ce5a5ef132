"""reweigh build RECIPE [--check] [--threads N] [--json]: print the item's store path."""

from __future__ import annotations

import argparse

from ..progress import reporter_for
from ..verbs.build import build
from .common import add_run_options, add_workers_options, open_store, print_json


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("build", help="build a recipe (or reuse its item)")
    parser.add_argument("recipe", help="recipe directory or its recipe.toml")
    parser.add_argument("--check", action="store_true",
                        help="rebuild and compare bit for bit with the stored item")
    add_run_options(parser)
    add_workers_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    report = build(args.recipe, store=open_store(args), threads=args.threads, check=args.check,
                   reporter=reporter_for(args.json), sandbox=args.sandbox)
    failed = report.check is not None and not report.check.identical
    if args.json:
        print_json(report.to_json())
        return 1 if failed else 0
    print(f"{'reused' if report.reused else 'built'} {report.name} {report.version}")
    print(f"  derivation      {report.derivation}")
    print(f"  weights         {report.weights_digest}")
    print(f"  platform        {report.platform} ({report.platform_digest})")
    if report.check is not None:
        if report.check.identical:
            print("  check           rebuilt weights are bit-identical")
        else:
            print(f"  check           MISMATCH: rebuilt weights {report.check.rebuilt_digest}")
            for diff in report.check.differing:
                print(f"    {diff.name}: {diff.status}, max abs {diff.max_abs:.3g}, "
                      f"relative L2 {diff.rel_l2:.3g}")
    print(report.path)
    return 1 if failed else 0
