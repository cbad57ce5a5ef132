"""Train the translator on the English -> German pairs of the recipe's Debian packages.

The vocabulary is learned from the training pairs first (a function of the pairs alone,
so every replay of a segment learns the same one). The pairs are then cut into batches of
similar length (sorted by length, at most `batch_tokens` pieces a batch, padding
included), so that little is spent on padding; each step trains on a batch drawn at
random, with AdamW, the learning rate warmed up linearly and decayed as a cosine. The
weights saved are a running average of the trained ones (Polyak averaging, decay
`average`: about the last 1/(1 - average) steps; 0 keeps the last step's), which smooths
out the noise of the last updates. The whole training state (model, average, optimiser,
schedule position, the batch generator and torch's own, which drives dropout) is
checkpointed every step and kept every `checkpoint_every` steps.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pairs import read_pairs, split
from seq2seq import Translator, batch, config_of
from subwords import PAD, learn
from torch.nn import functional as F


def train(ctx) -> None:
    p = ctx.params
    train_pairs, _ = split(read_pairs(ctx.inputs, p["max_words"]), p["held_out"])
    vocabulary = learn([t for pair in train_pairs for t in (pair.english, pair.german)],
                       p["merges"])
    sources = [vocabulary.encode(pair.english) for pair in train_pairs]
    targets = [vocabulary.encode(pair.german) for pair in train_pairs]
    ctx.log_metric("train_pairs", len(train_pairs))
    ctx.log_metric("vocabulary", len(vocabulary))
    model = Translator(config_of(p, len(vocabulary)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=p["lr"], betas=(0.9, 0.98),
                                  weight_decay=p["weight_decay"])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _rate(p["warmup"], p["steps"]))
    order = torch.Generator().manual_seed(ctx.seed)
    state = ctx.resume_into(model, optimizer, order, scheduler=schedule)
    first = state.get("step", 0) + 1
    average = state.get("average") or {k: v.detach().clone()
                                       for k, v in model.state_dict().items()}
    decay = p["average"]
    batches = by_length(sources, targets, p["batch_tokens"], p["context"])
    model.train()
    for step in range(first, p["steps"] + 1):
        chosen = batches[int(torch.randint(len(batches), (1,), generator=order))]
        loss = _step(model, optimizer, [sources[i] for i in chosen],
                     [targets[i] for i in chosen], p)
        schedule.step()
        _follow(average, model, decay)
        ctx.progress(step, p["steps"], f"loss {loss:.3f}")
        if step % 100 == 0 or step == p["steps"]:
            ctx.log_metric("train_loss", loss, step=step)
        ctx.checkpoint(step, ctx.training_state(model, optimizer, order, scheduler=schedule,
                                                step=step, average=average),
                       final=step == p["steps"])
    weights = dict(average) if decay else dict(model.state_dict())
    weights["vocabulary"] = torch.from_numpy(np.frombuffer(vocabulary.to_json(), np.uint8).copy())
    ctx.save_weights(weights)


def by_length(sources: list[list[int]], targets: list[list[int]], tokens: int,
              context: int) -> list[list[int]]:
    """Pair indices in batches of similar lengths, each at most `tokens` pieces padded."""
    lengths = [(min(len(t), context - 2) + 2, min(len(s), context - 2) + 2, i)
               for i, (s, t) in enumerate(zip(sources, targets, strict=True))]
    batches: list[list[int]] = [[]]
    widest = (0, 0)
    for target, source, i in sorted(lengths):
        wider = (max(widest[0], target), max(widest[1], source))
        if batches[-1] and (len(batches[-1]) + 1) * sum(wider) > tokens:
            batches.append([])
            wider = (target, source)
        batches[-1].append(i)
        widest = wider
    return batches


def _step(model: Translator, optimizer: torch.optim.Optimizer, sources: list[list[int]],
          targets: list[list[int]], p: dict) -> float:
    context = model.config.context
    x = batch(sources, context, wrap=True)  # (B, S)
    y = batch(targets, context, wrap=True)  # (B, T): <s> german </s>
    logits = model(x, y[:, :-1])  # (B, T-1, vocab)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[:, 1:].reshape(-1),
                           ignore_index=PAD, label_smoothing=p["label_smoothing"])
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), p["clip"])
    optimizer.step()
    return loss.item()


@torch.no_grad()
def _follow(average: dict[str, torch.Tensor], model: Translator, decay: float) -> None:
    """Move the running average of the weights towards the model's (Polyak averaging)."""
    for name, value in model.state_dict().items():
        average[name].mul_(decay).add_(value, alpha=1 - decay)


def _rate(warmup: int, steps: int):
    """Linear warm-up, then a cosine down to a tenth of the rate."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        done = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(done, 1.0)))
    return factor
