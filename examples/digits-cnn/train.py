"""Train DigitsCNN with Adam on the training split; checkpoint once per epoch.

The checkpoint holds the whole training state (model, optimiser, both random
generators, the epoch), and training resumes from one when the builder hands it
back (`ctx.resume()`), so a verifier can replay any segment of training alone.
"""

from __future__ import annotations

import math

import torch
from data import load_digits, split
from model import DigitsCNN


def train(ctx) -> None:
    p = ctx.params
    images, labels = load_digits(ctx.inputs["digits"])
    train_idx, _ = split(len(labels), p["split_seed"], p["held_out"])
    x = torch.from_numpy(images[train_idx])  # (N, 1, 8, 8)
    y = torch.from_numpy(labels[train_idx])  # (N,)
    model = DigitsCNN(p["channels"], p["hidden"])
    optimizer = torch.optim.Adam(model.parameters(), lr=p["lr"])
    order = torch.Generator().manual_seed(ctx.seed)
    first = 1
    if (state := ctx.resume()) is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        order.set_state(state["data_order"])
        torch.set_rng_state(state["torch_rng"])
        first = state["epoch"] + 1
    batches = math.ceil(len(y) / p["batch_size"])
    total = p["epochs"] * batches
    for epoch in range(first, p["epochs"] + 1):
        permutation = torch.randperm(len(y), generator=order)
        running = 0.0
        for b in range(batches):
            index = permutation[b * p["batch_size"]:(b + 1) * p["batch_size"]]
            loss = torch.nn.functional.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running += loss.item()
            ctx.progress((epoch - 1) * batches + b + 1, total, f"epoch {epoch} loss {loss:.3f}")
        ctx.log_metric("train_loss", running / batches, step=epoch)
        ctx.checkpoint(epoch, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "data_order": order.get_state(),
                               "torch_rng": torch.get_rng_state(), "epoch": epoch},
                       final=epoch == p["epochs"])
    ctx.save_weights(model.state_dict())
