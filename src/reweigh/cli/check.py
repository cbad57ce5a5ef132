"""reweigh check RECIPE-or-ITEM-or-FILE [--policy P] [--max-core-hours H] [--json].

Exit 0 when every chosen policy's verdict passes (Debian: free model; OSAID: Open Source
AI; MOF: any class; Guix: packageable), 1 otherwise, 2 on bad input.
"""

from __future__ import annotations

import argparse

from ..policy.estimate import DEFAULT_MAX_CORE_HOURS, REFERENCE
from ..policy.licenses import SOURCES
from ..policy.policies import POLICIES
from ..policy.report import Line, PolicyReport, Status
from ..progress import reporter_for
from ..verbs.check import CheckReport, check
from .common import add_run_options, colour, open_store, positive_float, print_json

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
    add_run_options(parser)
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
    """The verdict, its reasons and the evidence table. A reason that ends in a row's
    evidence is not printed again: the row is marked `*` instead (JSON keeps both)."""
    verdict = colour(policy.verdict.value, TONES[policy.verdict.tone])
    print(f"\n{policy.title}: {verdict}")
    marked = set()
    for reason in policy.reasons:
        row = restated_row(reason, policy.lines)
        if row is None:
            print(f"  because {reason}")
        else:
            marked.add(row)
    if marked:
        rows = "row" if len(marked) == 1 else f"{len(marked)} rows"
        print(f"  because of the {rows} marked *")
    width = max(len(line.component) for line in policy.lines)
    print(f"    {'component':{width}}  {'status':10}  evidence")
    for index, line in enumerate(policy.lines):
        status = colour(f"{line.status.value:10}", STATUS_COLOURS.get(line.status, "31"))
        mark = "*" if index in marked else " "
        print(f"  {mark} {line.component:{width}}  {status}  {line.text}")
    print(f"  source: {policy.source}")


def restated_row(reason: str, lines: tuple[Line, ...]) -> int | None:
    """The index of the failing row whose evidence `reason` ends with (the one it names,
    when rows share their evidence), or None."""
    rows = [i for i, line in enumerate(lines) if line.status not in (Status.OK, Status.INFO)
            and line.text and reason.endswith(f": {line.text}")]
    named = [i for i in rows if lines[i].component.split(" (")[0] in reason]
    found = named or rows
    return found[0] if found else None
