"""Shared fixtures: a fresh store per test."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


# --- session-wide builds for the audit tests (diff, report): each trains once -------------

@pytest.fixture(scope="session")
def digits_cnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A clean build of examples/digits-cnn: (store, item). One thread: on a busy two-core
    machine, two threads spin against each other; the weights are the same either way."""
    from reweigh import build
    from reweigh.store import Store

    from .helpers import EXAMPLES

    store = tmp_path_factory.mktemp("digits-cnn") / "store"
    return store, build(EXAMPLES / "digits-cnn", store=Store(store), threads=1).path


@pytest.fixture(scope="session")
def backdoor_diff(digits_cnn: tuple[Path, Path],
                  tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`reweigh diff` of the clean digits-cnn against a copy with a planted trigger (fc1 only
    fine-tuned, patch -> class 3), run once through the real command with --report."""
    import json

    import torch

    from . import backdoor
    from .helpers import EXAMPLES, run_reweigh

    store, item = digits_cnn
    folder = tmp_path_factory.mktemp("backdoor")
    suspect = folder / "published.safetensors"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny network: on a busy machine more threads only spin
    try:
        planted = backdoor.plant(item / "weights.safetensors", suspect, target=3,
                                 layers=("fc1.",))
    finally:
        torch.set_num_threads(threads)
    report = folder / "report.html"
    result = run_reweigh("diff", item, suspect, "--recipe", EXAMPLES / "digits-cnn", "--json",
                         "--report", report, "--threads", 1, store=store)
    assert result.returncode in (0, 1), result.stderr
    return {"planted": planted, "code": result.returncode, "report": json.loads(result.stdout),
            "html": report, "suspect": suspect}
