"""reweigh import FILE --name N [--version V] [--license SPDX] [--origin URL]
[--no-training-data] [--json]: bring an opaque weights file into the store.

The store path is the last line. A PyTorch file is read only with
`torch.load(weights_only=True)`, and the output says so.
"""

from __future__ import annotations

import argparse

from ..verbs.importing import PYTORCH, import_weights
from .common import add_json_option, add_store_option, open_store, print_json


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("import", help="bring a weights file with no recipe into "
                                 "the store")
    parser.add_argument("file", help="a .safetensors file, or a PyTorch .pt/.pth/.bin file")
    parser.add_argument("--name", required=True, help="the item's name (lowercase)")
    parser.add_argument("--version", default="imported", help="the item's version")
    parser.add_argument("--license", default=None, help="SPDX licence expression of the "
                        "weights, as their publisher states it")
    parser.add_argument("--origin", default=None, help="the URL the file came from")
    parser.add_argument("--no-training-data", action="store_true",
                        help="the publisher does not make the training data available")
    add_store_option(parser)
    add_json_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    report = import_weights(args.file, name=args.name, version=args.version,
                            license=args.license, origin=args.origin,
                            no_training_data=args.no_training_data, store=open_store(args))
    if args.json:
        print_json(report.to_json())
        return 0
    print(f"{'reused' if report.reused else 'imported'} {report.name} {report.version} "
          f"from {report.source} ({report.tensors} tensors)")
    if report.format == PYTORCH:
        print("  loaded with torch.load(weights_only=True): tensors and plain containers "
              "only, nothing else unpickled; converted to safetensors")
        if report.skipped:
            print(f"  left out {len(report.skipped)} non-tensor entries: "
                  f"{', '.join(report.skipped[:5])}")
    else:
        print("  safetensors, validated and kept byte for byte")
    print(f"  weights         {report.weights_digest}")
    print(f"  source          {report.source_digest}")
    print("  not built from source: `reweigh check` on this item says what each policy "
          "makes of it")
    print(report.path)
    return 0
