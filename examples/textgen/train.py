"""Train the word model on the generated corpus with AdamW; checkpoint every few steps.

Batches are random windows of the corpus drawn from a generator seeded by the recipe;
the checkpoint holds the whole training state (model, optimiser, the generators,
the step), so a verifier can replay any segment of training alone.
"""

from __future__ import annotations

import torch
from corpus import stream, vocabulary
from model import WordModel, config_of
from torch.nn import functional as F


def train(ctx) -> None:
    p = ctx.params
    config = config_of(p)
    data = torch.tensor(stream(p["corpus_seed"], p["paragraphs"], vocabulary()))  # (N,)
    model = WordModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=p["lr"], weight_decay=0.01)
    windows = torch.Generator().manual_seed(ctx.seed)
    first = ctx.resume_into(model, optimizer, windows).get("step", 0) + 1
    for step in range(first, p["steps"] + 1):
        starts = torch.randint(len(data) - config.context - 1, (p["batch_size"],),
                               generator=windows)  # (B,)
        x = torch.stack([data[s:s + config.context] for s in starts])  # (B, T)
        y = torch.stack([data[s + 1:s + 1 + config.context] for s in starts])  # (B, T)
        logits = model(x)  # (B, T, vocab)
        loss = F.cross_entropy(logits.reshape(-1, config.vocab), y.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ctx.progress(step, p["steps"], f"loss {loss.item():.3f}")
        if step % 50 == 0 or step == p["steps"]:
            ctx.log_metric("train_loss", loss.item(), step=step)
        ctx.checkpoint(step, ctx.training_state(model, optimizer, windows, step=step),
                       final=step == p["steps"])
    ctx.save_weights(model.state_dict())
