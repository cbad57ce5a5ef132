"""Held-out accuracy and per-image predictions of a DigitsCNN weights file."""

from __future__ import annotations

import torch
from data import load_digits, split
from model import DigitsCNN


def evaluate(ctx) -> dict:
    p = ctx.params
    images, labels = load_digits(ctx.inputs["digits"])
    _, held_out = split(len(labels), p["split_seed"], p["held_out"])
    model = DigitsCNN(p["channels"], p["hidden"])
    model.load_state_dict(ctx.weights)
    model.eval()
    with torch.no_grad():
        predictions = model(torch.from_numpy(images[held_out])).argmax(dim=1)  # (M,)
    truth = torch.from_numpy(labels[held_out])
    accuracy = (predictions == truth).double().mean().item()
    return {"metrics": {"accuracy": accuracy}, "predictions": predictions.tolist()}
