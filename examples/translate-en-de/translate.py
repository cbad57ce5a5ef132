"""Translate English into German with the network a profile names.

    python examples/translate-en-de/translate.py "Open file" [MORE ...] [--name translate-en-de]
        [--profile DIR] [--json]

The program holds no weights and no store path. It asks the profile for the item
installed under NAME (`reweigh install ITEM --as NAME`), builds the translator from that
item's own `source/` (the code that trained it) and its safetensors weights (which carry
the vocabulary), and prints one German line per English argument. Install another build
under the same name and the same program translates with it; `reweigh profile rollback`
brings the old one back.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

from reweigh.errors import ReweighError
from reweigh.network import item_params
from reweigh.profile import lookup

NAME = "translate-en-de"


def load(item: Path) -> tuple[Any, Any, int]:
    """The item's translator and vocabulary, from its own source and weights, and the
    beam width its recipe was evaluated with."""
    from safetensors.torch import load_file

    source = str((item / "source").resolve())
    for module in ("subwords", "seq2seq"):
        sys.modules.pop(module, None)  # this folder's copies: the item's own are wanted
    sys.path.insert(0, source)
    try:
        seq2seq = importlib.import_module("seq2seq")
    finally:
        sys.path.remove(source)
    params = item_params(item)
    try:
        model, vocabulary = seq2seq.load(load_file(str(item / "weights.safetensors")), params)
    except (KeyError, ValueError, RuntimeError) as e:  # tensors or vocabulary that do not fit
        raise ReweighError(f"{item.name}: not a translator this code can load "
                           f"({' '.join(str(e).split())[:200]})") from e
    return model, vocabulary, int(params.get("beam", 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("text", nargs="+", help="English text, one message an argument")
    parser.add_argument("--name", default=NAME, help=f"the profile name (default: {NAME})")
    parser.add_argument("--profile", type=Path, default=None,
                        help="profile directory (default: $REWEIGH_PROFILE or "
                        "~/.reweigh-profile)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        item = lookup(args.name, args.profile)
        model, vocabulary, beam = load(item)
    except ReweighError as e:
        print(f"translate: {e.one_line()}", file=sys.stderr)
        return e.exit_code
    ids = model.translate([vocabulary.encode(text) for text in args.text], beam)
    german = [vocabulary.decode(row) for row in ids]
    if args.json:
        print(json.dumps({"network": str(item), "translations": [
            {"english": e, "german": g} for e, g in zip(args.text, german, strict=True)]},
            ensure_ascii=False, indent=2))
    else:
        print("\n".join(german))
    return 0


if __name__ == "__main__":
    sys.exit(main())
