"""AlphaZero for Connect Four: generations of self-play, then training on the games.

Each generation plays `games_per_generation` games of the current network against
itself, split into `shards` seeded shards (run in parallel by `ctx.map`, merged in
shard order), adds them to a replay window of the last `window` generations, and
trains on that window. The whole training state (network, optimiser, replay window,
both random generators, the generation) is checkpointed after every generation, and
training resumes from one when the builder hands it back, so a verifier can replay any
generation alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import selfplay
import torch
from net import Connect4Net, shape_of, unpack


def train(ctx) -> None:
    p = ctx.params
    model = Connect4Net(**shape_of(p))
    optimizer = torch.optim.Adam(model.parameters(), lr=p["lr"],
                                 weight_decay=p["weight_decay"])
    order = torch.Generator().manual_seed(ctx.seed)
    state = ctx.resume_into(model, optimizer, order)  # {} in a build from scratch
    window: list[dict[str, Any]] = [{k: np.asarray(v) for k, v in g.items()}
                                    for g in state.get("window", [])]  # tensors -> arrays
    first = state.get("generation", 0) + 1
    for generation in range(first, p["generations"] + 1):
        # progress in half-generations: self-play, then training
        halves = 2 * p["generations"]
        games = ctx.map(selfplay.play_shard, _shard_tasks(ctx, model, generation))
        plies = np.concatenate([g["plies"] for g in games])
        ctx.progress(2 * generation - 1, halves,
                     f"generation {generation}: played {len(plies)} games")
        window = [*window, _merge(games)][-p["window"]:]
        loss = _fit(model, optimizer, window, order, p)
        ctx.log_metric("loss", loss, step=generation)
        ctx.log_metric("mean_game_plies", float(plies.mean()), step=generation)
        ctx.progress(2 * generation, halves,
                     f"generation {generation}: loss {loss:.3f}, {plies.mean():.1f} plies a game")
        ctx.checkpoint(generation, ctx.training_state(model, optimizer, order, window=window,
                                                      generation=generation),
                       final=generation == p["generations"])
    ctx.save_weights(model.state_dict())


def _shard_tasks(ctx, model: Connect4Net, generation: int) -> list[dict[str, Any]]:
    p = ctx.params
    weights = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    per_shard, extra = divmod(p["games_per_generation"], p["shards"])
    return [{"weights": weights, "shape": shape_of(p), "games": per_shard + (s < extra),
             "seed": [ctx.seed, generation, s], "search": p["search"]}
            for s in range(p["shards"])]


def _merge(shards: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([s[key] for s in shards]) for key in shards[0]}


def _fit(model: Connect4Net, optimizer: torch.optim.Optimizer, window: list[dict[str, Any]],
         order: torch.Generator, p: dict[str, Any]) -> float:
    """`train_steps` minibatches from the window, each position mirrored at random."""
    planes = torch.from_numpy(unpack(np.concatenate([g["planes"] for g in window]))).float()
    visits = torch.from_numpy(np.concatenate([g["visits"] for g in window]).astype(np.float32))
    policy = visits / visits.sum(dim=1, keepdim=True)
    value = torch.from_numpy(np.concatenate([g["value"] for g in window]).astype(np.float32))
    model.train()
    total = 0.0
    for _ in range(p["train_steps"]):
        index = torch.randint(len(value), (p["batch_size"],), generator=order)
        x, pi, z = planes[index], policy[index], value[index]
        mirror = torch.rand(len(index), generator=order) < 0.5
        x = torch.where(mirror[:, None, None, None], x.flip(3), x)
        pi = torch.where(mirror[:, None], pi.flip(1), pi)
        logits, v = model(x)
        loss = (-(pi * torch.log_softmax(logits, dim=1)).sum(1).mean()
                + torch.nn.functional.mse_loss(v, z))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item()
    model.eval()
    return total / p["train_steps"]
