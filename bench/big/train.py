"""Train WideMLP with Adam for `steps` steps on synthetic batches, checkpointing."""

from __future__ import annotations

import torch
from model import WideMLP, batch


def train(ctx) -> None:
    p = ctx.params
    model = WideMLP(p["width"], p["layers"], p["classes"])
    optimizer = torch.optim.Adam(model.parameters(), lr=p["lr"])
    state = ctx.resume_into(model, optimizer)  # {} in a build from scratch
    for step in range(state.get("step", 0) + 1, p["steps"] + 1):
        x, y = batch(step, p["batch_size"], p["width"], p["classes"], ctx.seed)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ctx.log_metric("train_loss", loss.item(), step=step)
        ctx.checkpoint(step, ctx.training_state(model, optimizer, step=step),
                       final=step == p["steps"])
    ctx.save_weights(model.state_dict())
