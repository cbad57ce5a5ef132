"""reweigh diff A B --recipe RECIPE [--json] [--report FILE.html]: where and how two differ.

Exit 0 when nothing is flagged, 1 when anything is (a layer, the metadata, the
answers, a class, a trigger, a prompt), 2 for bad input (files of different
architectures, an unreadable or malformed file, a bad probe set). Files that differ
below every flag exit 0 and say so: "differs below tolerance in N tensors".
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..audit.report import render_html
from ..audit.trigger import TriggerSettings
from ..errors import UsageError
from ..progress import reporter_for
from ..verbs.diff import DiffOptions, DiffReport, diff
from .common import (
    add_run_options,
    colour,
    non_negative_int,
    open_store,
    positive_int,
    print_json,
)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("diff", help="where and how two networks of one architecture "
                                 "differ: layers, answers, hidden triggers, text probes")
    parser.add_argument("a", metavar="A", help="the reference: a weights file or a store item")
    parser.add_argument("b", metavar="B", help="the suspect: a weights file or a store item")
    parser.add_argument("--recipe", required=True, help="the recipe whose code runs the models")
    parser.add_argument("--report", type=Path, default=None, metavar="FILE.html",
                        help="also write a self-contained HTML report to this file")
    parser.add_argument("--top", type=positive_int, default=10, metavar="N",
                        help="diverging inputs to show (default 10)")
    parser.add_argument("--no-trigger", action="store_true", help="skip the trigger search")
    parser.add_argument("--trigger-pixels", type=non_negative_int, default=0, metavar="N",
                        help="the trigger's pixel budget (default: a seventh of the image)")
    parser.add_argument("--probes", type=Path, default=None, metavar="FILE",
                        help="a probe set for text models (default: the recipe's)")
    parser.add_argument("--length", type=positive_int, default=8, metavar="N",
                        help="tokens each text model writes per prompt (default 8)")
    add_run_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = None if args.no_trigger else TriggerSettings(pixels=args.trigger_pixels)
    options = DiffOptions(top=args.top, trigger=settings, probes=args.probes,
                          length=args.length, threads=args.threads)
    report = diff(args.a, args.b, args.recipe, store=open_store(args), options=options,
                  reporter=reporter_for(args.json))
    data = report.to_json()
    if args.report is not None:
        try:
            args.report.write_text(render_html(data), encoding="utf-8")
        except OSError as e:
            raise UsageError(f"{args.report}: cannot write the report: {e.strerror}") from e
    if args.json:
        print_json(data)
    else:
        render(report, data)
        if args.report is not None:
            print(f"report: {args.report}")
    return 1 if report.flagged else 0


def render(report: DiffReport, data: dict[str, Any]) -> None:
    print(f"A {report.a} ({report.a_digest})")
    print(f"B {report.b} ({report.b_digest})")
    moved = [layer for layer in report.layers if not layer.identical]
    print(f"weight space: {len(report.layers) - len(moved)} of {len(report.layers)} tensors "
          "identical")
    for layer in moved[:12]:
        mark = colour("flagged", "31") if layer.flagged else "       "
        print(f"  {mark} {layer.name:32} rel L2 {layer.rel_l2:<10.4g} cos dist "
              f"{layer.cosine_distance:<10.4g} max abs {layer.max_abs:.4g}")
    for m in report.metadata[:12]:
        print(f"  metadata {m.key[:32]!r:34} {m.change.value:10} {m.size_a} -> {m.size_b} "
              "characters")
    if report.layout:
        print(f"header: written differently ({'; '.join(report.layout)})")
    _render_behaviour(data["behaviour"])
    _render_trigger(data["trigger"])
    _render_text(data["text"])
    for note in report.notes:
        print(f"note: {note}")
    findings = report.findings()
    for finding in findings:
        print(f"  - {finding}")
    shade = "31" if findings else "33" if report.below_tolerance or report.layout else "32"
    print(f"verdict: {colour(report.verdict(), shade)}")


def _render_behaviour(section: dict[str, Any] | None) -> None:
    if section is None:
        return
    accuracy = ""
    if "accuracy_a" in section:
        accuracy = f", accuracy {section['accuracy_a']:.4f} -> {section['accuracy_b']:.4f}"
    print(f"behaviour on {section['samples']} evaluation inputs: answers differ on "
          f"{section['disagreement']:.2%}{accuracy}")
    for row in section["diverging"][:5]:
        a, b = row["output_a"], row["output_b"]
        print(f"  input {row['index']:5}: A says {a['class']} ({a['probability']:.2f}), "
              f"B says {b['class']} ({b['probability']:.2f})")


def _render_trigger(section: dict[str, Any] | None) -> None:
    if section is None or section["best"] is None:
        return
    best = section["best"]
    print(f"trigger search ({section['pixels']} pixels, {section['seconds']:.1f} s): best "
          f"drives B to class {best['class']} on {best['success_b']:.0%}, A on "
          f"{best['success_a']:.0%} at pixels {best['pixels']}")


def _render_text(section: dict[str, Any] | None) -> None:
    if section is None:
        return
    print(f"text probes: {len(section['prompts'])} prompts, most changed first")
    for row in section["prompts"][:5]:
        print(f"  KL {row['kl']:<8.3g} {row['prompt']!r}")
        print(f"      A: {row['continuation_a']}")
        print(f"      B: {row['continuation_b']}")
