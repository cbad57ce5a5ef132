"""reweigh export transcript ITEM DIR [--json]: an item's weights, transcript and kept
checkpoints as plain files, to publish beside the weights for `reweigh verify`.
reweigh export guix RECIPE [-o FILE]: the recipe as a GNU Guix package definition."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
    guix = what.add_parser("guix", help="a GNU Guix package definition that rebuilds the "
                           "recipe (guix build -f)")
    guix.add_argument("recipe", type=Path, help="recipe directory or recipe file")
    guix.add_argument("--base-url", default=None, help="where the recipe's files are "
                      "published (default: file:// URLs of this copy)")
    guix.add_argument("--home-page", default=None, help="the package's home page")
    guix.add_argument("-o", "--output", type=Path, default=None,
                      help="write the definition to this file instead of standard output")
    add_store_option(guix)
    guix.set_defaults(run=run_guix)


def run(args: argparse.Namespace) -> int:
    report = export_transcript(args.item, args.folder, open_store(args))
    if args.json:
        print_json(report.to_json())
    else:
        print(f"{report.folder}: {report.checkpoints} of the {report.recorded} checkpoints the "
              "transcript records, with the item's files")
    return 0


def run_guix(args: argparse.Namespace) -> int:
    from ..verbs.export_guix import export_guix

    text = export_guix(args.recipe, store=open_store(args), base_url=args.base_url,
                       home_page=args.home_page)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0
