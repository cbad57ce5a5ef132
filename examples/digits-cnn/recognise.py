"""Recognise a drawing with the network a profile names: image file in, class out.

    python examples/digits-cnn/recognise.py IMAGE [--name digits-cnn] [--profile DIR] [--json]

The program holds no weights and no store path. It asks the profile for the network
installed under NAME (`reweigh install ITEM --as NAME`), builds that item's own
architecture from its `source/`, loads its safetensors weights, converts the image
the way the network was trained (8x8, ink bright, 0..16) and prints the class and
the network's confidence. Install a network adapted to other objects under the same
name and the same program answers with the new classes; `reweigh profile rollback`
brings the old one back.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reweigh.errors import ReweighError
from reweigh.profile import network


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path, help="a PNG or JPEG file")
    parser.add_argument("--name", default="digits-cnn",
                        help="the profile name of the network (default: digits-cnn)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="profile directory (default: $REWEIGH_PROFILE or "
                        "~/.reweigh-profile)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        net = network(args.name, args.profile)
        answer = net.recognise(args.image)
    except ReweighError as e:
        print(f"recognise: {e.one_line()}", file=sys.stderr)
        return e.exit_code
    if args.json:
        print(json.dumps({"image": str(args.image), "class": answer.label,
                          "confidence": answer.confidence, "index": answer.index,
                          "probabilities": answer.probabilities, "network": str(net.item)},
                         indent=2))
    else:
        print(f"{answer.label} {answer.confidence:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
