"""Derivations: what changes the hash and what does not."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import rfc8785

from reweigh import build
from reweigh.derivation import (
    FORMAT,
    Derivation,
    code_files,
    derive,
    digest_of,
    hash_code,
    read_record,
)
from reweigh.digest import canonical_json, python_sorted_json
from reweigh.errors import RecipeError, UsageError
from reweigh.inputs import resolve_inputs
from reweigh.recipe import load_recipe
from reweigh.store import Store

from .helpers import run_reweigh, write_recipe


def _derivation(recipe: Path, store: Path) -> Derivation:
    loaded = load_recipe(recipe)
    return derive(loaded, resolve_inputs(loaded, Store(store)), hash_code(code_files(loaded)),
                  "x86-64-v3")


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


# --- the format: RFC 8785 from /2 on, the old form kept for /1 records ---------------------

def test_the_digest_is_the_sha256_of_the_record_in_rfc_8785(recipe: Path, tmp_path: Path) -> None:
    drv = _derivation(recipe, tmp_path / "store")
    assert drv.record["format"] == FORMAT == "reweigh.derivation/2"
    assert drv.canonical() == rfc8785.dumps(drv.record)
    assert drv.digest == "sha256:" + hashlib.sha256(rfc8785.dumps(drv.record)).hexdigest()


@pytest.mark.parametrize(("params", "floats"), [
    ("lr = 2", []), ("lr = 2.0", ["/lr"]), ("lr = 2.5", []), ("big = 1e21", ["/big"]),
    ("layers = [8, 4.0]\nopt = { m = 1.0, n = 3 }", ["/layers/1", "/opt/m"]),
], ids=["int", "whole-float", "float", "huge-float", "nested"])
def test_the_record_says_which_params_are_whole_floats(
        tmp_path: Path, params: str, floats: list[str]) -> None:
    drv = _derivation(write_recipe(tmp_path / "r", params=params), tmp_path / "store")
    assert drv.record["float_params"] == floats


def test_a_whole_float_and_an_integer_are_different_derivations(tmp_path: Path) -> None:
    """JCS writes 2.0 as 2, but the training code gets a float or an int: not one source."""
    one = _derivation(write_recipe(tmp_path / "a", params="lr = 2"), tmp_path / "store")
    two = _derivation(write_recipe(tmp_path / "b", params="lr = 2.0"), tmp_path / "store")
    assert canonical_json(one.record["params"]) == canonical_json(two.record["params"])
    assert one.digest != two.digest


def test_reading_a_record_back_gives_the_params_the_build_passed(tmp_path: Path) -> None:
    params = "a = 1.0\nb = [2.0, 3, 0.5]\nc = { d = -4.0, e = 5 }\nf = 1e21\ng = 1e-7"
    drv = _derivation(write_recipe(tmp_path / "r", params=params), tmp_path / "store")
    (tmp_path / "derivation.json").write_bytes(canonical_json(drv.record) + b"\n")
    back = read_record(tmp_path / "derivation.json")
    assert repr(back["params"]) == repr(drv.record["params"])  # 1.0 stays 1.0, 3 stays 3
    assert digest_of(back) == drv.digest


def test_negative_zero_is_refused_with_exit_2_and_one_line(tmp_path: Path) -> None:
    """JCS writes -0.0 as 0: the sign the training code would get cannot be kept."""
    recipe = write_recipe(tmp_path / "r", params="x = [1.0, -0.0]")
    result = run_reweigh("build", recipe, store=tmp_path / "store")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"reweigh: {recipe / 'recipe.toml'}: params.x[1]: -0.0")


def test_an_integer_canonical_json_cannot_hold_is_refused_with_exit_2_and_one_line(
        tmp_path: Path) -> None:
    """RFC 8785 takes integers within 2**53 - 1 (I-JSON); one more is refused, not rounded."""
    assert load_recipe(write_recipe(tmp_path / "ok", params=f"n = {2**53 - 1}")).params == {
        "n": 2**53 - 1}
    recipe = write_recipe(tmp_path / "r", params=f"n = -{2**53}")
    result = run_reweigh("build", recipe, store=tmp_path / "store")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"reweigh: {recipe / 'recipe.toml'}: params.n: integer "
                                    "beyond 2**53 - 1")


# A reweigh.derivation/1 record as an item built before RFC 8785 holds it; its digest was
# computed then, by the Python json.dumps form (the emoji sorts after U+FB33 there).
ZERO = "sha256:" + "0" * 64
RECORD_V1 = {
    "format": "reweigh.derivation/1", "name": "old-recipe", "version": "0.1", "seed": 7,
    "entry": "train.py:train", "evaluate": None,
    "params": {"lr": 1e-07, "alpha": 1.0, "layers": [8, 4]}, "checkpoint_every": 0,
    "inputs": {"data": {"kind": "path", "digest": ZERO}},
    "code": {"train.py": ZERO, "\ufb33.py": ZERO, "\U0001f600.py": ZERO},
}
DIGEST_V1 = "sha256:24401dcfed380008f5e84eb5e82d9d53512ab4a2f91f25bc398bcf10aaa55da9"


def test_a_version_1_record_still_recomputes_to_its_old_digest(tmp_path: Path) -> None:
    (tmp_path / "derivation.json").write_bytes(python_sorted_json(RECORD_V1) + b"\n")
    record = read_record(tmp_path / "derivation.json")
    assert record == RECORD_V1 and isinstance(record["params"]["alpha"], float)
    assert digest_of(record) == DIGEST_V1
    assert Derivation(DIGEST_V1, record).canonical() == python_sorted_json(RECORD_V1)
    assert digest_of({**RECORD_V1, "format": FORMAT}) != DIGEST_V1


@pytest.mark.parametrize(("record", "message"), [
    ({**RECORD_V1, "format": "reweigh.derivation/9"}, "format: 'reweigh.derivation/9' is not"),
    ({**RECORD_V1, "format": FORMAT, "float_params": ["/nope"]}, "float_params: '/nope'"),
    ({**RECORD_V1, "format": FORMAT, "float_params": ["/layers/2"]}, "float_params: '/layers/2'"),
    ({**RECORD_V1, "format": FORMAT, "float_params": ["/layers/-1"]}, "float_params"),
    ([1], "not a derivation record"),
], ids=["unknown-format", "missing-key", "index-past-the-end", "negative-index", "a-list"])
def test_a_derivation_record_reweigh_cannot_read_is_refused_naming_the_field(
        tmp_path: Path, record: object, message: str) -> None:
    (tmp_path / "derivation.json").write_text(json.dumps(record))
    with pytest.raises(UsageError, match=message):
        read_record(tmp_path / "derivation.json")


# Another implementation, as a rebuilder in another language would be: rfc8785 and hashlib,
# nothing from reweigh, in a fresh interpreter with another hash seed.
INDEPENDENT = """
import hashlib, json, sys
import rfc8785
with open(sys.argv[1], "rb") as handle:
    data = handle.read()
canonical = rfc8785.dumps(json.loads(data))
assert data == canonical + b"\\n", "derivation.json is not in canonical form"
print("sha256:" + hashlib.sha256(canonical).hexdigest())
"""


@pytest.mark.slow
def test_an_items_derivation_digest_is_recomputed_by_an_independent_jcs(tmp_path: Path) -> None:
    train = """
    import numpy as np

    def train(ctx):
        assert isinstance(ctx.params["alpha"], float), "the whole float arrived as an int"
        ctx.save_weights({"w": np.arange(4, dtype=np.float32) * ctx.params["alpha"]})
    """
    params = 'alpha = 1.0\ntiny = 1e-7\nbig = 1e21\nlabel = "gr\u00fc\u00dfe \U0001f600"'
    # code file names whose order differs between UTF-16 units and code points
    recipe = write_recipe(tmp_path / "r", train, params=params,
                          files={"\ufb33.py": "", "\U0001f600.py": "", "\u20ac.py": ""})
    item = build(recipe, store=Store(tmp_path / "store"), threads=1)
    recorded = item.path / "derivation.json"
    result = subprocess.run(
        [sys.executable, "-I", "-c", INDEPENDENT, str(recorded)], capture_output=True,
        text=True, cwd=tmp_path, timeout=120, check=False,
        env={**os.environ, "PYTHONHASHSEED": "4242"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == item.derivation
    assert item.path.name.startswith(item.derivation[7:39])
    assert digest_of(read_record(recorded)) == item.derivation
    assert read_record(recorded)["params"]["alpha"] == 1.0
    assert isinstance(read_record(recorded)["params"]["alpha"], float)
