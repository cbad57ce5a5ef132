"""`reweigh estimate`: time the first seconds of the real build, extrapolate to the whole.

The estimates of examples/digits-cnn and of connect4-zero's smoke variant are compared
with the run's shared real builds of them, in CPU time (a shared machine's load changes
from one minute to the next, and wall-clock time with it; see
_estimate_against_a_real_build).
Small recipes written on the fly check the FLOP count, the Guix budget and that nothing
of an estimate run enters the store.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path

import pytest

from reweigh import estimate, sandbox
from reweigh.policy.estimate import (
    DEFAULT_MAX_CORE_HOURS,
    Bound,
    CostEstimate,
    Observation,
    Sample,
    extrapolate,
)
from reweigh.store import Store

from .conftest import Built, Examples
from .helpers import EXAMPLES, run_reweigh, store_is_empty, write_recipe

STEPS_TRAIN = """
import time

import torch


def train(ctx):
    w = torch.ones(128, 32)
    x = torch.ones(64, 128)
    total = ctx.params["steps"]
    for step in range(1, total + 1):
        y = x @ w  # (64, 32): 2 * 64 * 128 * 32 FLOPs
        time.sleep(ctx.params["sleep"])
        ctx.progress(step, total)
    ctx.save_weights({"w": w + y.mean()})
"""
MATMUL_FLOPS = 2 * 64 * 128 * 32

# The same steps without torch, for the tests that are not about counting FLOPs: a recipe
# that imports torch costs its estimate a second of start-up (and the counted step more).
STEPS_NUMPY = """
import time

import numpy as np


def train(ctx):
    total = ctx.params["steps"]
    for step in range(1, total + 1):
        time.sleep(ctx.params["sleep"])
        ctx.progress(step, total)
    ctx.save_weights({"w": np.ones(2, dtype=np.float32)})
"""


def steps_recipe(directory: Path, steps: int, sleep: float, train: str = STEPS_TRAIN) -> Path:
    recipe = write_recipe(directory, train, params=f"steps = {steps}\nsleep = {sleep}")
    toml = recipe / "recipe.toml"
    toml.write_text(toml.read_text().replace('data = "CC0-1.0"', 'data = "NONE"'))
    return recipe


def _cpu_seconds(*who: int) -> float:
    """CPU seconds (user + system) of this process and/or of the children it has waited
    for: resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN."""
    return sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, who))


def _estimate_against_a_real_build(recipe: Path, built: Built, tmp_path: Path, seconds: float
                                   ) -> tuple[CostEstimate, float, float]:
    """The estimate of `recipe` on one thread, and the CPU time of its real build on one
    thread (the run's shared build of it, which measured itself): (the estimate, the
    estimate in CPU seconds, the build's CPU seconds).

    CPU time, not wall-clock time: the latter depends on the machine's load, which on a
    shared machine changes from one minute to the next (a build timed at load 6 and an
    estimate at load 2 gave a ratio of 0.38). The estimate runs unsandboxed, so that its
    process is this one's child and its CPU time is counted (a sandboxed child is reaped
    by bubblewrap, whose namespace hides it); its wall-clock answer becomes CPU seconds
    by the share of a core its own run got (its child's CPU time over the time it ran),
    which is the load it saw. The real build's CPU time is what its own process measured
    (the attempt's `cpu_seconds`): its training and its evaluation."""
    store = Store(tmp_path / "store")
    children = _cpu_seconds(resource.RUSAGE_CHILDREN)
    cost = estimate(recipe, store=store, threads=1, seconds=seconds).estimate
    share = (_cpu_seconds(resource.RUSAGE_CHILDREN) - children) / cost.observed_seconds
    assert cost.wall_seconds is not None and share > 0
    (attempt,) = Store(built.store).attempts()
    real = attempt["cpu_seconds"]
    assert attempt["status"] == "built" and attempt["threads"] == 1 and real > 0
    print(f"\n{recipe}: estimate {cost.wall_seconds:.2f} s wall at {share:.2f} of a core "
          f"({cost.bound.value}, {cost.measured_steps} steps timed, start-up "
          f"{cost.startup_seconds} s); real build {real:.2f} s CPU; "
          f"ratio in CPU {cost.wall_seconds * share / real:.2f}")
    assert not store.items()  # the estimate added no item
    return cost, cost.wall_seconds * share, real


@pytest.mark.slow
def test_the_estimate_of_digits_cnn_is_within_a_factor_of_two_of_its_real_build(
        examples: Examples, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sandbox.ENV_CHOICE, "none")
    cost, guess, real = _estimate_against_a_real_build(
        EXAMPLES / "digits-cnn", examples.built("digits-cnn"), tmp_path, 2.0)
    assert cost.bound in (Bound.EXTRAPOLATED, Bound.MEASURED)
    assert cost.total_steps == 345
    assert 0.5 <= guess / real <= 2.0
    assert cost.flops is not None and "FlopCounterMode" in cost.flops_how


@pytest.mark.slow
def test_the_estimate_of_connect4_zero_smoke_is_within_a_factor_of_two_of_its_real_build(
        examples: Examples, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Self-play reports progress twice a generation (after self-play, after training):
    the estimate times the first generations and extrapolates to the rest."""
    monkeypatch.setenv(sandbox.ENV_CHOICE, "none")
    cost, guess, real = _estimate_against_a_real_build(
        EXAMPLES / "connect4-zero" / "smoke.toml", examples.built("connect4-zero-smoke"),
        tmp_path, 1.0)
    assert cost.bound is Bound.EXTRAPOLATED, cost.note
    assert cost.total_steps == 8 and cost.measured_steps < 8
    assert 0.5 <= guess / real <= 2.0


@pytest.mark.slow
def test_flops_are_counted_with_flop_counter_mode_over_one_step(tmp_path: Path) -> None:
    recipe = steps_recipe(tmp_path / "r", steps=400, sleep=0.01)
    result = run_reweigh("estimate", recipe, "--json", "--seconds", "0.5", "--threads", "1",
                         store=tmp_path / "store")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["bound"] == "extrapolated"
    assert report["flops"] == MATMUL_FLOPS * 400
    assert report["flops_method"].startswith("counted: torch.utils.flop_counter.FlopCounterMode")
    assert 0.005 < report["seconds_per_step"] < 0.1
    assert report["core_hours"] == pytest.approx(report["wall_seconds"] / 3600)
    assert report["reference_machine"]["cores"] == 8
    assert report["max_core_hours"] == DEFAULT_MAX_CORE_HOURS == 7 * 24 * 8
    assert report["within_threshold"] is True


LINGERING_TRAIN = """
import os
import time


def train(ctx):
    if os.fork() == 0:  # a process of the build that writes on after the runtime is stopped
        end = time.monotonic() + 2
        while time.monotonic() < end:
            (ctx.out / f"late-{time.monotonic_ns()}").write_text("x")
        os._exit(0)
    for step in range(1, 10001):
        time.sleep(0.01)
        ctx.progress(step, 10000)
"""


@pytest.mark.slow
def test_an_estimate_removes_its_folder_after_the_builds_last_process_ends(
        tmp_path: Path) -> None:
    """The estimate stops the build after its first seconds and removes the folder it
    wrote in; a process of the build still writing there made that removal fail with
    "Directory not empty" (exit 70, seen from `check`, whose cost is an estimate). It
    now waits for every process of the build to end first. Unisolated, so that the
    writer outlives the stopped runtime for two seconds (a sandbox's die with it).

    Nothing of the estimate run enters the store either: no item, no input, no attempt
    (this run once was a test of its own, of a torch recipe whose estimate cost 2.5 s;
    its text report is read here)."""
    recipe = write_recipe(tmp_path / "r", LINGERING_TRAIN)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    store = tmp_path / "store"
    result = run_reweigh("estimate", recipe, "--seconds", "0.3", "--sandbox", "none",
                         store=store, env={"TMPDIR": str(scratch)})
    assert result.returncode == 0, result.stderr
    assert "extrapolated" in result.stdout and "Guix budget        within" in result.stdout
    assert list(scratch.iterdir()) == []
    assert store_is_empty(store)
    assert Store(store).attempts() == []


@pytest.mark.slow
def test_a_recipe_that_would_train_for_years_exceeds_the_guix_budget(tmp_path: Path) -> None:
    recipe = steps_recipe(tmp_path / "r", steps=10**9, sleep=0.05, train=STEPS_NUMPY)
    result = run_reweigh("check", recipe, "--policy", "guix", "--json", "--estimate-seconds",
                         "0.5", "--threads", "1", store=tmp_path / "store")
    assert result.returncode == 1, result.stderr
    guix = json.loads(result.stdout)["policies"][0]
    assert guix["verdict"] == "not packageable"
    cost = next(e for e in guix["evidence"] if e["component"] == "recompute cost")
    assert cost["status"] == "too costly"
    assert "estimated:" in cost["text"] and "> limit 1344 core-hours" in cost["text"]
    assert guix["reasons"] == [f"recompute cost: too costly: {cost['text']}"]


@pytest.mark.slow
def test_the_budget_is_the_users_to_set(tmp_path: Path) -> None:
    recipe = steps_recipe(tmp_path / "r", steps=100, sleep=0.01, train=STEPS_NUMPY)
    result = run_reweigh("check", recipe, "--policy", "guix", "--json", "--max-core-hours",
                         "1e-7", store=tmp_path / "store")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["max_core_hours"] == 1e-7
    assert report["policies"][0]["verdict"] == "not packageable"


@pytest.mark.parametrize("args", [["--seconds", "0"], ["--seconds", "nan"],
                                  ["--max-core-hours", "-1"]])
def test_bad_options_exit_2(tmp_path: Path, args: list[str]) -> None:
    recipe = steps_recipe(tmp_path / "r", steps=10, sleep=0.0)
    result = run_reweigh("estimate", recipe, *args, store=tmp_path / "store")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_a_missing_recipe_exits_2_naming_the_file(tmp_path: Path) -> None:
    result = run_reweigh("estimate", tmp_path / "none", store=tmp_path / "store")
    assert result.returncode == 2
    assert "recipe.toml: (file): no recipe.toml here" in result.stderr


# --- extrapolation is arithmetic on the observation ---------------------------------------


def test_a_finished_run_is_measured_not_extrapolated() -> None:
    seen = Observation(started=0.0, ended=4.0, finished=True, threads=2,
                       samples=(Sample(3.0, 1, 1),))
    cost = extrapolate(seen)
    assert cost.bound is Bound.MEASURED and cost.wall_seconds == 4.0
    assert cost.core_hours == pytest.approx(8.0 / 3600)


def test_start_up_is_measured_once_and_steps_are_extrapolated() -> None:
    samples = tuple(Sample(2.0 + 0.5 * i, i + 1, 101) for i in range(5))
    cost = extrapolate(Observation(0.0, 4.5, False, 1, samples))
    assert cost.bound is Bound.EXTRAPOLATED
    assert cost.startup_seconds == 2.0 and cost.seconds_per_step == pytest.approx(0.5)
    assert cost.wall_seconds == pytest.approx(2.0 + 100 * 0.5)


def test_the_clock_starts_after_the_slow_flop_counted_step() -> None:
    samples = (Sample(2.0, 1, 11), Sample(7.0, 2, 11), Sample(8.0, 3, 11), Sample(9.0, 4, 11))
    cost = extrapolate(Observation(0.0, 9.0, False, 1, samples, flops=100.0, flop_units=1))
    assert cost.seconds_per_step == pytest.approx(1.0)  # not (9 - 2) / 3
    assert cost.flops == pytest.approx(100.0 * 11)


def test_no_progress_at_all_gives_a_lower_bound() -> None:
    cost = extrapolate(Observation(0.0, 130.0, False, 2, ()))
    assert cost.bound is Bound.LOWER_BOUND and cost.wall_seconds == 130.0
    assert "no progress" in cost.note


def test_one_step_that_never_ends_gives_a_lower_bound_per_step() -> None:
    cost = extrapolate(Observation(0.0, 30.0, False, 1, (Sample(10.0, 1, 1001),)))
    assert cost.bound is Bound.LOWER_BOUND
    assert cost.wall_seconds == pytest.approx(10.0 + 1000 * 20.0)


def test_flops_fall_back_to_a_stated_heuristic_without_torch_operations() -> None:
    cost = extrapolate(Observation(0.0, 10.0, True, 2, (Sample(9.0, 1, 1),)))
    assert cost.flops == pytest.approx(10.0 * 2 * 1e10)
    assert cost.flops_how.startswith("heuristic: core-seconds")
