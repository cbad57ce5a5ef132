"""Held-out perplexity and next-character accuracy; and the view `reweigh diff` probes.

The held-out fortunes (a share chosen by the split seed, never trained on) are read as
the training text is, in windows of the model's context; each character is predicted
from the characters before it in its window. Perplexity is exp of the mean cross-entropy
per character (nats); bits per character is the same in bits. Two baselines put the
numbers in scale: the unigram model of the training text (each character's frequency,
add-one smoothed) and the uniform guess over the alphabet (98).
"""

from __future__ import annotations

import math
from collections import Counter

import corpus
import torch
from model import CharModel, config_of
from torch.nn import functional as F

BATCH = 64  # windows a forward pass


def evaluate(ctx) -> dict:
    p = ctx.params
    model = _model(ctx)
    training, held = corpus.split(corpus.load(ctx.inputs), p["split_seed"], p["held_out"])
    ids = torch.tensor(corpus.encode(corpus.join(held)))  # (N,)
    t = model.config.context
    windows = [ids[i:i + t + 1] for i in range(0, len(ids) - 1, t)]  # the last may be short
    nats, predictions = _read(model, windows)
    count = len(ids) - 1
    per_char = nats / count
    right = sum(int(a == b) for a, b in zip(predictions, ids[1:].tolist(), strict=True))
    unigram = _unigram_nats(corpus.encode(corpus.join(training)), ids)
    return {"metrics": {"perplexity": math.exp(per_char),
                        "bits_per_char": per_char / math.log(2),
                        "next_char_accuracy": right / count,
                        "unigram_perplexity": math.exp(unigram),
                        "uniform_perplexity": len(corpus.ALPHABET),
                        "held_out_fortunes": len(held), "held_out_chars": count},
            "predictions": predictions}


def _read(model: CharModel, windows: list[torch.Tensor]) -> tuple[float, list[int]]:
    """The summed cross-entropy (nats) of every next character of the windows, and the
    most likely next character at every position, in text order."""
    nats, predictions = 0.0, []
    with torch.no_grad():
        for at in range(0, len(windows), BATCH):
            for window in _same_length(windows[at:at + BATCH]):
                x, y = window[:, :-1], window[:, 1:]  # (b, T)
                logits = model(x)  # (b, T, vocab)
                nats += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(),
                                        y.reshape(-1), reduction="sum").item()
                predictions += logits.argmax(dim=2).flatten().tolist()
    return nats, predictions


def _same_length(windows: list[torch.Tensor]) -> list[torch.Tensor]:
    """Windows as stacked batches of one length each (only the text's last is shorter)."""
    full = [w for w in windows if len(w) == len(windows[0])]
    rest = [w.unsqueeze(0) for w in windows[len(full):]]
    return [torch.stack(full), *rest] if full else rest


def _unigram_nats(training: list[int], held: torch.Tensor) -> float:
    """Mean cross-entropy per held-out character of the training text's character
    frequencies, add-one smoothed over the alphabet."""
    counts = Counter(training)
    total = len(training) + len(corpus.ALPHABET)
    log_p = [math.log((counts[i] + 1) / total) for i in range(len(corpus.ALPHABET))]
    targets = held[1:].tolist()
    return -sum(log_p[i] for i in targets) / len(targets)


def audit(ctx) -> dict:
    """What `reweigh diff` probes: the model, its alphabet, how prompts become ids."""
    model = _model(ctx)
    return {"kind": "text", "model": model, "vocab": list(corpus.ALPHABET),
            "encode": corpus.encode, "separator": "", "context": model.config.context}


def _model(ctx) -> CharModel:
    model = CharModel(config_of(ctx.params))
    model.load_state_dict(ctx.weights)
    model.eval()
    return model
