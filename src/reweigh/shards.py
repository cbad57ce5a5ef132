"""Fixed virtual shards: the same bits whatever the number of workers.

A recipe splits each step's batch into a fixed number of shards (its `batch_shards`
parameter, part of the derivation). Each shard's forward and backward runs as it would
alone: from the same parameters, the same buffers and a random generator seeded for that
shard. The shard gradients are then added in one fixed order, a balanced binary tree over
the shard indices, that does not depend on which worker computed which shard. One
process holding every shard, two, three or eight data-parallel workers (torch.distributed
on gloo) give the same sums, so the same weights.

Plain data parallelism (DDP's all-reduce) adds gradients in an order that follows the
number of workers and the ring's buckets: the bits change with the world size. Here the
tree fixes the order, and the work follows it: each worker holds a contiguous block of
shards, adds them up to the largest subtrees of the fixed tree that lie inside its block
(computing shards in index order, so only a path of partial sums is alive), and sends only
those subtree sums; every worker then adds the top of the tree from everyone's subtrees.
With 24 shards on 2, 4 or 8 workers each block is one subtree, so a worker sends one row
of the size of the gradients (DDP's ring all-reduce moves about two); on 3 workers, at
most three. What is left of the fixed order's price is that each shard's backward runs on
its own, smaller batch. bench/workers.py measures both against DDP.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: after the numerics are pinned
    import torch

Loss = Callable[[Any], "torch.Tensor"]


def shard_count(params: Mapping[str, Any]) -> int:
    """A recipe's shards per step: its `batch_shards` parameter, 1 without one."""
    count = params.get("batch_shards", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"the recipe's `batch_shards` parameter must be a positive integer, "
                         f"not {count!r}")
    return count


def worker_count(workers: int, params: Mapping[str, Any]) -> int:
    """How many data-parallel workers a build with `workers` asked runs: no more than the
    recipe has shards (one for a recipe without them)."""
    return min(workers, shard_count(params))


def owned(shards: int, workers: int, rank: int) -> range:
    """The contiguous block of shard indices that worker `rank` of `workers` computes."""
    return range(rank * shards // workers, (rank + 1) * shards // workers)


def tree_sum(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """rows[0] + ... + rows[n-1] added as a balanced binary tree over the indices (the
    node over lo..hi-1 is the sum of its halves, split at lo + (hi - lo) // 2): the order
    depends on n alone, never on where the rows were computed."""
    if len(rows) == 1:
        return rows[0].clone()
    return subtree_sum(0, len(rows), lambda lo, hi: (rows[lo], False) if hi - lo == 1
                       else None)[0]


Known = Callable[[int, int], "tuple[torch.Tensor, bool] | None"]


def subtree_sum(lo: int, hi: int, known: Known) -> tuple[torch.Tensor, bool]:
    """The fixed tree's node over shards lo..hi-1: `known(lo, hi)` where it gives the
    node's sum (a shard's row, another worker's subtree), else the sum of its two halves,
    left + right, the left one first. Returns the sum and whether it is a tensor nobody
    else holds, which the next addition may then write into (`a.add_(b)` gives the bits
    of `a + b`)."""
    given = known(lo, hi)
    if given is not None:
        return given
    if hi - lo <= 1:
        raise ValueError(f"no value for shard {lo}")
    middle = lo + (hi - lo) // 2
    left, own = subtree_sum(lo, middle, known)
    right, _ = subtree_sum(middle, hi, known)
    return (left.add_(right), True) if own else (left + right, True)


def frontier(lo: int, hi: int, block: range) -> list[tuple[int, int]]:
    """The largest nodes of the fixed tree over lo..hi-1 that lie wholly inside `block`,
    left to right: what a worker holding `block` sums up alone."""
    if block.start <= lo and hi <= block.stop:
        return [(lo, hi)]
    if hi <= block.start or block.stop <= lo:
        return []
    middle = lo + (hi - lo) // 2
    return frontier(lo, middle, block) + frontier(middle, hi, block)


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

    def nodes(self, shards: int, rank: int) -> list[tuple[int, int]]:
        """The subtrees worker `rank` sums up alone: those its block of shards covers."""
        return frontier(0, shards, owned(shards, self.count, rank))

    def gather(self, mine: Sequence[torch.Tensor], shards: int,
               width: int, dtype: torch.dtype) -> dict[tuple[int, int], torch.Tensor]:
        """Every worker's subtree sums by node, from the sums this worker computed
        (`mine`: one row of `width` for each of `self.nodes(shards, self.rank)`)."""
        if self.count == 1:
            return dict(zip(self.nodes(shards, 0), mine, strict=True))
        import torch
        import torch.distributed as dist

        nodes = [self.nodes(shards, rank) for rank in range(self.count)]
        most = max(len(n) for n in nodes)  # every worker sends as many rows
        padded = torch.zeros((most, width), dtype=dtype)
        for row, part in enumerate(mine):
            padded[row] = part
        blocks = [torch.empty_like(padded) for _ in range(self.count)]
        dist.all_gather(blocks, padded)
        return {node: block[row] for block, its in zip(blocks, nodes, strict=True)
                for row, node in enumerate(its)}


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

    def shard_row(lo: int, hi: int) -> tuple[torch.Tensor, bool] | None:
        """A shard's loss, gradients and buffers as one fresh row, computed when the
        tree reaches it: shards run in index order."""
        if hi - lo != 1:
            return None
        with torch.no_grad():
            for buffer, value in zip(buffers, start, strict=True):
                buffer.copy_(value)
        for p in params:
            p.grad = None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(shard_seed(base, lo))
            loss = loss_of(batches[lo])
            loss.backward()
        return _row(loss, params, buffers), True

    mine = [subtree_sum(lo, hi, shard_row)[0] for lo, hi in workers.nodes(shards, workers.rank)]
    width = 1 + sum(p.numel() for p in params) + sum(_numel(b) for b in buffers)
    known = workers.gather(mine, shards, width, _dtype(params))
    total, _ = subtree_sum(0, shards, lambda lo, hi: (known[lo, hi], True)
                           if (lo, hi) in known else None)
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
    for p in params:  # views of the sum, which nothing else holds
        p.grad = total[at:at + p.numel()].view_as(p)
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
