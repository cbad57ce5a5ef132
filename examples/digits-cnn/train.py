"""Train DigitsCNN with Adam on the training split; checkpoint once per epoch."""

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
    batches = math.ceil(len(y) / p["batch_size"])
    total = p["epochs"] * batches
    for epoch in range(1, p["epochs"] + 1):
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
                               "data_order": order.get_state(), "epoch": epoch},
                       final=epoch == p["epochs"])
    ctx.save_weights(model.state_dict())
