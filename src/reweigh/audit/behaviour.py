"""Behaviour on the recipe's evaluation data: who answers what differently (pure).

Given both networks' class probabilities on the same inputs (and the true labels
when the recipe knows them), say how often the answers differ, how each class
gained or lost inputs (the confusion matrices and their difference), and which
inputs moved most, measured by total variation distance between the two output
distributions (half the L1 distance: the share of probability that moved).

Thresholds, and why:
- behaviour is flagged when the answers disagree on more inputs than the recipe's
  tolerance allows an honest rebuild (`1 - evaluate.tolerance.agreement`);
- a class is flagged when at least `max(5, 10% of its inputs)` inputs moved into
  it or out of it: a handful of borderline inputs swing between any two trainings,
  a tenth of a class does not.
"""

from __future__ import annotations

from typing import Any

import numpy as np

CLASS_MIN_MOVED = 5
CLASS_FRACTION = 0.10


def compare(probs_a: np.ndarray, probs_b: np.ndarray, labels: np.ndarray | None,
            top: int, agreement: float) -> dict[str, Any]:
    """The behaviour section of a diff report, as JSON-ready data.

    probs_a, probs_b: (N, K) class probabilities; labels: (N,) or None.
    """
    if probs_a.shape != probs_b.shape or probs_a.ndim != 2 or len(probs_a) == 0:
        raise ValueError(f"outputs of shapes {probs_a.shape} and {probs_b.shape} do not "
                         "describe the same non-empty set of inputs")
    answers_a, answers_b = probs_a.argmax(1), probs_b.argmax(1)  # (N,)
    classes = probs_a.shape[1]
    disagreement = float(np.mean(answers_a != answers_b))
    section: dict[str, Any] = {
        "samples": len(probs_a),
        "disagreement": disagreement,
        "disagreement_threshold": 1.0 - agreement,
        "flagged": disagreement > 1.0 - agreement,
        "classes": per_class(answers_a, answers_b, labels, classes),
        "diverging": diverging(probs_a, probs_b, labels, top),
    }
    if labels is not None:
        confusion_a = confusion(labels, answers_a, classes)
        confusion_b = confusion(labels, answers_b, classes)
        section.update(accuracy_a=float(np.mean(answers_a == labels)),
                       accuracy_b=float(np.mean(answers_b == labels)),
                       confusion_a=confusion_a.tolist(), confusion_b=confusion_b.tolist(),
                       confusion_difference=(confusion_b - confusion_a).tolist())
    return section


def confusion(labels: np.ndarray, answers: np.ndarray, classes: int) -> np.ndarray:
    """(K, K) counts: row = true class, column = answer."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (labels.astype(np.int64), answers.astype(np.int64)), 1)
    return matrix


def per_class(answers_a: np.ndarray, answers_b: np.ndarray, labels: np.ndarray | None,
              classes: int) -> list[dict[str, Any]]:
    """For each class: inputs that moved into it and out of it, recall on both sides."""
    rows = []
    for c in range(classes):
        moved_in = int(np.sum((answers_b == c) & (answers_a != c)))
        moved_out = int(np.sum((answers_a == c) & (answers_b != c)))
        support = int(np.sum(labels == c)) if labels is not None else int(np.sum(answers_a == c))
        limit = max(CLASS_MIN_MOVED, CLASS_FRACTION * support)
        row: dict[str, Any] = {"class": c, "support": support, "answered_a":
                               int(np.sum(answers_a == c)), "answered_b":
                               int(np.sum(answers_b == c)), "moved_in": moved_in,
                               "moved_out": moved_out, "flagged": max(moved_in, moved_out) >= limit}
        if labels is not None and support:
            mine = labels == c
            row["recall_a"] = float(np.mean(answers_a[mine] == c))
            row["recall_b"] = float(np.mean(answers_b[mine] == c))
        rows.append(row)
    return rows


def total_variation(probs_a: np.ndarray, probs_b: np.ndarray) -> np.ndarray:
    """(N,) half the L1 distance between each pair of distributions, in [0, 1]."""
    return 0.5 * np.abs(probs_a - probs_b).sum(axis=1)


def most_diverging(distance: np.ndarray, top: int) -> list[int]:
    """Indices of the `top` largest distances; ties by index, zeros left out."""
    order = np.lexsort((np.arange(len(distance)), -distance))
    return [int(i) for i in order[:top] if distance[i] > 0]


def diverging(probs_a: np.ndarray, probs_b: np.ndarray, labels: np.ndarray | None,
              top: int) -> list[dict[str, Any]]:
    distance = total_variation(probs_a, probs_b)
    rows = []
    for i in most_diverging(distance, top):
        rows.append({"index": i, "label": int(labels[i]) if labels is not None else None,
                     "output_a": _output(probs_a[i]), "output_b": _output(probs_b[i]),
                     "distance": float(distance[i])})
    return rows


def _output(probs: np.ndarray) -> dict[str, Any]:
    answer = int(probs.argmax())
    return {"class": answer, "probability": float(probs[answer]),
            "probabilities": [round(float(p), 6) for p in probs]}
