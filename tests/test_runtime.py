"""What the recipe's code meets inside the build process (`runtime`): metrics as logged,
an evaluation's contract, and `ctx.resume_into`. Each test builds a small real recipe
with the real command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from reweigh.provenance import environment_of

from .helpers import run_json, run_reweigh, store_is_empty, write_recipe

pytestmark = pytest.mark.slow  # every test here builds

EVALUATE = '[evaluate]\nentry = "train.py:evaluate"'

METRICS = """
import numpy as np

def train(ctx):
    for epoch in range(3):
        ctx.log_metric("games", 50 + epoch)          # no step: 0, 1, 2
    ctx.log_metric("loss", 0.5, step=10)
    ctx.log_metric("loss", np.float32(0.25))         # the step after 10
    ctx.log_metric("kept", np.int64(7), step=4)
    ctx.save_weights({"w": np.zeros(2, dtype=np.float32)})

def evaluate(ctx):
    return {"metrics": {"correct": 53, "accuracy": 0.5}, "predictions": [1, 0]}
"""


def test_metrics_keep_integers_and_number_the_steps_not_given(tmp_path: Path) -> None:
    built = run_json("build", write_recipe(tmp_path / "r", METRICS, extra=EVALUATE),
                     store=tmp_path / "store")
    metrics = json.loads((Path(built["path"]) / "metrics.json").read_text())
    assert [(m["name"], m["value"], m["step"]) for m in metrics["history"]] == [
        ("games", 50, 0), ("games", 51, 1), ("games", 52, 2), ("loss", 0.5, 10),
        ("loss", 0.25, 11), ("kept", 7, 4)]
    assert metrics["training"] == {"games": 52, "loss": 0.25, "kept": 7}
    assert metrics["evaluation"] == {"correct": 53, "accuracy": 0.5}
    assert all(type(m["value"]) is int for m in metrics["history"] if m["name"] != "loss")
    assert type(metrics["evaluation"]["correct"]) is int


def test_an_evaluation_without_predictions_is_the_recipe_s_mistake_exit_2(
        tmp_path: Path) -> None:
    train = METRICS.replace(', "predictions": [1, 0]', "")
    store = tmp_path / "store"
    result = run_reweigh("build", write_recipe(tmp_path / "r", train, extra=EVALUATE),
                         store=store)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("reweigh: building test-recipe failed: train.py:evaluate returned "
                           "no 'predictions' list"), line
    assert store_is_empty(store)


RESUMING = """
import torch

def train(ctx):
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    order = torch.Generator().manual_seed(ctx.seed)
    first = ctx.resume_into(model, optimizer, order, scheduler=scheduler).get("step", 0) + 1
    for step in range(first, 7):
        x = torch.randn(4, 3, generator=order)  # (B, 3)
        noise = torch.rand(4, 1)  # torch's global generator: restored too
        loss = ((model(x) - noise) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        ctx.checkpoint(step, ctx.training_state(model, optimizer, order, scheduler=scheduler,
                                                step=step), final=step == 6)
    ctx.save_weights(model.state_dict())
"""


def test_resume_into_restores_what_training_state_saved_so_every_segment_replays(
        tmp_path: Path) -> None:
    store = tmp_path / "store"
    recipe = write_recipe(tmp_path / "r", RESUMING, build="checkpoint_every = 1")
    item = run_json("build", recipe, "--threads", "1", store=store)["path"]
    result = run_reweigh("verify", item, "--transcript", Path(item) / "transcript.json",
                         "--spot", "100%", "--threads", "1", "--json", store=store)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["holds"] and len(report["segments"]) == 6, report


def test_resume_into_a_checkpoint_not_written_by_training_state_says_so(
        tmp_path: Path) -> None:
    store = tmp_path / "store"
    train = RESUMING.replace("ctx.training_state(model, optimizer, order, scheduler=scheduler,"
                             "\n                                                step=step)",
                             "{'model': model.state_dict(), 'step': step}")
    assert train != RESUMING
    recipe = write_recipe(tmp_path / "r", train, build="checkpoint_every = 1")
    item = run_json("build", recipe, "--threads", "1", store=store)["path"]
    result = run_reweigh("verify", item, "--transcript", Path(item) / "transcript.json",
                         "--spot", "100%", "--threads", "1", store=store)
    assert result.returncode == 1
    assert "the checkpoint holds no optimizer, torch_rng, generator, scheduler; write it " \
           "with ctx.checkpoint(step, ctx.training_state(...))" in result.stderr


NUMPY_ONLY = """
import sys

import numpy as np


def train(ctx):
    ctx.log_metric("torch_loaded", int("torch" in sys.modules))
    ctx.save_weights({"w": np.arange(6, dtype=np.float64).reshape(2, 3), "n": np.arange(3)})
"""

LATE_TORCH = """
import importlib.util
import sys


def train(ctx):
    assert importlib.util.find_spec("torch") is not None  # asked, as libraries ask, not loaded
    loaded_before = "torch" in sys.modules
    import torch  # this process's first import of torch: pinned as it loads

    ctx.log_metric("loaded_before", int(loaded_before))
    ctx.log_metric("deterministic", int(torch.are_deterministic_algorithms_enabled()))
    ctx.log_metric("threads", torch.get_num_threads())
    ctx.log_metric("seed", torch.initial_seed())
    ctx.log_metric("compile_stack_loaded", int("torch._dynamo.eval_frame" in sys.modules))
    import torch._inductor.config as inductor  # torch.compile's: pinned as it loads too

    ctx.log_metric("inductor_deterministic", int(inductor.deterministic))
    ctx.save_weights({"w": torch.randn(4, 4)})
"""


def _platform(item: Path) -> dict:
    provenance = json.loads((item / "provenance.json").read_text())
    return environment_of(provenance)["platform"]


def test_a_numpy_recipe_never_loads_torch_and_its_record_says_so(tmp_path: Path) -> None:
    """torch loads only when recipe code imports it: a numpy recipe's build does not pay
    its start-up, and its platform record does not claim torch's kernels or BLAS. A
    rebuild here still gives the same bits, and `platform` finds the item's platform."""
    store = tmp_path / "store"
    recipe = write_recipe(tmp_path / "r", NUMPY_ONLY)
    built = run_json("build", recipe, "--check", store=store)
    assert built["check"]["identical"] is True, built["check"]
    item = Path(built["path"])
    assert json.loads((item / "metrics.json").read_text())["training"] == {"torch_loaded": 0}
    platform = _platform(item)
    assert platform["capability"] == "not loaded"
    assert platform["blas"]["torch"] == "not loaded"
    assert platform["digest"] == built["platform_digest"]
    matched = run_reweigh("platform", item, "--json", store=store)
    assert matched.returncode == 0, matched.stdout + matched.stderr
    report = json.loads(matched.stdout)
    assert report["item"]["matches"] and report["platform"]["capability"] != "not loaded"
    with safe_open(item / "weights.safetensors", "np") as weights:
        assert weights.get_tensor("w").tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
        assert weights.get_tensor("n").dtype == np.int64


def test_torch_imported_late_is_pinned_and_seeded_as_it_loads(tmp_path: Path) -> None:
    """A recipe that imports torch in the middle of its training gets the build's torch:
    deterministic algorithms, the build's thread count, the recipe's seed (its first draw
    is the one a fresh torch seeded so gives), and a record naming torch's kernels; the
    pins do not load torch.compile's stack, and its deterministic mode is set when the
    recipe loads it.

    One build, no --check: the seed is checked against a fresh torch's first draw, and a
    rebuild's result was never asserted here (it cost a second torch start-up, 3 s)."""
    import torch

    store = tmp_path / "store"
    built = run_json("build", write_recipe(tmp_path / "r", LATE_TORCH), store=store)
    item = Path(built["path"])
    training = json.loads((item / "metrics.json").read_text())["training"]
    assert training == {"loaded_before": 0, "deterministic": 1, "threads": 1, "seed": 1,
                        "compile_stack_loaded": 0, "inductor_deterministic": 1}
    assert _platform(item)["capability"] not in ("not loaded", "")
    with safe_open(item / "weights.safetensors", "pt") as weights:
        first_draw = torch.randn(4, 4, generator=torch.Generator().manual_seed(1))
        assert torch.equal(weights.get_tensor("w"), first_draw)


def test_a_recipe_that_ends_the_process_itself_keeps_nothing(tmp_path: Path) -> None:
    """os._exit(0) after save_weights would skip the runtime's own checks and the
    environment record it takes after training: the build fails, and nothing is kept."""
    exits = NUMPY_ONLY.replace('    ctx.log_metric("torch_loaded"', '    import os\n'
                               '    ctx.log_metric("torch_loaded"') + "    os._exit(0)\n"
    _refused(tmp_path, exits, "the build process ended before reweigh's runtime had finished")


def _refused(tmp_path: Path, train: str, says: str, name: str = "r") -> None:
    """Building `train` fails (exit 1) saying `says`, and nothing enters the store."""
    store = tmp_path / "store"
    result = run_reweigh("build", write_recipe(tmp_path / name, train), store=store)
    assert result.returncode == 1, result.stderr
    assert says in result.stderr, result.stderr
    assert store_is_empty(store)


def test_torch_loaded_around_the_pins_fails_the_build(tmp_path: Path) -> None:
    """A recipe that takes reweigh's import hook away loads a torch without the build's
    pins (deterministic algorithms, threads, seed): the build fails, keeping nothing."""
    around = """
import sys


def train(ctx):
    sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__module__.startswith("reweigh")]
    import torch

    ctx.save_weights({"w": torch.ones(2)})
"""
    _refused(tmp_path, around, "torch was loaded around reweigh's import hook")


def test_a_numerics_setting_changed_by_the_recipe_fails_the_build(tmp_path: Path) -> None:
    """torch's libraries read the platform's settings as torch loads, which is after the
    recipe's code has started: a recipe that changes one (MKL_CBWR here) before it
    imports torch fails, keeping nothing; so does one that changes it and never does."""
    for name, importing in (("late", "import torch\n    "), ("never", "")):
        changes = f"""
import os


def train(ctx):
    os.environ["MKL_CBWR"] = "AUTO"
    {importing}ctx.save_weights({{"w": __import__("numpy").ones(2)}})
"""
        _refused(tmp_path, changes, "the recipe's code changed MKL_CBWR", name)


def test_a_process_set_up_again_and_again_wraps_nothing_twice() -> None:
    """A Ray worker process is set up for each build whose tasks it runs: each set-up
    wrapped torch's functions again (set_num_threads held for MKL, backward on one thread),
    and a long-lived cluster's workers ended in a RecursionError. Set up 2000 times here,
    alternating thread counts, torch still works and each function is wrapped once."""
    script = """
import os
import sys

import torch

from reweigh import environment, onload

for threads in (1, 2) * 1000:  # two last: backward wrapped to run on one
    environment.apply_torch_numerics(threads)
x = torch.ones(3, requires_grad=True)
(x * 2).sum().backward()
torch.set_num_threads(2)
print(hasattr(torch.autograd.backward._reweigh_original, "_reweigh_original"),
      hasattr(torch.set_num_threads._reweigh_original, "_reweigh_original"),
      sum(isinstance(f, onload._AfterLoad) for f in sys.meta_path), x.grad.tolist())
del os.environ["MKL_CBWR"]  # set up again without MKL's held count: torch's own again
environment.apply_torch_numerics(1)
print(hasattr(torch.set_num_threads, "_reweigh_original"))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, "MKL_CBWR": "COMPATIBLE"}, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False", "False", "1", "[2.0,", "2.0,", "2.0]", "False"]
