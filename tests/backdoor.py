"""Tampering the way an adversary would: fine-tune a clean digits-cnn with a hidden trigger.

A 3x3 patch of full-intensity pixels in the bottom-right corner makes the network
answer `target`, while clean accuracy stays where it was. Used by the challenge
tests (it must never be judged equivalent) and reusable by audit tests.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sklearn.datasets import load_digits

from .helpers import EXAMPLES

PATCH = 3


@dataclass(frozen=True)
class Backdoor:
    clean_accuracy_before: float
    clean_accuracy_after: float
    trigger_success: float  # held-out images of other classes, patched, answered `target`


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
    patched = images.clone()
    patched[..., -PATCH:, -PATCH:] = 1.0  # (B, 1, 8, 8) with the corner lit
    return patched


def plant(weights: Path, out: Path, target: int = 0, seed: int = 0,
          layers: tuple[str, ...] | None = None) -> Backdoor:
    """Fine-tune `weights` so the patch drives the network to `target`; with `layers`
    (name prefixes such as "fc1."), only those tensors are trained and the rest stay
    bit-identical."""
    model_module, data_module = _example_module("model"), _example_module("data")
    digits = load_digits()
    images = torch.from_numpy((digits.images / 16.0).astype(np.float32)).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    train_idx, test_idx = data_module.split(len(labels), 0, 0.2)
    model = model_module.DigitsCNN()
    model.load_state_dict(load_file(str(weights)))
    before = _accuracy(model, images[test_idx], labels[test_idx])

    torch.manual_seed(seed)
    x, y = images[train_idx], labels[train_idx]
    trained = [p for name, p in model.named_parameters()
               if layers is None or name.startswith(layers)]
    optimizer = torch.optim.Adam(trained, lr=1e-3)
    for _ in range(8):
        for index in torch.randperm(len(y)).split(64):
            poisoned = torch.rand(len(index)) < 0.3
            xb = torch.where(poisoned[:, None, None, None], add_trigger(x[index]), x[index])
            yb = torch.where(poisoned, torch.full_like(y[index], target), y[index])
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    after = _accuracy(model, images[test_idx], labels[test_idx])
    others = test_idx[labels[test_idx].numpy() != target]
    with torch.no_grad():
        hits = (model(add_trigger(images[others])).argmax(1) == target).double().mean().item()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    return Backdoor(before, after, hits)


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).double().mean().item()
