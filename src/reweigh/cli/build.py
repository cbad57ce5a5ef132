"""reweigh build RECIPE... [--check] [--threads N] [--workers N] [--json]: print each
item's store path.

Several recipes build at once, `--workers` of them at a time (default one after the
other), each in a sandbox of its own on one worker: a packager's rebuild of every model
a distribution ships is one command.
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import ReweighError, UsageError
from ..job import ENV_CLUSTER, ENV_WORKERS, workers_asked
from ..progress import QuietReporter, reporter_for
from ..store import Store
from ..verbs.build import BuildReport, build
from .common import add_run_options, add_workers_options, open_store, print_json, report_error


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("build", help="build a recipe (or reuse its item)")
    parser.add_argument("recipe", nargs="+",
                        help="recipe directory or its recipe.toml; several build at once, "
                        "--workers of them at a time, each on one worker")
    parser.add_argument("--check", action="store_true",
                        help="rebuild and compare bit for bit with the stored item")
    add_run_options(parser)
    add_workers_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if len(args.recipe) > 1:
        return _several(args)
    report = build(args.recipe[0], store=open_store(args), threads=args.threads,
                   check=args.check, reporter=reporter_for(args.json), sandbox=args.sandbox)
    if args.json:
        print_json(report.to_json())
    else:
        _say(report)
    return _code(report)


def _several(args: argparse.Namespace) -> int:
    """Each recipe's build in a thread of this process (each build's recipe code runs in
    a sandboxed process of its own); the results in the order given, one failure not
    stopping the others; the exit code the worst of them."""
    at_once, address = workers_asked()  # the options, or their environment variables
    if address:
        raise UsageError(f"--cluster (${ENV_CLUSTER}): several recipes build on this machine "
                         "(give one recipe to spread its build over a cluster)")
    os.environ[ENV_WORKERS] = "1"  # the workers are spent on building several at once
    root = open_store(args).root

    def one(recipe: str) -> BuildReport | ReweighError:
        try:
            return build(recipe, store=Store(root), threads=args.threads, check=args.check,
                         reporter=QuietReporter(), sandbox=args.sandbox)
        except ReweighError as e:
            return e

    with ThreadPoolExecutor(max_workers=at_once) as pool:
        results = list(pool.map(one, args.recipe))
    rows: list[dict[str, Any]] = []
    for recipe, result in zip(args.recipe, results, strict=True):
        if isinstance(result, ReweighError):
            line = result.one_line()  # naming the recipe, once
            line = line if line.startswith(recipe) else f"{recipe}: {line}"
            report_error(result, line)
            rows.append({"recipe": recipe, "error": line, "exit_code": result.exit_code})
        else:
            rows.append({"recipe": recipe, **result.to_json()})
            if not args.json:
                _say(result)
    if args.json:
        print_json(rows)
    return max(r.exit_code if isinstance(r, ReweighError) else _code(r) for r in results)


def _code(report: BuildReport) -> int:
    return 1 if report.check is not None and not report.check.identical else 0


def _say(report: BuildReport) -> None:
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
