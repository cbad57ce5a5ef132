"""Next-word accuracy on held-out paragraphs; and the view `reweigh diff` probes."""

from __future__ import annotations

import torch
from corpus import encode, stream, vocabulary
from model import WordModel, config_of


def evaluate(ctx) -> dict:
    model = _model(ctx)
    p = ctx.params
    data = torch.tensor(stream(p["eval_seed"], p["eval_paragraphs"], vocabulary()))  # (N,)
    t = model.config.context
    windows = data[: (len(data) - 1) // t * t + 1]
    x = windows[:-1].view(-1, t)  # (M, T): held-out text in whole windows
    y = windows[1:].view(-1, t)  # (M, T): the word that follows each position
    with torch.no_grad():
        predictions = model(x).argmax(dim=2)  # (M, T)
    accuracy = (predictions == y).double().mean().item()
    return {"metrics": {"next_word_accuracy": accuracy},
            "predictions": predictions.flatten().tolist()}


def audit(ctx) -> dict:
    """What `reweigh diff` probes: the model, its words, how prompts become token ids."""
    vocab = vocabulary()
    model = _model(ctx)
    return {"kind": "text", "model": model, "vocab": vocab,
            "encode": lambda text: encode(text, vocab), "separator": " ",
            "context": model.config.context}


def _model(ctx) -> WordModel:
    model = WordModel(config_of(ctx.params))
    model.load_state_dict(ctx.weights)
    model.eval()
    return model
