"""torch._dynamo in recipe processes (reweigh.dynamo): an optimizer trains without it
loading, with the bits it gives when it has loaded; compiling loads it and works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reweigh import build
from reweigh.store import Store

from .helpers import ROOT, write_recipe

# Adam on a small network; `real_first` loads the real torch._dynamo before training (a
# submodule's import does), `compile` compiles the loss (dynamo only: the eager backend
# needs no C compiler) halfway. The metric says whether the real module had loaded.
TRAIN = """
import importlib
import sys

import torch


def train(ctx):
    if ctx.params["real_first"]:
        importlib.import_module("torch._dynamo.eval_frame")
    torch.manual_seed(ctx.seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(7)

    def loss(x):
        return model(x).square().mean()

    for step in range(40):
        if step == 20 and ctx.params["compile"]:
            loss = torch.compile(loss, backend="eager")
        optimizer.zero_grad()
        loss(torch.randn(16, 6, generator=g)).backward()
        optimizer.step()
    ctx.log_metric("dynamo_loaded", int("torch._dynamo.eval_frame" in sys.modules))
    ctx.save_weights(model.state_dict())
"""

pytestmark = pytest.mark.slow


def _built(tmp_path: Path, real_first: bool, compile: bool) -> tuple[str, int]:
    name = f"r{int(real_first)}{int(compile)}"
    recipe = write_recipe(tmp_path / name, TRAIN, params=f"real_first = {str(real_first).lower()}"
                          f"\ncompile = {str(compile).lower()}")
    item = build(recipe, store=Store(tmp_path / "store"), threads=1)
    metrics = json.loads((item.path / "metrics.json").read_text())
    return item.weights_digest, metrics["training"]["dynamo_loaded"]


def test_an_optimizer_trains_without_torch_compile_loading_and_gives_the_same_bits(
        tmp_path: Path) -> None:
    waited, loaded = _built(tmp_path, False, False), _built(tmp_path, True, False)
    assert waited[1] == 0 and loaded[1] == 1
    assert waited[0] == loaded[0]


def test_a_recipe_that_compiles_loads_torch_compile_and_gives_the_same_bits(
        tmp_path: Path) -> None:
    waited, loaded = _built(tmp_path, False, True), _built(tmp_path, True, True)
    assert waited[1] == loaded[1] == 1
    assert waited[0] == loaded[0]


STAND_IN = """
import sys, torch
from reweigh import dynamo
dynamo.install()
import torch._dynamo
assert not dynamo.loaded() and torch._dynamo is sys.modules["torch._dynamo"]
calls = []
def step(x):
    calls.append(x)
    return x + 1
disabled = torch._dynamo.disable(step, wrapping=False)
assert torch._dynamo.graph_break() is None and disabled(1) == 2 and disabled.real is None
assert getattr(torch._dynamo, "__file__", None) is None and not dynamo.loaded()
before = len(sys.modules)
assert {name: getattr(module, "__file__", None) for name, module in list(sys.modules.items())}
assert len(sys.modules) == before and not dynamo.loaded()  # introspection loads nothing
ASK
assert dynamo.loaded() and torch._dynamo is sys.modules["torch._dynamo"]
assert disabled(2) == 3 and disabled.real is not None and calls == [1, 2]
print("ok")
"""


def test_the_stand_in_answers_for_the_real_module_once_asked_anything_else() -> None:
    """Asked for a submodule (its import asks for __path__) and then an attribute; an
    attribute asked first, and torch.compile: the compiling recipe above."""
    ask = "__import__('torch._dynamo.config'); torch._dynamo.config.suppress_errors"
    result = subprocess.run([sys.executable, "-c", STAND_IN.replace("ASK", ask)],
                            capture_output=True, text=True, check=False, timeout=300,
                            env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
