"""reweigh estimate RECIPE [--seconds S] [--threads N] [--max-core-hours H] [--json].

Times the first seconds of the real build and extrapolates to the whole training.
Always exits 0 when the estimate could be made (`check --policy guix` gives a verdict).
"""

from __future__ import annotations

import argparse

from ..policy.estimate import DEFAULT_MAX_CORE_HOURS, REFERENCE
from ..progress import reporter_for
from ..verbs.estimate import DEFAULT_SECONDS, EstimateReport, estimate
from .common import add_run_options, open_store, positive_float, print_json


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("estimate", help="estimate the cost of recomputing a recipe")
    parser.add_argument("recipe", help="recipe directory or its recipe.toml")
    parser.add_argument("--seconds", type=positive_float, default=DEFAULT_SECONDS,
                        help="seconds of training to time after start-up (default: "
                        f"{DEFAULT_SECONDS:g})")
    parser.add_argument("--max-core-hours", type=positive_float, default=DEFAULT_MAX_CORE_HOURS,
                        help=f"the budget to compare with (default: {DEFAULT_MAX_CORE_HOURS:g})")
    add_run_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    report = estimate(args.recipe, store=open_store(args), threads=args.threads,
                      seconds=args.seconds, max_core_hours=args.max_core_hours,
                      reporter=reporter_for(args.json))
    if args.json:
        print_json(report.to_json())
    else:
        render(report)
    return 0


def render(report: EstimateReport) -> None:
    e = report.estimate
    print(f"{report.name} {report.version}: {e.bound.value}, from {e.observed_seconds:.1f} s "
          f"of the build on {e.threads} thread(s)")
    if e.startup_seconds is not None:
        print(f"  start-up           {e.startup_seconds:.2f} s (to the first progress event)")
    if e.seconds_per_step is not None:
        print(f"  time per step      {e.seconds_per_step:.4g} s ({e.measured_steps} steps "
              f"timed, {e.total_steps} in all)")
    if e.wall_seconds is not None and e.core_hours is not None:
        print(f"  whole build        {e.wall_seconds:.4g} s on this machine = "
              f"{e.core_hours:.4g} core-hours")
        print(f"  reference machine  {e.reference_hours():.4g} h on {REFERENCE.describe()}")
    if e.flops is not None:
        print(f"  operations         {e.flops:.3g} FLOP ({e.flops_how})")
    within = {True: "within", False: "OVER", None: "unknown against"}[report.within]
    print(f"  Guix budget        {within} {report.max_core_hours:g} core-hours")
    if e.note:
        print(f"  note: {e.note}")
