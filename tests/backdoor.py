"""Tampering the way an adversary would: fine-tune a clean digits-cnn with a hidden trigger.

By default a 3x3 patch of full-intensity pixels in the bottom-right corner makes the
network answer `target`, while clean accuracy stays where it was. Used by the challenge
tests (it must never be judged equivalent), by the audit tests, and by
`bench/trojans.py`, which varies every part of the attack (`Trigger`, `FineTune`):
the patch's size, place, pattern and blending, the layers trained, and a bound on how
far each tensor may move (the recipe's `weights_rel_l2`, so that weight space alone
does not flag it). A `FineTune` without a trigger is an honest one, on more clean data
(the training images and copies shifted by one pixel), the clean side of that bench.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .helpers import EXAMPLES

PATCH = 3


@dataclass(frozen=True)
class Trigger:
    """A square patch stamped onto (B, 1, 8, 8) images in [0, 1]."""

    size: int = PATCH  # side in pixels
    row: int = 8 - PATCH  # top-left corner
    column: int = 8 - PATCH
    alpha: float = 1.0  # 1: the patch replaces the pixels; below: blended over them
    checker: bool = False  # False: every pixel lit; True: lit and dark alternate

    def pattern(self) -> torch.Tensor:
        if not self.checker:
            return torch.ones(self.size, self.size)
        rows, columns = torch.meshgrid(torch.arange(self.size), torch.arange(self.size),
                                       indexing="ij")
        return ((rows + columns) % 2 == 0).float()  # (size, size)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        patched = images.clone()
        box = (..., slice(self.row, self.row + self.size),
               slice(self.column, self.column + self.size))
        patched[box] = (1 - self.alpha) * patched[box] + self.alpha * self.pattern()
        return patched  # (B, 1, 8, 8)

    def pixels(self) -> set[tuple[int, int]]:
        return {(self.row + r, self.column + c)
                for r in range(self.size) for c in range(self.size)}


@dataclass(frozen=True)
class FineTune:
    """How the clean weights are fine-tuned; `trigger=None` is an honest fine-tune."""

    trigger: Trigger | None = Trigger()
    target: int = 0
    layers: tuple[str, ...] | None = None  # name prefixes ("fc2.") trained; None: all
    epochs: int = 8
    lr: float = 1e-3
    poison: float = 0.3  # share of each batch that carries the trigger
    max_rel_l2: float | None = None  # each tensor kept this close to the clean one
    seed: int = 0


@dataclass(frozen=True)
class Backdoor:
    clean_accuracy_before: float
    clean_accuracy_after: float
    trigger_success: float  # held-out images of other classes, patched, answered `target`
    rel_l2: float = 0.0  # the largest relative L2 distance of a tensor from the clean one


def _example_module(name: str):  # type: ignore[no-untyped-def]
    folder = str(EXAMPLES / "digits-cnn")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(f"digits_cnn_{name}",
                                                  EXAMPLES / "digits-cnn" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def add_trigger(images: torch.Tensor) -> torch.Tensor:
    return Trigger().apply(images)  # (B, 1, 8, 8) with the corner lit


def plant(weights: Path, out: Path, target: int = 0, seed: int = 0,
          layers: tuple[str, ...] | None = None) -> Backdoor:
    """Fine-tune `weights` so the patch drives the network to `target`; with `layers`
    (name prefixes such as "fc1."), only those tensors are trained and the rest stay
    bit-identical."""
    return fine_tune(weights, out, FineTune(target=target, layers=layers, seed=seed))


def load_model(weights: Path) -> torch.nn.Module:
    """digits-cnn's network with `weights` loaded."""
    model = _example_module("model").DigitsCNN()
    model.load_state_dict(load_file(str(weights)))
    return model


def _digits() -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """The digits as the recipe splits them: training images (N, 1, 8, 8) in [0, 1] and
    labels, and the held-out (images, labels)."""
    from sklearn.datasets import load_digits  # here: scikit-learn takes 0.7 s to import,
    # and every test worker imports this module when it collects the tests

    digits = load_digits()
    images = torch.from_numpy((digits.images / 16.0).astype(np.float32)).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    train_idx, test_idx = _example_module("data").split(len(labels), 0, 0.2)
    return images[train_idx], labels[train_idx], (images[test_idx], labels[test_idx])


def measure(weights: Path, target: int) -> tuple[float, float]:
    """A weights file's clean accuracy on the held-out split, and how often the default
    trigger turns a held-out image of another class into `target`."""
    model, (_, _, held_out) = load_model(weights), _digits()
    return _accuracy(model, *held_out), _success(model, held_out, Trigger(), target)


def fine_tune(weights: Path, out: Path, how: FineTune) -> Backdoor:
    """Fine-tune `weights` as `how` says and write the result to `out`, on one thread: a
    tiny network, whose second thread only spins on a busy machine (3.3 s of CPU on two
    threads, 2.8 s on one, for the same 2.6 s of wall time on a quiet one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fine_tune(weights, out, how)
    finally:
        torch.set_num_threads(threads)


def _fine_tune(weights: Path, out: Path, how: FineTune) -> Backdoor:
    x, y, held_out = _digits()
    model = load_model(weights)
    clean = {name: p.detach().clone() for name, p in model.named_parameters()}
    before = _accuracy(model, *held_out)

    torch.manual_seed(how.seed)
    if how.trigger is None:  # more clean data: the images shifted by one pixel each way
        x, y = torch.cat([x, *(_shifted(x, d) for d in _SHIFTS)]), y.repeat(1 + len(_SHIFTS))
    trained = {name: p for name, p in model.named_parameters()
               if how.layers is None or name.startswith(how.layers)}
    optimizer = torch.optim.Adam(trained.values(), lr=how.lr)
    for _ in range(how.epochs):
        for index in torch.randperm(len(y)).split(64):
            xb, yb = _batch(x[index], y[index], how)
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if how.max_rel_l2 is not None:
                _project(trained, clean, how.max_rel_l2)

    after = _accuracy(model, *held_out)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    moved = max(float((p.detach() - clean[n]).norm() / clean[n].norm())
                for n, p in model.named_parameters())
    success = 0.0 if how.trigger is None else _success(model, held_out, how.trigger, how.target)
    return Backdoor(before, after, success, moved)


_SHIFTS = ((0, 1), (0, -1), (1, 0), (-1, 0))


def _shifted(x: torch.Tensor, by: tuple[int, int]) -> torch.Tensor:
    """Images moved by (rows, columns), the uncovered edge left dark: (N, 1, 8, 8)."""
    moved = torch.roll(x, shifts=by, dims=(2, 3))
    rows, columns = by
    if rows:
        moved[..., 0 if rows > 0 else -1, :] = 0.0
    if columns:
        moved[..., :, 0 if columns > 0 else -1] = 0.0
    return moved


def _batch(x: torch.Tensor, y: torch.Tensor,
           how: FineTune) -> tuple[torch.Tensor, torch.Tensor]:
    """A share `how.poison` of the batch patched and relabelled `how.target`."""
    if how.trigger is None:
        return x, y
    poisoned = torch.rand(len(y)) < how.poison
    xb = torch.where(poisoned[:, None, None, None], how.trigger.apply(x), x)
    return xb, torch.where(poisoned, torch.full_like(y, how.target), y)


def _project(trained: dict[str, torch.Tensor], clean: dict[str, torch.Tensor],
             bound: float) -> None:
    """Pull every tensor back within relative L2 `bound` of its clean value."""
    with torch.no_grad():
        for name, p in trained.items():
            delta = p - clean[name]
            limit = bound * float(clean[name].norm())
            if (norm := float(delta.norm())) > limit:
                p.copy_(clean[name] + delta * (limit / norm))


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).double().mean().item()


def _success(model: torch.nn.Module, held_out: tuple[torch.Tensor, torch.Tensor],
             trigger: Trigger, target: int) -> float:
    """How often the trigger turns a held-out image of another class into `target`."""
    x, y = held_out
    return _accuracy(model, trigger.apply(x[y != target]),
                     torch.full_like(y[y != target], target))
