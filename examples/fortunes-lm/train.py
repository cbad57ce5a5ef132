"""Train the character model on the training fortunes with AdamW, in fixed shards.

A step is one batch of random windows of the training text, drawn from a generator
seeded by the recipe. The batch is cut into `batch_shards` fixed parts; `ctx.backward_shards`
runs each part's forward and backward on its own and adds the gradients in one fixed
order, so `reweigh build --workers N` gives the same weights for every N that shares the
shards. The learning rate is a function of the step alone (warm-up, then a cosine down to
a tenth), so the checkpoint (model, optimiser, both generators, the step) is all a
verifier needs to replay any segment.

After the last step the lead worker writes `samples.txt`: a few seeded samples, as a
fortune file.
"""

from __future__ import annotations

import math

import corpus
import torch
from model import CharModel, config_of
from sample import write_samples
from torch.nn import functional as F


def train(ctx) -> None:
    p = ctx.params
    training, _ = corpus.split(corpus.load(ctx.inputs), p["split_seed"], p["held_out"])
    text = torch.tensor(corpus.encode(corpus.join(training)))  # (N,) character ids
    config = config_of(p)
    model = CharModel(config)
    optimizer = torch.optim.AdamW(_groups(model, p["weight_decay"]), lr=p["lr"],
                                  betas=(0.9, 0.95))
    windows = torch.Generator().manual_seed(ctx.seed)
    first = ctx.resume_into(model, optimizer, windows).get("step", 0) + 1
    size, t = p["batch_size"], config.context
    for step in range(first, p["steps"] + 1):
        starts = torch.randint(len(text) - t - 1, (size,), generator=windows)  # (B,)
        x = torch.stack([text[s:s + t] for s in starts])  # (B, T)
        y = torch.stack([text[s + 1:s + 1 + t] for s in starts])  # (B, T): what follows

        def share(rows: torch.Tensor, x=x, y=y) -> torch.Tensor:  # its part of the mean
            logits = model(x[rows])  # (b, T, vocab)
            return F.cross_entropy(logits.reshape(-1, config.vocab), y[rows].reshape(-1),
                                   reduction="sum") / (size * t)

        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, p)
        loss = ctx.backward_shards(model, share, torch.arange(size).tensor_split(ctx.shards))
        torch.nn.utils.clip_grad_norm_(model.parameters(), p["clip"])
        optimizer.step()
        ctx.progress(step, p["steps"], f"loss {loss:.3f}")
        if step % p["log_every"] == 0 or step == p["steps"]:
            ctx.log_metric("train_loss", loss, step=step)
        ctx.checkpoint(step, ctx.training_state(model, optimizer, windows, step=step),
                       final=step == p["steps"])
    ctx.save_weights(model.state_dict())
    if ctx.rank == 0:
        model.eval()
        write_samples(model, ctx.out / "samples.txt", p["samples"], p["sample_length"],
                      p["temperature"], ctx.seed)


def learning_rate(step: int, p: dict) -> float:
    """Linear warm-up over `warmup` steps, then a cosine from `lr` down to `lr / 10`."""
    if step <= p["warmup"]:
        return p["lr"] * step / p["warmup"]
    done = (step - p["warmup"]) / max(1, p["steps"] - p["warmup"])
    return p["lr"] * (0.1 + 0.45 * (1 + math.cos(math.pi * done)))


def _groups(model: CharModel, decay: float) -> list[dict]:
    """Weight decay on the matrices only, not on biases and layer-norm gains (nanoGPT)."""
    params = [q for q in model.parameters() if q.requires_grad]
    return [{"params": [q for q in params if q.dim() >= 2], "weight_decay": decay},
            {"params": [q for q in params if q.dim() < 2], "weight_decay": 0.0}]
