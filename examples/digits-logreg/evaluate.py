"""Held-out accuracy of the fitted coefficients, computed with numpy alone."""

from __future__ import annotations

from data import load_digits, split


def evaluate(ctx) -> dict:
    p = ctx.params
    features, labels = load_digits(ctx.inputs["digits"])
    _, held_out = split(len(labels), p["split_seed"], p["held_out"])
    coef = ctx.weights["coef"].numpy()  # (classes, 64)
    intercept = ctx.weights["intercept"].numpy()  # (classes,)
    classes = ctx.weights["classes"].numpy()  # (classes,)
    scores = features[held_out] @ coef.T + intercept  # (M, classes)
    predictions = classes[scores.argmax(axis=1)]
    accuracy = float((predictions == labels[held_out]).mean())
    return {"metrics": {"accuracy": accuracy}, "predictions": predictions.tolist()}
