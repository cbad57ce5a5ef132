"""Derivations: what changes the hash and what does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from reweigh.derivation import Derivation, code_files, derive, hash_code
from reweigh.errors import RecipeError
from reweigh.inputs import resolve_inputs
from reweigh.recipe import load_recipe
from reweigh.store import Store

from .helpers import write_recipe


def _derivation(recipe: Path, store: Path) -> Derivation:
    loaded = load_recipe(recipe)
    return derive(loaded, resolve_inputs(loaded, Store(store)), hash_code(code_files(loaded)))


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    return write_recipe(tmp_path / "r", params="lr = 0.001\nlayers = [8, 4]",
                        inputs='[inputs.data]\npath = "data.csv"',
                        files={"data.csv": "1,2\n", "model.py": "WIDTH = 8\n",
                               "README.md": "notes"})


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


@pytest.mark.parametrize("change", [
    ("recipe.toml", "lr = 0.001", "lr = 0.002"),
    ("recipe.toml", "seed = 1", "seed = 2"),
    ("recipe.toml", "layers = [8, 4]", "layers = [4, 8]"),
    ("recipe.toml", 'version = "0.1"', 'version = "0.2"'),
    ("model.py", "WIDTH = 8", "WIDTH = 9"),
    ("train.py", "def train", "# a comment changes the code\ndef train"),
    ("data.csv", "1,2", "1,3"),
], ids=["parameter", "seed", "list-order", "version", "imported-code", "entry-code", "input"])
def test_a_change_that_can_change_the_weights_changes_the_derivation(
        recipe: Path, tmp_path: Path, change: tuple[str, str, str]) -> None:
    before = _derivation(recipe, tmp_path / "store")
    _edit(recipe / change[0], change[1], change[2])
    assert _derivation(recipe, tmp_path / "store").digest != before.digest


@pytest.mark.parametrize("change", [
    ("recipe.toml", "lr = 0.001", "lr = 1e-3"),
    ("recipe.toml", "lr = 0.001", "lr     =    0.001   # learning rate"),
    ("recipe.toml", 'code = "MIT"', 'code = "Apache-2.0"'),
    ("README.md", "notes", "other notes"),
], ids=["number-spelling", "whitespace-and-comment", "licence", "readme"])
def test_a_change_that_cannot_change_the_weights_keeps_the_derivation(
        recipe: Path, tmp_path: Path, change: tuple[str, str, str]) -> None:
    before = _derivation(recipe, tmp_path / "store")
    _edit(recipe / change[0], change[1], change[2])
    assert _derivation(recipe, tmp_path / "store").digest == before.digest


def test_reordering_tables_in_the_toml_keeps_the_derivation(recipe: Path,
                                                            tmp_path: Path) -> None:
    before = _derivation(recipe, tmp_path / "store")
    text = (recipe / "recipe.toml").read_text()
    tables = text.split("\n[")
    reordered = tables[0] + "".join("\n[" + t for t in reversed(tables[1:]))
    (recipe / "recipe.toml").write_text(reordered)
    assert load_recipe(recipe).params == {"lr": 0.001, "layers": [8, 4]}
    assert _derivation(recipe, tmp_path / "store").digest == before.digest


def test_the_derivation_is_a_pure_function_of_its_record(recipe: Path, tmp_path: Path) -> None:
    one = _derivation(recipe, tmp_path / "a")
    two = _derivation(recipe, tmp_path / "b")
    assert one == two
    assert one.item_name.endswith("-test-recipe-0.1") and len(one.item_name.split("-")[0]) == 32


def test_an_entry_file_outside_the_code_patterns_is_refused(recipe: Path) -> None:
    _edit(recipe / "recipe.toml", 'entry = "train.py:train"',
          'entry = "train.py:train"\ncode = ["model.py"]')
    with pytest.raises(RecipeError, match=r"build\.entry: train\.py is not among the code files"):
        code_files(load_recipe(recipe))


def test_an_audit_file_outside_the_code_patterns_is_refused(recipe: Path) -> None:
    """`reweigh diff` runs evaluate.audit in the build's sandbox: it must be hashed code."""
    (recipe / "evaluate.py").write_text("def evaluate(ctx): ...\ndef audit(ctx): ...\n")
    (recipe / "audit.py").write_text("def audit(ctx): ...\n")
    _edit(recipe / "recipe.toml", 'entry = "train.py:train"',
          'entry = "train.py:train"\ncode = ["train.py", "evaluate.py"]')
    (recipe / "recipe.toml").write_text((recipe / "recipe.toml").read_text() + (
        '\n[evaluate]\nentry = "evaluate.py:evaluate"\naudit = "audit.py:audit"\n'))
    with pytest.raises(RecipeError,
                       match=r"evaluate\.audit: audit\.py is not among the code files"):
        code_files(load_recipe(recipe))
