"""Test helpers: the real command, small recipes written on the fly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from . import forkserver

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

MINIMAL_TRAIN = """
import numpy as np

def train(ctx):
    ctx.save_weights({"w": np.arange(4, dtype=np.float32) * ctx.params.get("scale", 1.0)})
"""


def variant(example: str, where: Path, old: str, new: str,
            *more: tuple[str, str]) -> Path:
    """A copy of examples/EXAMPLE at `where` whose recipe.toml says `new` for `old`, and
    so on for each further (old, new) pair (each old must be there once, so that a change
    to the example cannot make the variant the same)."""
    shutil.copytree(EXAMPLES / example, where, ignore=shutil.ignore_patterns("__pycache__"))
    toml = where / "recipe.toml"
    text = toml.read_text()
    for before, after in ((old, new), *more):
        assert text.count(before) == 1, f"examples/{example}/recipe.toml: no single {before!r}"
        text = text.replace(before, after)
    toml.write_text(text)
    return where


def run_reweigh(*args: object, store: Path | None = None, timeout: float = 600,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `reweigh` command line: a process of its own, forked from one that
    has loaded reweigh (`tests.forkserver`), or a fresh interpreter where a fork could
    not be one (another PYTHONPATH, say)."""
    argv = [*map(str, args), *(["--store", str(store)] if store is not None else [])]
    command = [sys.executable, "-m", "reweigh.cli.main", *argv]
    environment = {**os.environ, **(env or {})}
    if forkserver.server().takes(environment):
        return forkserver.server().run(command, argv, environment, timeout)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=environment, check=False)


def run_json(*args: object, store: Path) -> dict:
    result = run_reweigh(*args, "--json", store=store)
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


def write_recipe(directory: Path, train: str = MINIMAL_TRAIN, *, params: str = "",
                 inputs: str = "", build: str = "", extra: str = "",
                 files: dict[str, str] | None = None) -> Path:
    """A small real recipe: recipe.toml, train.py and any extra files."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train.py").write_text(textwrap.dedent(train))
    for name, text in (files or {}).items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)
    (directory / "recipe.toml").write_text(textwrap.dedent(f"""\
        name = "test-recipe"
        version = "0.1"
        seed = 1

        [license]
        code = "MIT"
        data = "CC0-1.0"
        weights = "CC0-1.0"

        [build]
        entry = "train.py:train"
        {build}

        [params]
        {params}

        {inputs}
        {extra}
        """))
    return directory


def store_is_empty(store: Path) -> bool:
    """No item and no input was written (the directories may exist, empty)."""
    return not any(any((store / sub).iterdir()) for sub in ("items", "inputs")
                   if (store / sub).exists())
