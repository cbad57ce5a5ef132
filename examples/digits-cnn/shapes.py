"""Draw a small data set of another kind of object: circles, squares and triangles.

    python examples/digits-cnn/shapes.py DIR [--per-class 30] [--seed 0]

writes DIR/circle/*.png, DIR/square/*.png, DIR/triangle/*.png: pen strokes of random
size, place, rotation and thickness, dark on white at 32x32 like a scanned drawing
(every fifth one a JPEG), the layout `reweigh adapt digits-cnn --data DIR` reads.
It is the data the tests and `bench/adapt.py` retrain the digits network on.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

KINDS = ("circle", "square", "triangle")
SIZE = 32


def _segment_distance(px: np.ndarray, py: np.ndarray, a: tuple[float, float],
                      b: tuple[float, float]) -> np.ndarray:
    """Distance of every pixel centre to the segment a-b, (SIZE, SIZE)."""
    ax, ay = a
    dx, dy = b[0] - ax, b[1] - ay
    t = np.clip(((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.hypot(px - (ax + t * dx), py - (ay + t * dy))


def draw(kind: str, rng: np.random.Generator) -> np.ndarray:
    """One drawing, (SIZE, SIZE) uint8, 255 paper and 0 ink."""
    py, px = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    cx, cy = SIZE / 2 + rng.uniform(-3, 3, size=2)
    radius = rng.uniform(9, 13)
    pen = rng.uniform(3.0, 5.0)
    if kind == "circle":
        distance = np.abs(np.hypot(px - cx, py - cy) - radius)
    else:
        corners = 4 if kind == "square" else 3
        # squares as wide as circles, nearly upright; triangles pointing up, tilted more
        reach = radius * (1.3 if corners == 4 else 1.15)
        turn = (math.pi / 4 + rng.uniform(-0.15, 0.15) if corners == 4 else
                -math.pi / 2 + rng.uniform(-0.3, 0.3))
        points = [(cx + reach * math.cos(turn + 2 * math.pi * k / corners),
                   cy + reach * math.sin(turn + 2 * math.pi * k / corners))
                  for k in range(corners)]
        distance = np.min([_segment_distance(px, py, points[k], points[(k + 1) % corners])
                           for k in range(corners)], axis=0)
    ink = np.clip(pen / 2 + 0.5 - distance, 0.0, 1.0)  # anti-aliased stroke
    return np.round(255 * (1.0 - ink)).astype(np.uint8)


def write_dataset(folder: Path, per_class: int, seed: int,
                  kinds: tuple[str, ...] = KINDS, jpeg_every: int = 5) -> Path:
    """DIR/<kind>/<kind>-NNN.png (or .jpg), `per_class` of each kind."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for kind in kinds:
        (folder / kind).mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            image = Image.fromarray(draw(kind, rng), mode="L")
            if jpeg_every and n % jpeg_every == jpeg_every - 1:
                image.save(folder / kind / f"{kind}-{n:03d}.jpg", quality=90)
            else:
                image.save(folder / kind / f"{kind}-{n:03d}.png")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_dataset(args.folder, args.per_class, args.seed))


if __name__ == "__main__":
    main()
