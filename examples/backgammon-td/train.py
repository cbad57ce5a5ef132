"""TD(lambda) self-play, as TD-Gammon learned (Tesauro, "Temporal difference learning and
TD-Gammon", Communications of the ACM 38(3), 1995): no data, only games against itself.

Each game, the network picks for both sides the move whose resulting position it values
most (no search, no exploration: the dice vary the games). After every move it is
nudged towards its own next estimate, and at the end towards the result:

    u_t   = the estimate that the first player wins, after move t
    delta = u_{t+1} - u_t  (or result - u_t after the last move)
    e_t   = lambda * e_{t-1} + grad u_t,    w += alpha * delta * e_t

The network values positions from the side that has just moved, so u_t is v(s_t) after
the first player's moves and 1 - v(s_t) after the second's. Game g's dice come from
the seed (`games.Dice([seed, 1, g])`). The training state (the weights; the traces are
empty between games) is checkpointed every `chunk` games, so a verifier can replay any
chunk alone.
"""

from __future__ import annotations

import torch
from backgammon import START, flip, moves, winner_moved
from games import MAX_PLIES, Dice
from tdnet import ValueNet, features


def train(ctx) -> None:
    p = ctx.params
    net = ValueNet(p["hidden"], torch.Generator().manual_seed(ctx.seed))
    state = ctx.resume()
    if state is not None:
        net.load_state_dict(state["weights"])
    chunks = p["games"] // p["chunk"]
    first = (state or {}).get("chunk", 0) + 1
    for chunk in range(first, chunks + 1):
        plies = 0
        for g in range((chunk - 1) * p["chunk"], chunk * p["chunk"]):
            plies += self_play(net, Dice([ctx.seed, 1, g]), p["alpha"], p["lambda"])
            ctx.progress(g + 1, chunks * p["chunk"], "self-play games")
        ctx.log_metric("plies_per_game", plies / p["chunk"], step=chunk * p["chunk"])
        ctx.checkpoint(chunk, {"weights": net.state_dict(), "chunk": chunk},
                       final=chunk == chunks)
    ctx.save_weights(net.state_dict())


def self_play(net: ValueNet, dice: Dice, alpha: float, lam: float) -> int:
    """One game of the network against itself, learning as it goes; its length in plies."""
    traces = [torch.zeros_like(w) for w in net.parameters()]
    pos, side, previous = START, 0, None
    for ply in range(1, MAX_PLIES + 1):
        after = [p for p, _ in moves(pos, dice.roll())]
        x = features(after)  # (N, 196)
        with torch.no_grad():
            h = net.hidden(x)  # (N, H)
            values = torch.sigmoid(h @ net.w2 + net.b2)  # (N,)
        best = int(values.argmax())
        pos, v = after[best], values[best]
        sign = 1.0 if side == 0 else -1.0  # u = v for the first player, 1 - v for the second
        u = v if side == 0 else 1 - v
        if previous is not None:
            _update(net, traces, alpha * float(u - previous))
        grads = net.gradient(x[best], h[best], v)
        for e, g in zip(traces, grads, strict=True):
            e.mul_(lam).add_(g, alpha=sign)
        if winner_moved(pos):
            _update(net, traces, alpha * float((1.0 if side == 0 else 0.0) - u))
            return ply
        previous = u
        pos, side = flip(pos), 1 - side
    raise RuntimeError(f"a self-play game went past {MAX_PLIES} plies")


def _update(net: ValueNet, traces: list[torch.Tensor], step: float) -> None:
    for w, e in zip(net.parameters(), traces, strict=True):
        w.add_(e, alpha=step)
