"""Fixed virtual shards: the same bits whatever the number of workers.

A recipe splits each step's batch into a fixed number of shards (its `shards`
parameter, part of the derivation). Each shard's forward and backward runs as it would
alone: from the same parameters, the same buffers and a random generator seeded for that
shard. The shard gradients are then added in one fixed order, a balanced binary tree over
the shard indices, that does not depend on which worker computed which shard. One
process holding every shard, two, three or eight data-parallel workers (torch.distributed
on gloo) give the same sums, so the same weights.

Plain data parallelism (DDP's all-reduce) adds gradients in an order that follows the
number of workers and the ring's buckets: the bits change with the world size. The price
of the fixed order is that every worker receives every shard's gradient (an all-gather of
shards x parameters, where DDP's ring all-reduce moves about 2 x parameters), and that each
shard's backward runs on its own, smaller batch. bench/workers.py measures both.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: after the numerics are pinned
    import torch

Loss = Callable[[Any], "torch.Tensor"]


def shard_count(params: Mapping[str, Any]) -> int:
    """A recipe's shards per step: its `shards` parameter, 1 without one."""
    count = params.get("shards", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"the recipe's `shards` parameter must be a positive integer, "
                         f"not {count!r}")
    return count


def owned(shards: int, workers: int, rank: int) -> range:
    """The contiguous block of shard indices that worker `rank` of `workers` computes."""
    return range(rank * shards // workers, (rank + 1) * shards // workers)


def tree_sum(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """rows[0] + ... + rows[n-1] added as a balanced binary tree over the indices: the
    order depends on n alone, never on where the rows were computed."""
    if len(rows) == 1:
        return rows[0].clone()
    middle = len(rows) // 2
    return tree_sum(rows[:middle]) + tree_sum(rows[middle:])


def shard_seed(base: int, shard: int) -> int:
    """The seed of one shard's random draws (dropout, say) in one step."""
    digest = hashlib.sha256(f"reweigh-shard:{base}:{shard}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class Workers:
    """This process's place among the data-parallel workers of one build; with one
    worker there is no process group and nothing is sent anywhere."""

    def __init__(self, count: int = 1, rank: int = 0) -> None:
        self.count, self.rank = count, rank

    @property
    def lead(self) -> bool:
        """Whether this worker writes the build's outputs (weights, checkpoints, metrics)."""
        return self.rank == 0

    def gather(self, mine: torch.Tensor, shards: int) -> list[torch.Tensor]:
        """Every shard's row, in shard order, from the rows each worker computed (`mine`:
        this worker's block, `owned(...)` rows)."""
        if self.count == 1:
            return list(mine)
        import torch
        import torch.distributed as dist

        width = -(-shards // self.count)  # the largest block: every worker sends as many
        padded = torch.zeros((width, mine.shape[1]), dtype=mine.dtype)
        padded[:len(mine)] = mine
        blocks = [torch.empty_like(padded) for _ in range(self.count)]
        dist.all_gather(blocks, padded)
        return [row for rank, block in enumerate(blocks)
                for row in block[:len(owned(shards, self.count, rank))]]


def backward(model: torch.nn.Module, loss_of: Loss, batches: Sequence[Any],
             workers: Workers) -> float:
    """Set `model`'s gradients to the fixed-order sum of the shard gradients of
    `batches` (one per shard) and its floating-point buffers to their fixed-order mean;
    return the fixed-order sum of the shard losses."""
    import torch

    shards = len(batches)
    params = [p for p in model.parameters() if p.requires_grad]
    buffers = [b for b in model.buffers()]
    start = [b.detach().clone() for b in buffers]
    base = int(torch.randint(0, 2**62, (1,)))  # drawn on every worker alike
    rows = []
    for shard in owned(shards, workers.count, workers.rank):
        with torch.no_grad():
            for buffer, value in zip(buffers, start, strict=True):
                buffer.copy_(value)
        for p in params:
            p.grad = None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(shard_seed(base, shard))
            loss = loss_of(batches[shard])
            loss.backward()
        rows.append(_row(loss, params, buffers))
    width = 1 + sum(p.numel() for p in params) + sum(_numel(b) for b in buffers)
    mine = torch.stack(rows) if rows else torch.zeros((0, width), dtype=_dtype(params))
    total = tree_sum(workers.gather(mine, shards))
    _unpack(total, shards, params, buffers)
    return float(total[0])


def _row(loss: torch.Tensor, params: Sequence[torch.Tensor],
         buffers: Sequence[torch.Tensor]) -> torch.Tensor:
    """One shard's loss, gradients and floating-point buffers as one flat row."""
    import torch

    dtype = _dtype(params)
    parts = [loss.detach().reshape(1).to(dtype)]
    parts += [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
              for p in params]
    parts += [b.detach().reshape(-1).to(dtype) for b in buffers if b.is_floating_point()]
    return torch.cat(parts)


def _unpack(total: torch.Tensor, shards: int, params: Sequence[torch.Tensor],
            buffers: Sequence[torch.Tensor]) -> None:
    at = 1
    for p in params:
        p.grad = total[at:at + p.numel()].view_as(p).clone()
        at += p.numel()
    import torch

    with torch.no_grad():  # integer buffers (a count of batches) are alike in every shard
        for b in buffers:
            if b.is_floating_point():
                b.copy_((total[at:at + b.numel()] / shards).view_as(b))
                at += b.numel()


def _numel(buffer: torch.Tensor) -> int:
    return buffer.numel() if buffer.is_floating_point() else 0


def _dtype(params: Sequence[torch.Tensor]) -> torch.dtype:
    kinds = {p.dtype for p in params}
    if len(kinds) != 1:
        raise TypeError(f"ctx.backward_shards: the parameters must share one dtype, not "
                        f"{sorted(map(str, kinds))}")
    return kinds.pop()
