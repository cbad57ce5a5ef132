"""reweigh adapt BASE --data DIR --name NAME: retrain BASE on your data, as a derived recipe.

Writes the recipe (default ./NAME-recipe; --out to choose), builds it, and prints the item's
store path last, like `build`. Bad data exits 2 with one line naming the file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..adapt import AUGMENT, DEFAULT_LR, PATIENCE, STRATEGIES, Settings
from ..progress import reporter_for
from ..verbs.adapt import adapt
from .common import add_run_options, open_store, print_json


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("adapt", help="retrain a network on your own data")
    parser.add_argument("base", help="the store item to start from (path, name, derivation, "
                        "weights digest), or a recipe directory to build first")
    parser.add_argument("--data", required=True, type=Path,
                        help="a folder with one sub-folder of PNG/JPEG images (or .txt files) "
                        "per class, or a CSV file with a label column")
    parser.add_argument("--name", required=True, help="the new network's name")
    parser.add_argument("--strategy", choices=STRATEGIES, default=Settings.strategy,
                        help="full: train every layer, starting from the base's weights "
                        "(default); head: train a new last layer only, the rest frozen "
                        "(cheapest); scratch: the same architecture from random weights "
                        "(a baseline)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the recipe (default: ./NAME-recipe)")
    # The verb checks the ranges of these (check_settings), for the API and the CLI alike.
    parser.add_argument("--epochs", type=int, default=Settings.epochs,
                        help=f"train at most this many epochs (default {Settings.epochs}; "
                        "early stopping may end sooner)")
    parser.add_argument("--lr", type=float, default=None,
                        help="learning rate (default: " + ", ".join(
                            f"{lr:g} for {name}" for name, lr in DEFAULT_LR.items()) + ")")
    parser.add_argument("--batch-size", type=int, default=Settings.batch_size)
    parser.add_argument("--held-out", type=float, default=Settings.held_out,
                        help="fraction of each class kept out of training to evaluate on "
                        "(and to stop on)")
    parser.add_argument("--patience", type=int, default=None,
                        help="stop when the held-out loss has not improved for this many "
                        f"epochs and keep the best epoch's weights (default {PATIENCE}; "
                        "0: train all --epochs)")
    augmenting = parser.add_mutually_exclusive_group()
    augmenting.add_argument("--augment", default=None, metavar="KINDS",
                            help="random changes to training images, comma-separated: "
                            f"{','.join(AUGMENT)} (default: all, for a network that takes "
                            "images); recorded in the recipe's [params.augment]")
    augmenting.add_argument("--no-augment", dest="augment", action="store_const",
                            const="none", help="train on the images exactly as given")
    parser.add_argument("--label-column", default=Settings.label_column,
                        help="the CSV column holding the class (default: label)")
    parser.add_argument("--version", default=Settings.version, help="the new recipe's version")
    parser.add_argument("--license", default=None,
                        help="SPDX licence of your data (default NOASSERTION)")
    parser.add_argument("--check", action="store_true",
                        help="rebuild and compare bit for bit with the item")
    add_run_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = Settings(name=args.name, strategy=args.strategy, epochs=args.epochs, lr=args.lr,
                        batch_size=args.batch_size, held_out=args.held_out,
                        label_column=args.label_column, version=args.version,
                        license=args.license, augment=_kinds(args.augment),
                        patience=args.patience)
    report = adapt(args.base, args.data, settings, out=args.out, store=open_store(args),
                   threads=args.threads, check=args.check, reporter=reporter_for(args.json))
    failed = report.build.check is not None and not report.build.check.identical
    if args.json:
        print_json(report.to_json())
        return 1 if failed else 0
    data = report.data
    print(f"{'reused' if report.build.reused else 'built'} {report.build.name} "
          f"{report.build.version}, adapted from {report.base.name} {report.base.version} "
          f"({report.strategy})")
    print(f"  recipe          {report.recipe}")
    print(f"  data            {data.layout}, {data.examples} examples: "
          + ", ".join(f"{name} {count}" for name, count in data.counts.items()))
    print(f"  derivation      {report.build.derivation}")
    print(f"  weights         {report.build.weights_digest}")
    print(f"  augment         {', '.join(report.augment) or 'none'}")
    training = report.training
    if "epochs_trained" in training:
        stop = (f", kept the best: epoch {training['best_epoch']}"
                if "best_epoch" in training else "")
        print(f"  trained         {training['epochs_trained']} epochs{stop}")
    for name, value in report.metrics.items():
        print(f"  {'held-out ' + name:15} {value:.4f}")  # a long name still gets its space
    if report.build.check is not None:
        print("  check           " + ("rebuilt weights are bit-identical" if not failed else
                                      f"MISMATCH: rebuilt {report.build.check.rebuilt_digest}"))
    print(report.build.path)
    return 1 if failed else 0


def _kinds(text: str | None) -> tuple[str, ...] | None:
    """--augment's comma-separated kinds ("none": no change); None when not given."""
    if text is None:
        return None
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    return () if kinds in ((), ("none",)) else kinds
