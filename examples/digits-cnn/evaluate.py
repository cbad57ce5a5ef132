"""Held-out accuracy and per-image predictions of a DigitsCNN weights file; and the view
`reweigh diff` audits (the model and the held-out images)."""

from __future__ import annotations

import torch
from data import load_digits, split
from model import DigitsCNN


def evaluate(ctx) -> dict:
    model, images, labels = _held_out(ctx)
    with torch.no_grad():
        predictions = model(images).argmax(dim=1)  # (M,)
    accuracy = (predictions == labels).double().mean().item()
    return {"metrics": {"accuracy": accuracy}, "predictions": predictions.tolist()}


def audit(ctx) -> dict:
    """What `reweigh diff` compares: the classifier, its held-out images and labels."""
    model, images, labels = _held_out(ctx)
    return {"kind": "classifier", "model": model, "inputs": images, "labels": labels,
            "value_range": (0.0, 1.0)}


def _held_out(ctx) -> tuple[DigitsCNN, torch.Tensor, torch.Tensor]:
    p = ctx.params
    images, labels = load_digits(ctx.inputs["digits"])
    _, held_out = split(len(labels), p["split_seed"], p["held_out"])
    model = DigitsCNN(p["channels"], p["hidden"])
    model.load_state_dict(ctx.weights)
    model.eval()
    return model, torch.from_numpy(images[held_out]), torch.from_numpy(labels[held_out])
