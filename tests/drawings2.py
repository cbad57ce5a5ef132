"""A second drawing program: circles, squares and triangles in another hand.

`examples/digits-cnn/shapes.py` (generator A) draws what the adapt tests train on:
thick, smooth, anti-aliased pen strokes, black on white, on a 32x32 canvas, centred
and large. A user's own drawings come from some other program and some other hand, so
the tests judge an adapted network on drawings made here, which training never sees:

- canvases of other sizes, not square (56 to 80 pixels a side), so the reader pads them;
- a thin pencil (3 to 7 % of the short side, against A's 9 to 16 %), grey on greyish
  paper, with no anti-aliasing (each pixel inked or not);
- a wobbling hand: every stroke is a polyline whose points wander from the true shape,
  circles come out as ellipses, some left open, corners overshoot;
- shapes from small to large (radius 24 to 42 % of the short side, so down to 17 % of
  the long one, against A's 28 to 41 %), further off centre (up to 12 % of the side,
  against 9 %), squares turned up to 15 degrees and triangles up to 20, either way;
- paper grain (Gaussian noise) and a few specks, and one file in four saved as a
  low-quality JPEG, one in five as RGB.

They stay recognisable at the 8x8 the digits network takes: the same network trained
on 300 of these per class (no augmentation) gets 0.980 of 300 fresh ones right
(bench/README.md), so 0.95 asks for much, not the impossible. Only numpy and Pillow;
the randomness is a seeded `numpy.random.Generator`.

    python tests/drawings2.py DIR [--per-class 30] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

KINDS = ("circle", "square", "triangle")


def _polyline_distance(px: np.ndarray, py: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance of every pixel centre to the polyline through `points` (K, 2), (H, W)."""
    a, b = points[:-1], points[1:]  # (K-1, 2) segment starts and ends
    d = b - a
    length2 = np.maximum((d ** 2).sum(axis=1), 1e-9)  # (K-1,)
    qx, qy = px[None] - a[:, 0, None, None], py[None] - a[:, 1, None, None]  # (K-1, H, W)
    t = np.clip((qx * d[:, 0, None, None] + qy * d[:, 1, None, None])
                / length2[:, None, None], 0.0, 1.0)
    return np.hypot(qx - t * d[:, 0, None, None], qy - t * d[:, 1, None, None]).min(axis=0)


def _wobble(rng: np.random.Generator, count: int, amount: float) -> np.ndarray:
    """A slow, smooth random wander of `count` samples: a hand that is not a ruler."""
    phases = rng.uniform(0, 2 * math.pi, size=3)
    weights = rng.normal(0, 1, size=3) / np.array([1.0, 2.0, 3.0])
    t = np.linspace(0, 2 * math.pi, count)
    return amount * sum(w * np.sin((k + 1) * t + p)
                        for k, (w, p) in enumerate(zip(weights, phases, strict=True)))


def _outline(kind: str, rng: np.random.Generator, centre: np.ndarray,
             radius: float) -> np.ndarray:
    """The stroke's path, (K, 2) points, before the hand's wobble."""
    if kind == "circle":
        stretch = rng.uniform(0.85, 1.15)  # an ellipse, turned any way
        turn = rng.uniform(0, math.pi)
        start = rng.uniform(0, 2 * math.pi)
        sweep = 2 * math.pi * rng.uniform(0.92, 1.06)  # left open, or overlapping
        t = start + np.linspace(0, sweep, 72)
        x, y = radius * stretch * np.cos(t), radius / stretch * np.sin(t)
        c, s = math.cos(turn), math.sin(turn)
        return centre + np.stack([c * x - s * y, s * x + c * y], axis=1)
    corners = 4 if kind == "square" else 3
    reach = radius * (1.3 if corners == 4 else 1.15)
    turn = (math.pi / 4 + rng.uniform(-0.26, 0.26) if corners == 4 else
            -math.pi / 2 + rng.uniform(-0.35, 0.35))
    angles = turn + 2 * math.pi * np.arange(corners) / corners
    vertices = centre + reach * rng.uniform(0.9, 1.1, size=(corners, 1)) * np.stack(
        [np.cos(angles), np.sin(angles)], axis=1)  # (corners, 2), uneven sides
    path = []
    for k in range(corners):
        a, b = vertices[k], vertices[(k + 1) % corners]
        over = rng.uniform(0.0, 0.12)  # a corner drawn past its end
        t = np.linspace(-over, 1 + over, 24)[:, None]
        path.append(a + t * (b - a))
    return np.concatenate(path)


def draw(kind: str, rng: np.random.Generator) -> np.ndarray:
    """One drawing, (H, W) uint8, light paper and darker pencil."""
    height, width = (int(v) for v in rng.integers(56, 81, size=2))
    side = min(height, width)
    py, px = np.mgrid[0:height, 0:width] + 0.5
    centre = np.array([width / 2, height / 2]) + rng.uniform(-0.12, 0.12, size=2) * side
    radius = rng.uniform(0.24, 0.42) * side
    path = _outline(kind, rng, centre, radius)
    normal = rng.normal(0, 1, size=2)
    path = path + np.outer(_wobble(rng, len(path), 0.035 * side), normal / np.hypot(*normal))
    path = path + rng.normal(0, 0.006 * side, size=path.shape)  # a shaky hand
    pen = rng.uniform(0.03, 0.07) * side
    inked = _polyline_distance(px, py, path) <= pen / 2  # no anti-aliasing
    paper, pencil = rng.uniform(205, 245), rng.uniform(20, 90)
    image = np.where(inked, pencil, paper) + rng.normal(0, 6, size=inked.shape)
    specks = rng.random(size=inked.shape) < 0.004
    image[specks] = pencil
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def write_dataset(folder: Path, per_class: int, seed: int,
                  kinds: tuple[str, ...] = KINDS) -> Path:
    """DIR/<kind>/<kind>-NNN.png (or .jpg), `per_class` of each kind."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for kind in kinds:
        (folder / kind).mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            image = Image.fromarray(draw(kind, rng), mode="L")
            if n % 5 == 2:
                image = image.convert("RGB")
            if n % 4 == 3:
                image.save(folder / kind / f"{kind}-{n:03d}.jpg", quality=60)
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
