"""reweigh verify ITEM-or-FILE --transcript T --spot K [--largest Q] [--seed S] [--recipe R]
[--kept-only] [--from URL...] [--json]."""

from __future__ import annotations

import argparse
from fractions import Fraction

from ..progress import reporter_for
from ..verbs.verify import STRETCHES, Sampling, VerifyReport, verify
from .common import (
    add_run_options,
    colour,
    non_negative_int,
    open_store,
    print_json,
)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("verify", help="replay segments of a training transcript: "
                                 "the last, the first, the largest updates, and random ones")
    parser.add_argument("target", help="a store item, or a weights file (with --recipe)")
    parser.add_argument("--transcript", required=True, help="transcript.json; its checkpoint "
                        "files lie beside it, or are kept in the store")
    parser.add_argument("--spot", type=_spot, required=True,
                        help="how many random segments to replay besides the last: a "
                        "count, or a share of all the segments such as 5%%")
    parser.add_argument("--largest", type=_spot, default=STRETCHES,
                        help="in how many equal stretches of training to replay the segment "
                        f"with the largest update, with the first segment (default {STRETCHES}; "
                        "0: none): a count, or a share of the segments")
    parser.add_argument("--seed", type=int, default=None, help="seed for choosing segments")
    parser.add_argument("--recipe", default=None, help="the recipe, when TARGET is a file")
    parser.add_argument("--kept-only", action="store_true",
                        help="skip (and name) a random pick whose start checkpoint was not "
                        "kept, instead of replaying it from the nearest kept one before it "
                        "(the first, the last and the largest updates are always replayed)")
    parser.add_argument("--signature", default=None,
                        help="a signature bundle (reweigh sign) over the weights: the platform "
                             "the transcript records, signed by a key you trust, earns the "
                             "recipe's per-segment tolerance when it is another platform than "
                             "this replay's (unsigned, it earns none)")
    parser.add_argument("--from", dest="sources", action="append", default=[],
                        metavar="URL", help="a binary cache (an http(s):// URL or a folder) "
                        "to fetch the chunks of checkpoints absent here from, each checked "
                        "against its digest; repeat for several, asked in this order")
    add_run_options(parser)
    parser.set_defaults(run=run)


def _spot(text: str) -> int | Fraction:
    """A count of segments, or a share of them as a percentage (exact: 5% is 1/20)."""
    if not text.endswith("%"):
        return non_negative_int(text)
    try:
        percent = Fraction(text[:-1])
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a count or a percentage") from None
    if not 0 <= percent <= 100:
        raise argparse.ArgumentTypeError(f"{text} is not between 0% and 100%")
    return percent / 100


def run(args: argparse.Namespace) -> int:
    report = verify(args.target, args.transcript,
                    Sampling(args.spot, args.largest, args.seed, args.kept_only),
                    recipe=args.recipe, store=open_store(args), threads=args.threads,
                    reporter=reporter_for(args.json), signature=args.signature,
                    sources=tuple(args.sources))
    if args.json:
        print_json(report.to_json())
    else:
        render(report)
    return 0 if report.holds else 1


def render(report: VerifyReport) -> None:
    print(f"transcript {report.transcript}: {report.segments_total} segments, seed {report.seed}")
    for problem in report.problems:
        print(f"  chain: {problem}")
    for r in report.results:
        mark = (colour("skipped", "33") if r.skipped else colour("holds", "32") if r.holds
                else colour("FAILS", "31"))
        update = "" if r.update is None else f"update {r.update:.2e}"
        print(f"  segment {r.index:3} steps {r.start_step:>6}..{r.stop_step:<6} {mark}"
              f"  {r.seconds:6.1f} s  {r.why.value:<8} {update:<16} {r.note}".rstrip())
    if report.results:
        why = ["the last"]
        if report.stretches:
            why.append(f"the first and the largest update in each of {report.stretches} "
                       "stretches")
        if report.drawn:
            why.append(f"{report.drawn} drawn at random from the {report.population} others")
        replayed = [r for r in report.results if not r.skipped]
        print(f"replayed {len(replayed)} segments, {report.compute_fraction:.1%} of "
              f"training: {'; '.join(why)}")
        if report.fetched.get("fetched") or report.fetched.get("absent"):
            print(f"fetched {report.fetched['fetched']} chunks of absent checkpoints "
                  f"({report.fetched['received']} bytes)"
                  + (f"; {report.fetched['absent']} no cache had" if report.fetched["absent"]
                     else ""))
        if report.absent:
            print("checkpoints named but not at hand (replayed through): steps "
                  + ", ".join(map(str, report.absent)))
        if skipped := [r for r in report.results if r.skipped]:
            print(f"skipped {len(skipped)} chosen segments: "
                  + ", ".join(f"{r.start_step}..{r.stop_step}" for r in skipped))
        odds = ", ".join(f"{m} segment{'s' if m > 1 else ''} {p:.1%}"
                         for m, p in report.catch.items())
        lead = ("a forged segment with its stretch's largest update is always caught; a "
                "forgery that makes none" if report.stretches else "no update could be "
                "measured between kept checkpoints: a forgery")
        print(f"{lead} is caught only by the random picks: {odds}")
    verdict = "holds" if report.holds else "fails"
    print(f"verdict: {colour(verdict, '32' if report.holds else '31')}")
