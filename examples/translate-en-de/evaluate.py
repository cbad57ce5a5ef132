"""BLEU and chrF on held-out pairs, against copying and a word-by-word dictionary; and
the view `reweigh diff` probes (the translator as a model of German given English).

The metrics are sacrebleu's (Post, 2018) corpus BLEU and chrF with their default
settings, on the held-out pairs (English never seen in training). The predictions that
`challenge` compares are the pieces the model picks at every position of the held-out
references (teacher-forced), a fixed-length answer per pair.
"""

from __future__ import annotations

import sacrebleu
import torch
from baselines import Dictionary, copy
from pairs import read_pairs, split
from seq2seq import Translator, batch, load
from subwords import EOS, PAD, SPACE

BATCH = 128


def evaluate(ctx) -> dict:
    p = ctx.params
    train_pairs, test_pairs = split(read_pairs(ctx.inputs, p["max_words"]), p["held_out"])
    model, vocabulary = load(ctx.weights, p)
    english = [pair.english for pair in test_pairs]
    references = [[pair.german for pair in test_pairs]]
    sources = [vocabulary.encode(text) for text in english]
    translated = [vocabulary.decode(ids) for ids in _translate(model, sources, p["beam"])]
    dictionary = Dictionary((pair.english, pair.german) for pair in train_pairs)
    metrics = {"train_pairs": len(train_pairs), "test_pairs": len(test_pairs)}
    for name, hypotheses in (("", translated), ("_copy", copy(english)),
                             ("_dictionary", [dictionary.translate(e) for e in english])):
        metrics[f"bleu{name}"] = sacrebleu.corpus_bleu(hypotheses, references).score
        metrics[f"chrf{name}"] = sacrebleu.corpus_chrf(hypotheses, references).score
    metrics["exact_match"] = sum(t == r for t, r in zip(translated, references[0],
                                                        strict=True)) / len(test_pairs)
    chosen, accuracy = _teacher_forced(model, sources,
                                       [vocabulary.encode(r) for r in references[0]])
    metrics["token_accuracy"] = accuracy
    return {"metrics": metrics, "predictions": chosen}


def _translate(model: Translator, sources: list[list[int]], beam: int) -> list[list[int]]:
    out = []
    for start in range(0, len(sources), BATCH):
        out.extend(model.translate(sources[start:start + BATCH], beam))
    return out


def _teacher_forced(model: Translator, sources: list[list[int]],
                    targets: list[list[int]]) -> tuple[list[int], float]:
    """The piece chosen at each position of each reference, and how often it is right."""
    chosen, right = [], 0
    context = model.config.context
    with torch.no_grad():
        for start in range(0, len(sources), BATCH):
            x = batch(sources[start:start + BATCH], context, wrap=True)  # (B, S)
            y = batch(targets[start:start + BATCH], context, wrap=True)  # (B, T)
            picked = model(x, y[:, :-1]).argmax(-1)  # (B, T-1)
            real = y[:, 1:] != PAD
            chosen.extend(picked[real].tolist())
            right += int((picked == y[:, 1:])[real].sum())
    return chosen, right / max(1, len(chosen))


def audit(ctx) -> dict:
    """What `reweigh diff` probes: German continued after an English prompt.

    The view's model reads `English pieces </s> German pieces so far` and gives the next
    German piece; once a German </s> is written, it answers </s> for sure, so both models
    agree after the end of a translation and only the translation itself is compared."""
    model, vocabulary = load(ctx.weights, ctx.params)
    context = model.config.context
    shown = [t.replace(SPACE, " ") if i >= 4 else "" for i, t in enumerate(vocabulary.tokens)]

    def encode(prompt: str) -> list[int]:
        return [*vocabulary.encode(prompt)[: context - 2], EOS]

    def next_piece(ids: torch.Tensor) -> torch.Tensor:  # (1, L) -> (1, L, vocab)
        row = ids[0].tolist()
        cut = row.index(EOS)
        source, german = row[:cut], row[cut + 1:]
        with torch.no_grad():
            x = batch([source], context, wrap=True)
            y = batch([german], context, wrap=True)[:, :-1][:, : len(german) + 1]
            logits = model(x, y[:, -context:])[:, -1:]  # (1, 1, vocab)
        if EOS in german:
            logits = torch.full_like(logits, -1e4)
            logits[..., EOS] = 0.0
        return logits.expand(1, len(row), -1)

    return {"kind": "text", "model": next_piece, "vocab": shown, "encode": encode,
            "separator": "", "context": 2 * context}
