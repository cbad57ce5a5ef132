"""Random changes to training images, so a network trained on one person's drawings
recognises another's.

A few dozen drawings per class show one hand, one pen and one framing. Drawings a
user makes later come from other programs and other hands: smaller or larger, off
centre, turned a little, fainter or stronger, on grainy paper. Each batch is
therefore changed before the network sees it, every example differently:

- `shift`: moved by up to this fraction of the side, in x and in y;
- `scale`: zoomed by a factor drawn log-uniformly from [low, high];
- `rotate`: turned by up to this many degrees, either way;
- `ink`: its intensity multiplied by a factor drawn from [low, high] (a fainter pen);
- `noise`: Gaussian noise of this standard deviation (on the 0..1 input range) added.

The geometry is one affine map per example, sampled bilinearly with the ground (0)
outside the picture. Every draw comes from the generator the build passes in, the one
its checkpoints save, so a rebuild or a replayed segment draws the same changes; the
sampling grid is made with elementwise arithmetic, no matrix product, so the thread
count cannot change a bit. Held-out examples are never changed.

This file is copied into each derived recipe; it depends on torch only.
"""

from __future__ import annotations

import math
from typing import Any

import torch

KINDS = ("shift", "scale", "rotate", "ink", "noise")


def check(settings: dict[str, Any]) -> None:
    """Raise ValueError naming the first setting that is unknown or out of range."""
    for name, value in settings.items():
        if name not in KINDS:
            raise ValueError(f"params.augment.{name}: unknown; expected {', '.join(KINDS)}")
        pair = name in ("scale", "ink")
        numbers = value if pair and isinstance(value, list) else [value]
        if (pair and len(numbers) != 2) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in numbers):
            raise ValueError(f"params.augment.{name}: expected "
                             f"{'[low, high]' if pair else 'a number'}")
        if pair and not 0 < numbers[0] <= numbers[1]:
            raise ValueError(f"params.augment.{name}: expected 0 < low <= high")
        if not pair and not 0 <= numbers[0] <= (180 if name == "rotate" else 1):
            raise ValueError(f"params.augment.{name}: out of range")


def augment(x: torch.Tensor, settings: dict[str, Any],
            generator: torch.Generator) -> torch.Tensor:
    """A changed copy of the batch x, (N, C, H, W) on 0..1; x itself is left alone."""
    if not settings:
        return x
    n = x.shape[0]
    with torch.no_grad():
        if {"shift", "scale", "rotate"} & settings.keys():
            x = _move(x, settings, generator)
        if "ink" in settings:
            low, high = settings["ink"]
            x = x * _uniform(n, low, high, generator).to(x.dtype).view(n, 1, 1, 1)
        if "noise" in settings:
            x = x + settings["noise"] * torch.randn(x.shape, generator=generator,
                                                    dtype=x.dtype)
        return x.clamp(0.0, 1.0)


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64) * (high - low) + low  # (N,)


def _move(x: torch.Tensor, settings: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
    """Zoom, turn and shift every example by its own draws (drawn in that order, for
    the kinds asked for)."""
    n, _, height, width = x.shape
    zoom = torch.ones(n, dtype=torch.float64)
    turn = torch.zeros(n, dtype=torch.float64)
    shift = torch.zeros(n, 2, dtype=torch.float64)
    if "scale" in settings:
        low, high = settings["scale"]
        zoom = torch.exp(_uniform(n, math.log(low), math.log(high), generator))
    if "rotate" in settings:
        turn = _uniform(n, -1.0, 1.0, generator) * math.radians(settings["rotate"])
    if "shift" in settings:
        reach = settings["shift"] * torch.tensor([width, height], dtype=torch.float64)
        shift = (torch.rand(n, 2, generator=generator, dtype=torch.float64) * 2 - 1) * reach
    # each output pixel's centre, in pixels from the picture's centre: (H, W) each
    py = (torch.arange(height, dtype=torch.float64) + 0.5 - height / 2).view(height, 1)
    px = (torch.arange(width, dtype=torch.float64) + 0.5 - width / 2).view(1, width)
    cos = (torch.cos(turn) / zoom).view(n, 1, 1)
    sin = (torch.sin(turn) / zoom).view(n, 1, 1)
    # where each output pixel samples the input: the inverse of "zoom, turn, then shift"
    sx = cos * (px - shift[:, 0, None, None]) + sin * (py - shift[:, 1, None, None])
    sy = -sin * (px - shift[:, 0, None, None]) + cos * (py - shift[:, 1, None, None])
    grid = torch.stack([sx * 2 / width, sy * 2 / height], dim=-1)  # (N, H, W, 2), -1..1
    return torch.nn.functional.grid_sample(x, grid.to(x.dtype), mode="bilinear",
                                           padding_mode="zeros", align_corners=False)
