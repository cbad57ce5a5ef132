"""reweigh challenge RECIPE --published FILE [--require identical|equivalent] [--json]."""

from __future__ import annotations

import argparse

from ..compare import Verdict
from ..progress import reporter_for
from ..verbs.challenge import ChallengeReport, challenge
from .common import (
    add_run_options,
    colour,
    open_store,
    print_json,
)

COLOURS = {Verdict.IDENTICAL: "32", Verdict.EQUIVALENT: "33", Verdict.DIFFERENT: "31"}


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("challenge", help="compare a published weights file with a "
                                 "rebuild from the recipe")
    parser.add_argument("recipe", help="recipe directory or its recipe.toml")
    parser.add_argument("--published", required=True, help="the published safetensors file")
    parser.add_argument("--published-provenance", default=None,
                        help="the publisher's provenance.json (says which environment built "
                             "it; unsigned, the claim earns no slack)")
    parser.add_argument("--published-signature", default=None,
                        help="a signature bundle (reweigh sign) over the published file: its "
                             "platform claim, under a key you trust, earns the recipe's "
                             "tolerance when it is another platform than this rebuild's")
    parser.add_argument("--require", choices=["identical", "equivalent"], default="equivalent",
                        help="the verdict that counts as success (default: equivalent)")
    add_run_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    report = challenge(args.recipe, args.published,
                       published_provenance=args.published_provenance,
                       published_signature=args.published_signature, store=open_store(args),
                       threads=args.threads, reporter=reporter_for(args.json))
    ok = report.verdict.meets(Verdict(args.require))
    if args.json:
        print_json({**report.to_json(), "required": args.require, "ok": ok})
    else:
        render(report)
    return 0 if ok else 1


def render(report: ChallengeReport) -> None:
    print(f"published {report.published} ({report.published_digest})")
    print(f"rebuilt   {report.item} ({report.rebuilt_digest})")
    claim = {"none": "no claim", "unsigned": "an unsigned claim", "signed": "a signed claim"}
    print(f"environment of the published file: {report.environment.value} "
          f"({claim.get(report.claim, report.claim)})"
          + (f" (differs in {', '.join(report.environment_differences)})"
             if report.environment_differences else ""))
    changed = [t for t in report.tensors if t.status != "identical"]
    print(f"tensors: {len(report.tensors) - len(changed)} identical, {len(changed)} not")
    for t in changed[:20]:
        print(f"  {t.name:32} {t.status:14} max abs {t.max_abs:<10.4g} rel L2 {t.rel_l2:.4g}")
    if report.metadata:
        print(f"metadata: {len(report.metadata)} of its keys differ")
        for m in report.metadata[:20]:
            print(f"  {m.key[:32]!r:34} {m.change.value:14} {m.size_a} -> {m.size_b} characters")
    if report.layout:
        print(f"header: written differently ({'; '.join(report.layout)})")
    if report.behaviour is not None:
        b = report.behaviour
        delta = b.metric_delta
        print(f"behaviour on {b.samples} evaluation inputs: agreement {b.agreement:.4f}, "
              f"{b.metric} {b.metric_a} -> {b.metric_b}"
              + (f" ({delta:+.4f})" if delta is not None else ""))
    for reason in report.reasons:
        print(f"  - {reason}")
    print(f"verdict: {colour(report.verdict.value, COLOURS[report.verdict])}")
