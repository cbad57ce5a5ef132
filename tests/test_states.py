"""states: training states compared place by place, on small checkpoints written here (fast).

verify leans on these for what it measures before any replay (each segment's update) and
for what it says when a replay fails; the slow tests in test_verify see them only through
digits-cnn.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from reweigh import states
from reweigh.weights import read_header, save_state, save_tensors


def _state(path: Path, w: list[float], *, step: object = 1, extra: bool = False) -> Path:
    """A checkpoint whose model has `fc.weight` = w and an int64 counter beside it."""
    model = {"fc.weight": np.array(w, dtype=np.float32)}
    if extra:
        model["fc.bias"] = np.zeros(1, dtype=np.float32)
    save_state({"step": step, "counter": np.array([7]), "model": model}, path)
    return path


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "weights.safetensors"
    save_tensors({"fc.weight": np.zeros(2, dtype=np.float32)}, path)
    return path


def test_an_update_is_the_largest_relative_l2_of_the_weights_named_like_the_verified_ones(
        tmp_path: Path, weights: Path) -> None:
    points = [_state(tmp_path / f"{i}.safetensors", w)
              for i, w in enumerate(([3, 4], [3, 4], [6, 8]))]
    assert states.updates(points, read_header(weights)) == [0.0, pytest.approx(1.0)]


def test_without_a_tensor_named_like_the_verified_ones_every_float_tensor_counts(
        tmp_path: Path, weights: Path) -> None:
    """And an update is infinite when one appears or changes shape."""
    save_tensors({"other.weight": np.zeros(2, dtype=np.float32)}, weights)
    a = _state(tmp_path / "a.safetensors", [3, 4])
    grown = _state(tmp_path / "grown.safetensors", [3, 4, 0])
    biased = _state(tmp_path / "biased.safetensors", [3, 4], extra=True)
    moved = _state(tmp_path / "moved.safetensors", [6, 8], extra=True)
    assert states.updates([a, grown, a, biased, moved], read_header(weights)) == [
        math.inf, math.inf, math.inf, pytest.approx(1.0)]


def test_the_difference_names_the_tensor_by_place_and_values_that_differ_in_type(
        tmp_path: Path) -> None:
    a = _state(tmp_path / "a.safetensors", [3, 4], step=1)
    b = _state(tmp_path / "b.safetensors", [6, 8], step=1.0)  # equal in Python, not in a state
    found = states.difference(a, b)
    assert (found.tensors, found.of, found.largest) == (1, 2, "state.model.fc.weight")
    assert found.rel_l2 == pytest.approx(1.0) and found.max_abs == pytest.approx(4.0)
    assert found.values == ("state.step",)
    assert found.describe().startswith("1 of 2 tensors differ, most state.model.fc.weight")


def test_a_tensor_at_a_place_the_other_state_lacks_differs_without_bound(
        tmp_path: Path) -> None:
    a = _state(tmp_path / "a.safetensors", [3, 4])
    b = _state(tmp_path / "b.safetensors", [3, 4], extra=True)
    found = states.difference(a, b)
    assert found.largest == "state.model.fc.bias" and found.rel_l2 == math.inf


def test_drift_is_the_worst_relative_l2_and_infinite_when_the_structure_differs(
        tmp_path: Path) -> None:
    a = _state(tmp_path / "a.safetensors", [3, 4])
    assert states.drift(a, _state(tmp_path / "b.safetensors", [6, 8])) == pytest.approx(1.0)
    assert states.drift(a, _state(tmp_path / "c.safetensors", [3, 4], extra=True)) == math.inf
