"""Fixed virtual shards and data-parallel workers: the same bits whatever the number of
workers (issue 14). The pure parts in milliseconds; then real builds, in the sandbox, with
1, 2 and 3 worker processes on torch.distributed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reweigh import shards
from reweigh.shards import Workers, owned, shard_count, tree_sum

from .conftest import Examples
from .helpers import EXAMPLES, run_json, run_reweigh, store_is_empty, write_recipe


@pytest.mark.parametrize("count", range(1, 10))
def test_every_shard_is_computed_by_exactly_one_worker(count: int) -> None:
    for workers in range(1, count + 1):
        blocks = [owned(count, workers, rank) for rank in range(workers)]
        assert [s for block in blocks for s in block] == list(range(count))
        assert all(len(block) >= 1 for block in blocks)  # no worker idles when workers <= shards


def test_tree_sum_adds_in_a_balanced_tree_over_the_indices() -> None:
    # float32 addition is not associative: these four give another sum left to right
    rows = [torch.tensor([v], dtype=torch.float32) for v in (1e8, 1.0, -1e8, 1.0)]
    left_to_right = ((rows[0] + rows[1]) + rows[2]) + rows[3]
    tree = (rows[0] + rows[1]) + (rows[2] + rows[3])
    assert not torch.equal(left_to_right, tree)
    assert torch.equal(tree_sum(rows), tree)
    five = [torch.tensor([v], dtype=torch.float32) for v in (3e7, 1.0, 1.0, -3e7, 1.0)]
    assert torch.equal(tree_sum(five), (five[0] + five[1]) + (five[2] + (five[3] + five[4])))


def test_workers_summing_their_subtrees_give_the_bits_of_the_whole_tree() -> None:
    """Each worker adds its block of shards up to the largest subtrees inside it and sends
    only those; the top of the tree from everyone's subtrees must be the whole tree's sum,
    bit for bit, for every worker count (rows of wild magnitudes: any other order of
    additions gives other bits)."""
    generator = torch.Generator().manual_seed(3)
    for count in range(1, 26):
        rows = [torch.randn(64, generator=generator) * 10.0 ** (i % 9 - 4) for i in range(count)]
        reference = _halves(rows)
        assert not torch.equal(reference, sum(rows[1:], rows[0].clone())) or count < 4
        for workers in range(1, count + 1):
            known: dict[tuple[int, int], torch.Tensor] = {}
            for rank in range(workers):
                for lo, hi in shards.frontier(0, count, owned(count, workers, rank)):
                    known[lo, hi] = tree_sum(rows[lo:hi])
            total, _ = shards.subtree_sum(0, count, lambda lo, hi, known=known: (
                (known[lo, hi], False) if (lo, hi) in known else None))
            assert torch.equal(total, reference), (count, workers)
            assert sum(hi - lo for lo, hi in known) == count  # every shard in one subtree
    assert [len(shards.frontier(0, 24, owned(24, w, r))) for w in (2, 4, 8)
            for r in range(w)] == [1] * 14  # 24 shards: one row a worker sends


def _halves(rows: list[torch.Tensor]) -> torch.Tensor:
    """The fixed tree written out plainly: the sum of the halves split at n // 2."""
    if len(rows) == 1:
        return rows[0]
    return _halves(rows[:len(rows) // 2]) + _halves(rows[len(rows) // 2:])


def test_shard_seeds_differ_between_shards_and_steps() -> None:
    seeds = {shards.shard_seed(base, shard) for base in range(20) for shard in range(8)}
    assert len(seeds) == 160


@pytest.mark.parametrize("value", [0, -2, 2.5, "4", True])
def test_a_bad_shards_parameter_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match="shards"):
        shard_count({"batch_shards": value})


def test_shard_gradients_add_up_to_the_whole_batch_gradient() -> None:
    """The contract recipes rely on: each shard's loss is its share of the batch's, so the
    fixed-order sum is the whole batch's gradient (up to rounding), and the loss returned
    is the batch's loss."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    x, y = torch.randn(30, 5), torch.randint(0, 3, (30,))

    def share(part: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(model(x[part]), y[part], reduction="sum") / 30

    loss = shards.backward(model, share, torch.arange(30).tensor_split(4), Workers())
    sharded = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    whole = torch.nn.functional.cross_entropy(model(x), y)
    whole.backward()
    assert loss == pytest.approx(whole.item(), rel=1e-5)
    for got, want in zip(sharded, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_batch_norm_statistics_become_the_shards_mean() -> None:
    norm = torch.nn.BatchNorm1d(2, momentum=0.5)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), norm)
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0], [10.0, 10.0], [12.0, 14.0]])
    expected = []
    for part in (x[:2], x[2:]):  # each shard starts from the same statistics
        fresh = torch.nn.BatchNorm1d(2, momentum=0.5)
        with torch.no_grad():
            fresh(model[0](part))
        expected.append(fresh.running_mean)
    shards.backward(model, lambda part: model(part).sum(), [x[:2], x[2:]], Workers())
    torch.testing.assert_close(norm.running_mean, (expected[0] + expected[1]) / 2)
    assert int(norm.num_batches_tracked) == 1  # one step, not one per shard


# --- real builds ----------------------------------------------------------------------------

# Batch norm and dropout in one small network: both would make the bits follow the worker
# count if a shard saw another's statistics or random draws. `die_at` makes worker 1 kill
# itself (SIGKILL, as the kernel's OOM killer or a lost machine would) at that step.
BN_TRAIN = """
import os
import signal

import torch


def train(ctx):
    torch.manual_seed(ctx.seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16),
                                torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    order = torch.Generator().manual_seed(ctx.seed)
    x = torch.randn(240, 6, generator=order)
    y = (x.sum(1) > 0).long() + (x[:, 0] > 1).long()
    for step in range(1, 31):
        index = torch.randint(0, 240, (24,), generator=order)

        def share(part, size=len(index)):
            return torch.nn.functional.cross_entropy(model(x[part]), y[part],
                                                     reduction="sum") / size

        if step == ctx.params["die_at"] and ctx.rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        ctx.backward_shards(model, share, index.tensor_split(ctx.shards))
        optimizer.step()
    ctx.save_weights(model.state_dict())
"""


def bn_recipe(where: Path, die_at: int = 0) -> Path:
    return write_recipe(where, BN_TRAIN, params=f"batch_shards = 4\ndie_at = {die_at}")


@pytest.mark.slow
def test_batch_norm_and_dropout_give_one_digest_for_1_2_and_3_workers(tmp_path: Path) -> None:
    recipe = bn_recipe(tmp_path / "bn")
    builds = {}
    for workers in (None, 2, 3):
        options = () if workers is None else ("--workers", workers)
        builds[workers] = run_json("build", recipe, *options, store=tmp_path / f"s{workers}")
    assert len({b["weights_digest"] for b in builds.values()}) == 1, builds
    assert len({b["derivation"] for b in builds.values()}) == 1  # workers are not built
    item = Path(builds[3]["path"])
    internal = json.loads((item / "provenance.json").read_text())[
        "predicate"]["buildDefinition"]["internalParameters"]
    assert internal["workers"] == 3


@pytest.mark.slow
def test_sharded_digits_cnn_is_the_same_on_any_worker_count_and_verifies_on_one(
        examples: Examples, tmp_path: Path) -> None:
    """Built on the plain path (the run's shared build), rebuilt bit for bit on 3 workers
    (its 6 shards, 2 each); a verifier with one process replays its segments bit for bit.
    On 2 workers: test_cluster's build of it with a worker on a Ray head; shards split
    unevenly: the batch-norm recipe above (4 shards) on 1, 2 and 3."""
    recipe = EXAMPLES / "digits-cnn" / "sharded.toml"
    built = examples.copy("digits-cnn-sharded", tmp_path)
    check = run_json("build", recipe, "--check", "--workers", "3", store=built.store)
    assert check["check"]["identical"], check["check"]
    assert check["reused"] and check["path"] == str(built.item)
    verified = run_json("verify", built.item, "--transcript", built.item / "transcript.json",
                        "--spot", "1", "--largest", "0", store=built.store)
    assert verified["verdict"] == "holds", verified


@pytest.mark.slow
def test_a_killed_worker_fails_the_build_in_one_line_and_keeps_nothing(tmp_path: Path) -> None:
    store = tmp_path / "store"
    result = run_reweigh("build", bn_recipe(tmp_path / "bn", die_at=10), "--workers", "2",
                         store=store)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "data-parallel worker 1 of 2 was killed by signal 9" in last, last
    assert store_is_empty(store)
    assert not any((store / "tmp").iterdir())  # no half-written build left behind


@pytest.mark.parametrize(("option", "env"), [(("--workers", "0"), {}),
                                             ((), {"REWEIGH_WORKERS": "many"})])
def test_a_bad_worker_count_is_exit_2_in_one_line(tmp_path: Path, option: tuple[str, ...],
                                                  env: dict[str, str]) -> None:
    recipe = write_recipe(tmp_path / "r")
    result = run_reweigh("build", recipe, *option, store=tmp_path / "store", env=env)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "worker" in result.stderr or "--workers" in result.stderr
