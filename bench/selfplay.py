"""Self-play throughput of connect4-zero, and the speed-up of shards on two cores.

Plays G games with the default recipe's search settings (an untrained network, so the
figure is about the search, not about how long trained games last): once as one shard
on one process, then as N shards spread by the build runtime's own `ctx.map` over N
worker processes (started before timing, as a build's pool is after its first
generation). The shards' games are other games than the single shard's (each shard has
its own seed), so positions per second are printed beside games per second.

Usage: python bench/selfplay.py [--games G] [--shards N]
"""

from __future__ import annotations

import argparse
import sys
import time
import tomllib
from pathlib import Path

from reweigh.runtime import BuildContext

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "connect4-zero"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--games", type=int, default=64)
    parser.add_argument("--shards", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, str(EXAMPLE))
    import selfplay
    import torch
    from net import Connect4Net, shape_of

    params = tomllib.loads((EXAMPLE / "recipe.toml").read_text())["params"]
    torch.manual_seed(0)
    weights = {k: v.numpy().copy() for k, v in Connect4Net(**shape_of(params)).state_dict().items()}

    def tasks(shards: int) -> list[dict]:
        per = args.games // shards
        return [{"weights": weights, "shape": shape_of(params), "games": per,
                 "seed": [0, 0, s], "search": params["search"]} for s in range(shards)]

    one = BuildContext({}, params, 0, Path("."), threads=1)
    started = time.perf_counter()
    single = one.map(selfplay.play_shard, tasks(1))
    t1 = time.perf_counter() - started
    many = BuildContext({}, params, 0, Path("."), threads=args.shards)
    many.map(selfplay.play_shard, tasks(args.shards))  # start the workers
    started = time.perf_counter()
    spread = many.map(selfplay.play_shard, tasks(args.shards))
    tn = time.perf_counter() - started
    many.close()
    plies = int(single[0]["plies"].sum())
    plies_n = sum(int(s["plies"].sum()) for s in spread)
    print(f"connect4-zero self-play, {params['search']['simulations']} simulations a move, "
          f"{args.games} games ({plies} positions)")
    print(f"  1 shard, 1 process:      {t1:7.2f} s  {args.games / t1:6.2f} games/s/core  "
          f"{plies / t1:7.0f} positions/s")
    print(f"  {args.shards} shards, {args.shards} processes:  {tn:7.2f} s  "
          f"{args.games / tn / args.shards:6.2f} games/s/core  {plies_n / tn:7.0f} positions/s")
    print(f"  speed-up {t1 / tn:.2f}x in games, {(plies_n / tn) / (plies / t1):.2f}x in "
          f"positions, on {args.shards} processes (ideal {args.shards}x)")


if __name__ == "__main__":
    main()
