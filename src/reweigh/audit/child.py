"""What `diff` runs inside the sandboxed child: both networks, through the recipe's code.

Model code belongs to the recipe, so it runs where all recipe code runs: in the
child process the builder starts (no network, scrubbed environment, weights read
with safetensors only). The recipe's `evaluate.audit` entry is called once per
weights file with an `EvalContext` and returns a *view* of the network, a dict:

    classifier: {"kind": "classifier", "model": f, "inputs": x, "labels": y,
                 "value_range": (low, high)}
        f maps a float tensor (B, ...) to logits (B, K); x holds the evaluation
        inputs (N, ...); y their true classes (N,) or None; images (N, C, H, W)
        also get a trigger search, with pixel values in value_range (default 0..1).
    text:       {"kind": "text", "model": f, "vocab": [...], "encode": g,
                 "separator": " ", "context": 64}
        f maps token ids (B, T) to logits (B, T, V); g maps a prompt to token ids.

Everything measured here is returned as plain JSON data; the parent process only
reads it. This module holds no maths of its own: it feeds the views to
`behaviour`, `trigger` and `text`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..job import AuditSettings, Job
from . import behaviour, text, trigger
from .probes import Probe

PICTURE_SIDE = 64  # inputs are sent back as pictures only when they are small images
BATCH = 1024


@dataclass(frozen=True)
class ClassifierView:
    model: Callable[[torch.Tensor], torch.Tensor]
    inputs: torch.Tensor  # (N, ...)
    labels: torch.Tensor | None  # (N,)
    value_range: tuple[float, float] = (0.0, 1.0)


def audit(job: Job, inputs: dict[str, Path]) -> dict[str, Any]:
    """Load both views and measure them; the result is the child's one `audit` event."""
    from safetensors.torch import load_file

    from ..runtime import EvalContext, load_entry, seed_everything

    settings = job.audit
    assert settings is not None
    entry = load_entry(Path(job.src), settings.entry)
    views = []
    for weights in job.weights:
        seed_everything(job.seed)
        ctx = EvalContext(inputs, job.params, job.seed, job.threads, load_file(weights))
        views.append(view_of(entry(ctx)))
    view_a, view_b = views
    if type(view_a) is not type(view_b):
        raise TypeError("the audit entry returned different kinds of view for A and B")
    if isinstance(view_a, text.TextView) and isinstance(view_b, text.TextView):
        probes = [Probe(topic, prompt) for topic, prompt in settings.probes]
        rows = text.probe(view_a, view_b, probes, settings.length)
        return {"kind": "text", "text": text.rank(rows, settings.length)}
    assert isinstance(view_a, ClassifierView) and isinstance(view_b, ClassifierView)
    return _classifier(view_a, view_b, settings)


def view_of(result: Any) -> ClassifierView | text.TextView:
    """Check what the recipe's audit entry returned; say plainly what is wrong."""
    if not isinstance(result, dict) or result.get("kind") not in ("classifier", "text"):
        raise TypeError("the audit entry must return a dict with kind 'classifier' or 'text'")
    model = result.get("model")
    if not callable(model):
        raise TypeError("the audit entry's 'model' must be callable")
    if isinstance(model, torch.nn.Module):
        model.eval()
        model.requires_grad_(False)  # the trigger search wants gradients of inputs only
    if result["kind"] == "text":
        return text.TextView(model, list(result["vocab"]), result["encode"],
                             str(result.get("separator", " ")), int(result.get("context", 64)))
    x = torch.as_tensor(result.get("inputs"), dtype=torch.float32)
    labels = result.get("labels")
    y = None if labels is None else torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if y is not None and len(y) != len(x):
        raise TypeError(f"the audit entry gave {len(x)} inputs but {len(y)} labels")
    low, high = result.get("value_range", (0.0, 1.0))
    return ClassifierView(model, x, y, (float(low), float(high)))


def _classifier(a: ClassifierView, b: ClassifierView,
                settings: AuditSettings) -> dict[str, Any]:
    from ..runtime import emit

    if a.inputs.shape != b.inputs.shape:
        raise TypeError("the audit entry gave different evaluation inputs for A and B")
    probs_a, probs_b = _probabilities(a), _probabilities(b)  # (N, K) each
    labels = None if a.labels is None else a.labels.numpy()
    section = behaviour.compare(probs_a, probs_b, labels, settings.top, settings.agreement)
    for row in section["diverging"]:
        row["picture"] = _picture(a.inputs[row["index"]], a.value_range)
    result: dict[str, Any] = {"kind": "classifier", "behaviour": section}
    if settings.trigger is not None and a.inputs.dim() == 4:
        search = trigger.TriggerSettings(**settings.trigger)
        found = trigger.search(a.model, b.model, a.inputs, search, value_range=a.value_range,
                               progress=lambda done, total: emit(
                                   "progress", done=done, total=total,
                                   label=f"trigger search, class {done}"))
        answers_a = torch.from_numpy(probs_a.argmax(1))  # (N,): A's answers, computed once
        result["trigger"] = {**trigger.to_json(found),
                             "example": _example(a, b, found, answers_a)}
    return result


def _probabilities(view: ClassifierView) -> np.ndarray:
    with torch.no_grad():
        parts = [torch.softmax(view.model(view.inputs[i:i + BATCH]).double(), dim=1)
                 for i in range(0, len(view.inputs), BATCH)]  # (B, K) each
    return torch.cat(parts).numpy()


def _picture(image: torch.Tensor,
             value_range: tuple[float, float]) -> list[list[list[float]]] | None:
    """A small image (C, H, W) as nested lists of 0..1 for the HTML report; None otherwise."""
    if image.dim() != 3 or image.shape[0] not in (1, 3) or max(image.shape[1:]) > PICTURE_SIDE:
        return None
    low, high = value_range
    scaled = (image - low) / ((high - low) or 1.0)
    return [[[round(float(v), 4) for v in row] for row in channel] for channel in scaled]


def _example(a: ClassifierView, b: ClassifierView, found: trigger.TriggerResult,
             answers_a: torch.Tensor) -> dict[str, Any] | None:
    """One input A does not put in the trigger's class, clean and patched, with both
    answers."""
    best = found.best
    if best is None:
        return None
    others = (answers_a != best.target).nonzero().flatten()
    if len(others) == 0:
        return None
    index = int(others[0])
    clean = a.inputs[index].clone()  # (C, H, W)
    patched = clean.clone()
    for (row, column), values in zip(best.pixels, best.pattern, strict=True):
        patched[:, row, column] = torch.tensor(values)
    with torch.no_grad():
        answer_a = int(a.model(patched[None]).argmax(1))
        answer_b = int(b.model(patched[None]).argmax(1))
    return {"index": index, "clean": _picture(clean, a.value_range),
            "patched": _picture(patched, a.value_range),
            "answer_a": answer_a, "answer_b": answer_b}
