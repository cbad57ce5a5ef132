"""reweigh export transcript ITEM DIR [--json]: an item's weights, transcript and kept
checkpoints as plain files, to publish beside the weights for `reweigh verify`."""

from __future__ import annotations

import argparse

from ..verbs.export import export_transcript
from .common import add_store_option, open_store, print_json


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("export", help="write what an item holds as plain files")
    what = parser.add_subparsers(dest="what", required=True)
    transcript = what.add_parser("transcript", help="the item's files and its kept "
                                 "checkpoints, where its transcript names them")
    transcript.add_argument("item", help="store path, name, derivation or weights digest")
    transcript.add_argument("folder", help="a new or empty folder")
    transcript.add_argument("--json", action="store_true", help="print a JSON report")
    add_store_option(transcript)
    transcript.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    report = export_transcript(args.item, args.folder, open_store(args))
    if args.json:
        print_json(report.to_json())
    else:
        print(f"{report.folder}: {report.checkpoints} of the {report.recorded} checkpoints the "
              "transcript records, with the item's files")
    return 0
