"""reweigh weather --from URL [--from URL...] [ITEM...]: coverage and agreement.

Per server: how many items it lists and holds archives of; per item: which servers have
it, who signed it (verified when the key is trusted and valid, else why not) and whether
the verified signers agree. Exit 1 when trusted signers disagree on an item's weights.
"""

from __future__ import annotations

import argparse

from ..keys import KeyRing
from ..verbs.weather import Agreement, WeatherReport, weather
from .common import add_json_option, colour, print_json
from .keys import add_keys_option
from .pull import add_from_option

COLOURS = {Agreement.AGREE: "32", Agreement.DISAGREE: "31", Agreement.UNVERIFIED: "33",
           Agreement.UNSIGNED: "33"}


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("weather", help="which caches have what, who signed it, "
                                 "and whether the signers agree")
    parser.add_argument("items", nargs="*", help="items to report (default: every item listed)")
    add_from_option(parser)
    add_keys_option(parser)
    add_json_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    report = weather(args.sources, args.items or None, keyring=KeyRing(args.keys))
    if args.json:
        print_json(report.to_json())
    else:
        render(report)
    return 1 if report.disagreements else 0


def render(report: WeatherReport) -> None:
    total = len(report.items)
    for server in report.servers:
        if not server["reachable"]:
            print(f"{server['server']}: unreachable ({server['problem']})")
            continue
        share = f" ({100 * server['archives'] / total:.0f}% of {total})" if total else ""
        print(f"{server['server']}: {server['items']} items, {server['archives']} archives"
              + share)
    for item in report.items:
        print(f"{item.item}  {colour(item.agreement.value, COLOURS[item.agreement])}")
        for server in item.servers:
            what = "archive" if server["archive"] else "signatures only"
            print(f"  at {server['server']} ({what}), weights {server['weights_digest'][:23]}")
        for s in item.signatures:
            who = s.name or f"key {s.keyid[:16]}"
            signed = f", signs weights {s.weights_digest[:23]} as {s.role}" \
                if s.weights_digest else ""
            print(f"  signed by {who} at {s.server}: {s.status}{signed}")
    print(f"{report.requests} requests; {len(report.disagreements)} disagreements")
