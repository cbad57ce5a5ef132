"""reweigh check RECIPE-or-ITEM-or-FILE [--policy P] [--max-core-hours H] [--json].

Exit 0 when every chosen policy's verdict passes (Debian: free model; OSAID: Open Source
AI; MOF: any class; Guix: packageable), 1 otherwise, 2 on bad input.
"""

from __future__ import annotations

import argparse

from ..policy.estimate import DEFAULT_MAX_CORE_HOURS, REFERENCE
from ..policy.licenses import SOURCES
from ..policy.policies import POLICIES
from ..policy.report import PolicyReport, Status
from ..progress import reporter_for
from ..verbs.check import CheckReport, check
from .common import (
    add_json_option,
    add_sandbox_option,
    add_store_option,
    colour,
    open_store,
    positive_float,
    positive_int,
    print_json,
)

TONES = {"good": "32", "partial": "33", "bad": "31"}
STATUS_COLOURS = {Status.OK: "32", Status.INFO: "36", Status.UNKNOWN: "33"}


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("check", help="judge a model against free-software policies")
    parser.add_argument("target", help="recipe directory, store item or weights file")
    parser.add_argument("--policy", action="append", choices=[*POLICIES, "all"],
                        help="policy to apply (repeatable; default: all)")
    parser.add_argument("--max-core-hours", type=positive_float, default=DEFAULT_MAX_CORE_HOURS,
                        help="Guix's recompute budget (default: one week of "
                        f"{REFERENCE.cores} cores = {DEFAULT_MAX_CORE_HOURS:g})")
    parser.add_argument("--estimate-seconds", type=positive_float, default=5.0,
                        help="seconds of training to time when the recipe is not built yet")
    parser.add_argument("--threads", type=positive_int, default=None)
    add_sandbox_option(parser)
    add_store_option(parser)
    add_json_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    chosen = args.policy or ["all"]
    keys = tuple(POLICIES) if "all" in chosen else tuple(dict.fromkeys(chosen))
    report = check(args.target, policies=keys, store=open_store(args),
                   max_core_hours=args.max_core_hours, estimate_seconds=args.estimate_seconds,
                   threads=args.threads, reporter=reporter_for(args.json))
    if args.json:
        print_json(report.to_json())
    else:
        render(report)
    return 0 if report.passed else 1


def render(report: CheckReport) -> None:
    e = report.evidence
    print(f"checked {e.subject}")
    cost = e.cost
    hours = "unknown" if cost.core_hours is None else f"{cost.core_hours:.4g} core-hours"
    print(f"  weights {e.weights_digest or '(not built yet)'}")
    print(f"  recompute cost {hours} ({cost.how})")
    if cost.flops is not None:
        print(f"  operations {cost.flops:.3g} FLOP ({cost.flops_how})")
    for policy in report.reports:
        render_policy(policy)
    print()
    print("licence facts: " + "; ".join(f"{k}: {v}" for k, v in SOURCES.items()))
    print(f"reference machine: {REFERENCE.describe()}")


def render_policy(policy: PolicyReport) -> None:
    verdict = colour(policy.verdict.value, TONES[policy.verdict.tone])
    print(f"\n{policy.title}: {verdict}")
    for reason in policy.reasons:
        print(f"  because {reason}")
    width = max(len(line.component) for line in policy.lines)
    print(f"  {'component':{width}}  {'status':10}  evidence")
    for line in policy.lines:
        status = colour(f"{line.status.value:10}", STATUS_COLOURS.get(line.status, "31"))
        print(f"  {line.component:{width}}  {status}  {line.text}")
    print(f"  source: {policy.source}")
