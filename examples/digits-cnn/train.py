"""Train DigitsCNN with Adam on the training split, checkpointing every few batches.

A step is one batch. The checkpoint holds the whole training state (model, optimiser,
both random generators, this epoch's shuffle and the position in it), and training
resumes from one when the builder hands it back (`ctx.resume_into`), so a verifier can
replay any few batches of training alone.
"""

from __future__ import annotations

import math

import torch
from torch.nn.functional import cross_entropy
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
    state = ctx.resume_into(model, optimizer, order)  # {} in a build from scratch
    first, running = state.get("step", 0) + 1, state.get("running", 0.0)
    permutation = state.get("permutation")  # this epoch's shuffle, when resumed mid-epoch
    for step in range(first, total + 1):
        epoch, b = divmod(step - 1, batches)
        if b == 0:
            permutation, running = torch.randperm(len(y), generator=order), 0.0
        index = permutation[b * p["batch_size"]:(b + 1) * p["batch_size"]]
        if ctx.shards > 1:  # sharded.toml: the same bits with any number of --workers
            def share(part, size=len(index)):
                return cross_entropy(model(x[part]), y[part], reduction="sum") / size

            loss = ctx.backward_shards(model, share, index.tensor_split(ctx.shards))
        else:
            loss = cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            loss = loss.item()
        optimizer.step()
        running += loss
        ctx.progress(step, total, f"epoch {epoch + 1} loss {loss:.3f}")
        if b == batches - 1:
            ctx.log_metric("train_loss", running / batches, step=epoch + 1)
        ctx.checkpoint(step, ctx.training_state(model, optimizer, order, step=step,
                                                permutation=permutation, running=running),
                       final=step == total)
    ctx.save_weights(model.state_dict())
