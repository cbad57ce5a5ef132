"""recipe.toml: the examples parse, bad recipes are refused in one line, the parser is fuzzed.

The refusals run the real command (`reweigh build DIR --store STORE`) in a child process:
exit code 2, one line on stderr naming the file and the field, no traceback, and nothing
in the store. The fuzzing holds `parse_recipe` and the shipped JSON Schema to the same
verdicts, so that the schema other tools read never drifts from the parser.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import functools
import math
import subprocess
import sys
import tomllib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reweigh.errors import RecipeError
from reweigh.recipe import Recipe, load_recipe, parse_recipe
from reweigh.schema import recipe_schema

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p.parent for p in (ROOT / "examples").glob("*/recipe.toml"))
FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

MINIMAL = """\
name = "tiny"
version = "0.1.0"
seed = 1

[license]
code = "MIT"
data = "CC0-1.0"
weights = "CC0-1.0"

[inputs.data]
path = "data.txt"

[build]
entry = "train.py:train"

[params]
lr = 0.1
"""
TRAIN = """\
import numpy


def train(ctx):
    ctx.save_weights({"w": numpy.zeros(2, dtype=numpy.float32)})
"""


def write_minimal(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "recipe.toml").write_text(MINIMAL)
    (directory / "train.py").write_text(TRAIN)
    (directory / "data.txt").write_text("1 2 3\n")
    return directory


@functools.cache
def reweigh_command() -> list[str]:
    """`python -m reweigh.cli.main` runs the CLI (main.py ends in `if __name__ ==
    "__main__"`); the installed `reweigh` script beside the interpreter is the fallback."""
    probe = subprocess.run([sys.executable, "-m", "reweigh.cli.main", "--version"],
                           capture_output=True, text=True, check=False)
    if probe.returncode == 0 and probe.stdout.startswith("reweigh"):
        return [sys.executable, "-m", "reweigh.cli.main"]
    return [str(Path(sys.executable).with_name("reweigh"))]


def run_build(recipe: Path, store: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*reweigh_command(), "build", str(recipe), "--store", str(store)],
                          capture_output=True, text=True, check=False, timeout=300)


# --- the examples ----------------------------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_each_example_recipe_parses(example: Path) -> None:
    recipe = load_recipe(example)
    assert recipe.name == example.name
    assert recipe.evaluate is not None


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_each_example_recipe_validates_against_the_json_schema(example: Path) -> None:
    data = tomllib.loads((example / "recipe.toml").read_text())
    jsonschema.Draft202012Validator(recipe_schema()).validate(data)


def test_the_json_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = recipe_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_the_minimal_recipe_that_the_refusals_start_from_parses_and_validates(
        tmp_path: Path) -> None:
    recipe = load_recipe(write_minimal(tmp_path / "tiny"))
    assert (recipe.name, recipe.inputs[0].source) == ("tiny", "data.txt")
    jsonschema.Draft202012Validator(recipe_schema()).validate(tomllib.loads(MINIMAL))


# --- bad recipes, through the real command ---------------------------------------------

Edit = Callable[[Path], None]


def sub(old: str, new: str) -> Edit:
    """Replace one piece of recipe.toml (which must be there)."""
    def edit(directory: Path) -> None:
        file = directory / "recipe.toml"
        text = file.read_text()
        assert old in text, old
        file.write_text(text.replace(old, new, 1))
    return edit


def top(line: str) -> Edit:
    """Add a top-level key (before the first table)."""
    return sub('seed = 1\n', f'seed = 1\n{line}\n')


def both(first: Edit, second: Edit) -> Edit:
    def edit(directory: Path) -> None:
        first(directory)
        second(directory)
    return edit


def append(text: str) -> Edit:
    def edit(directory: Path) -> None:
        with open(directory / "recipe.toml", "a") as handle:
            handle.write(text)
    return edit


def input_as(text: str) -> Edit:
    return sub('[inputs.data]\npath = "data.txt"\n', f"[inputs.data]\n{text}\n")


def link_data_outside(directory: Path) -> None:
    outside = directory.parent / f"{directory.name}-secret.txt"
    outside.write_text("not yours\n")
    (directory / "data.txt").unlink()
    (directory / "data.txt").symlink_to(outside)


def folder_with_link_outside(directory: Path) -> None:
    outside = directory.parent / f"{directory.name}-secret.txt"
    outside.write_text("not yours\n")
    (directory / "data").mkdir()
    (directory / "data" / "ok.txt").write_text("1\n")
    (directory / "data" / "secret.txt").symlink_to(outside)
    sub('path = "data.txt"', 'path = "data"')(directory)


def code_link_outside(directory: Path) -> None:
    outside = directory.parent / f"{directory.name}-helper.py"
    outside.write_text("X = 1\n")
    (directory / "helper.py").symlink_to(outside)


def write_bytes(data: bytes) -> Edit:
    def edit(directory: Path) -> None:
        (directory / "recipe.toml").write_bytes(data)
    return edit


def remove_recipe_file(directory: Path) -> None:
    (directory / "recipe.toml").unlink()


LICENSE = '[license]\ncode = "MIT"\ndata = "CC0-1.0"\nweights = "CC0-1.0"\n'
ZERO = "sha256:" + "0" * 64
EVALUATE = '\n[evaluate]\nentry = "train.py:train"\n\n[evaluate.tolerance]\n'

# Run through the real command: every kind of refusal, and all that only resolving or
# planning finds. (id, what to break, the field the one line must name)
BAD: list[tuple[str, Edit, str]] = [
    ("missing-name", sub('name = "tiny"\n', ""), "name"),
    ("missing-version", sub('version = "0.1.0"\n', ""), "version"),
    ("missing-seed", sub("seed = 1\n", ""), "seed"),
    ("missing-license", sub(LICENSE, ""), "license"),
    ("missing-build-entry", sub('entry = "train.py:train"\n', ""), "build.entry"),
    ("seed-is-a-string", sub("seed = 1", 'seed = "x"'), "seed"),
    ("seed-is-2**40", sub("seed = 1", f"seed = {2**40}"), "seed"),
    ("params-is-a-string", both(sub("[params]\nlr = 0.1\n", ""), top('params = "lr=0.1"')),
     "params"),
    ("license-code-is-a-number", sub('code = "MIT"', "code = 3"), "license.code"),
    ("param-is-2**60", sub("lr = 0.1", f"lr = {2**60}"), "params.lr"),
    ("integer-of-5000-digits", sub("lr = 0.1", "lr = " + "9" * 5000), "(syntax)"),
    ("arrays-nested-100000-deep", sub("lr = 0.1", "lr = " + "[" * 100_000), "(syntax)"),
    ("tolerance-above-1", append(EVALUATE + "agreement = 1.5\n"),
     "evaluate.tolerance.agreement"),
    ("tolerance-of-10**400", append(EVALUATE + f"metric_delta = {10**400}\n"),
     "evaluate.tolerance.metric_delta"),
    ("name-with-a-trailing-newline", sub('name = "tiny"', 'name = "tiny\\n"'), "name"),
    ("path-input-leaves-the-recipe-directory", input_as('path = "../data.txt"'),
     "inputs.data.path"),
    ("path-input-is-absolute", input_as('path = "/etc/passwd"'), "inputs.data.path"),
    ("build-entry-leaves-the-recipe-directory", sub('"train.py:train"', '"../train.py:train"'),
     "build.entry"),
    ("build-entry-is-absolute", sub('"train.py:train"', '"/tmp/train.py:train"'),
     "build.entry"),
    ("build-entry-not-among-the-code-files", sub('"train.py:train"', '"other.py:train"'),
     "build.entry"),
    ("build-code-leaves-the-recipe-directory",
     sub('entry = "train.py:train"\n', 'entry = "train.py:train"\ncode = ["*.py", "../*.py"]\n'),
     "build.code[1]"),
    ("build-code-file-links-outside", code_link_outside, "build.code"),
    ("package-resource-leaves-the-package",
     input_as('package = "scikit-learn"\nresource = "../../etc/passwd"'),
     "inputs.data.resource"),
    ("unknown-top-level-field", top('colour = "blue"'), "colour"),
    ("unknown-build-field", sub('entry = "train.py:train"\n',
                                'entry = "train.py:train"\nthreads = 4\n'), "build.threads"),
    ("unknown-input-kind", input_as('git = "https://example.org/data.git"'),
     "inputs.data.git"),
    ("input-with-two-kinds", input_as('path = "data.txt"\nitem = "base"'), "inputs.data"),
    ("url-input-without-a-digest", input_as('url = "https://example.org/data.csv"'),
     "inputs.data.digest"),
    ("digest-is-not-sha256-hex", input_as('path = "data.txt"\ndigest = "sha256:XYZ"'),
     "inputs.data.digest"),
    # found only when the inputs are resolved (reweigh.inputs), still before anything is kept
    ("unknown-package-data-set", input_as('package = "scikit-learn"\ndataset = "mnist"'),
     "inputs.data.dataset"),
    ("package-resource-not-in-the-package",
     input_as('package = "scikit-learn"\nresource = "sklearn/no/such.csv"'),
     "inputs.data.resource"),
    ("package-not-installed", input_as('package = "reweigh-no-such-package"\ndataset = "x"'),
     "inputs.data.package"),
    ("path-input-does-not-exist", input_as('path = "missing.txt"'), "inputs.data.path"),
    ("pinned-digest-does-not-match", input_as(f'path = "data.txt"\ndigest = "{ZERO}"'),
     "inputs.data"),
    ("path-input-is-a-link-outside", link_data_outside, "inputs.data.path"),
    ("folder-input-holds-a-link-outside", folder_with_link_outside, "inputs.data.path"),
    # the file itself
    ("invalid-toml-syntax", sub('seed = 1', 'seed = = 1'), "(syntax)"),
    ("not-utf-8", write_bytes(MINIMAL.replace("tiny", "t\xefny").encode("latin-1")), "(file)"),
    ("no-recipe-file", remove_recipe_file, "(file)"),
]

# More of the parser's refusals, checked in-process: each child process costs a
# fresh interpreter, and these take the same path through the CLI as their kin above.
MORE_BAD: list[tuple[str, Edit, str]] = [
    ("missing-license-weights", sub('weights = "CC0-1.0"\n', ""), "license.weights"),
    ("seed-is-a-float", sub("seed = 1", "seed = 1.0"), "seed"),
    ("seed-is-negative", sub("seed = 1", "seed = -1"), "seed"),
    ("license-is-not-spdx", sub('code = "MIT"', 'code = "MIT; rm -rf /"'), "license.code"),
    ("param-is-infinite", sub("lr = 0.1", "lr = inf"), "params.lr"),
    ("param-is-nan", sub("lr = 0.1", "lr = nan"), "params.lr"),
    ("param-is-a-date", sub("lr = 0.1", "lr = 1979-05-27"), "params.lr"),
    ("params-nested-too-deep", append("a = [[[[[1]]]]]\n"), "params.a"),
    ("param-name-with-a-dot-in-quotes", append('"a.b" = 1\n'), "params.a.b"),
    ("evaluate-without-entry", append('\n[evaluate.tolerance]\nagreement = 0.5\n'),
     "evaluate.entry"),
    ("name-with-capitals", sub('name = "tiny"', 'name = "Tiny"'), "name"),
    ("version-with-a-space", sub('version = "0.1.0"', 'version = "0.1 beta"'), "version"),
    ("path-input-leaves-through-a-middle-dot-dot", input_as('path = "a/../../data.txt"'),
     "inputs.data.path"),
    ("path-input-starts-with-a-tilde", input_as('path = "~/data.txt"'), "inputs.data.path"),
    ("path-input-with-a-backslash", input_as('path = "..\\\\data.txt"'), "inputs.data.path"),
    ("build-entry-without-a-function", sub('"train.py:train"', '"train.py"'), "build.entry"),
    ("build-entry-function-with-a-newline", sub('"train.py:train"', '"train.py:train\\n"'),
     "build.entry"),
    ("build-code-is-absolute", sub('entry = "train.py:train"\n',
                                   'entry = "train.py:train"\ncode = ["/*.py"]\n'),
     "build.code[0]"),
    ("build-code-is-empty", sub('entry = "train.py:train"\n',
                                'entry = "train.py:train"\ncode = []\n'), "build.code"),
    ("input-without-a-kind", input_as(f'digest = "{ZERO}"'), "inputs.data"),
    ("input-is-not-a-table",
     sub('[inputs.data]\npath = "data.txt"\n', '[inputs]\ndata = "data.txt"\n'), "inputs.data"),
    ("dataset-on-a-path-input", input_as('path = "data.txt"\ndataset = "digits"'),
     "inputs.data"),
    ("url-input-with-another-scheme",
     input_as(f'url = "file:///etc/passwd"\ndigest = "{ZERO}"'), "inputs.data.url"),
    ("digest-is-md5", input_as('path = "data.txt"\ndigest = "md5:' + "0" * 32 + '"'),
     "inputs.data.digest"),
    ("digest-in-capitals", input_as(f'path = "data.txt"\ndigest = "{ZERO.upper()}"'),
     "inputs.data.digest"),
    ("digest-with-a-trailing-newline", input_as(f'path = "data.txt"\ndigest = "{ZERO}\\n"'),
     "inputs.data.digest"),
    ("package-with-both-dataset-and-resource",
     input_as('package = "scikit-learn"\ndataset = "digits"\nresource = "x.csv"'),
     "inputs.data"),
    ("duplicate-key", sub('seed = 1', 'seed = 1\nseed = 2'), "(syntax)"),
]


def second_input_with_a_wrong_digest(directory: Path) -> None:
    (directory / "other.txt").write_text("4 5 6\n")
    sub("[build]", f'[inputs.other]\npath = "other.txt"\ndigest = "{ZERO}"\n\n[build]')(directory)


def unchanged(directory: Path) -> None:
    pass


Run = tuple[Path, Path, subprocess.CompletedProcess[str]]  # recipe.toml, store, the result


def _run_case(root: Path, case_id: str, edit: Edit) -> Run:
    directory = write_minimal(root / case_id / "recipe")
    edit(directory)
    store = root / case_id / "store"
    return directory / "recipe.toml", store, run_build(directory, store)


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Future[Run]]:
    """Every command of this section, started at once: each child is a fresh interpreter,
    and one after another they would take most of this file's time."""
    root = tmp_path_factory.mktemp("cli").resolve()
    cases = [(case_id, edit) for case_id, edit, _ in BAD]
    cases += [("minimal", unchanged), ("second-input", second_input_with_a_wrong_digest)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        return {case_id: pool.submit(_run_case, root, case_id, edit) for case_id, edit in cases}


def _store_is_empty(store: Path) -> bool:
    return all(not (store / sub).exists() or not any((store / sub).iterdir())
               for sub in ("items", "inputs", "tmp"))


@pytest.mark.parametrize(("case_id", "edit", "field"), [
    pytest.param(*case, id=case[0]) for case in BAD])
def test_a_bad_recipe_is_refused_before_anything_runs_naming_file_and_field(
        tmp_path: Path, case_id: str, edit: Edit, field: str) -> None:
    """The cases below, planned in this process as `reweigh build` plans them before it
    starts anything: the quick tier's form of the command's test (a process per case)."""
    from reweigh.errors import ReweighError
    from reweigh.store import Store
    from reweigh.verbs.build import plan

    directory = write_minimal(tmp_path / case_id)
    edit(directory)
    store = tmp_path / "store"
    with pytest.raises(ReweighError) as caught:
        plan(directory, Store(store))
    line = caught.value.one_line()
    assert caught.value.exit_code == 2 and "\n" not in line
    assert line.startswith(f"{directory / 'recipe.toml'}: {field}"), line
    assert _store_is_empty(store), sorted(p.name for p in store.rglob("*"))


@pytest.mark.slow  # a process per case, and the minimal recipe's build
@pytest.mark.parametrize(("case_id", "field"), [
    pytest.param(c, f, id=c) for c, _, f in BAD])
def test_a_bad_recipe_is_refused_with_exit_2_and_one_line_naming_file_and_field(
        cli_runs: dict[str, Future[Run]], case_id: str, field: str) -> None:
    recipe_file, store, result = cli_runs[case_id].result()
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and result.stderr.endswith("\n"), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert lines[0].startswith(f"reweigh: {recipe_file}: {field}"), lines[0]
    assert _store_is_empty(store), sorted(p.name for p in store.rglob("*"))


@pytest.mark.parametrize(("case_id", "edit", "field"),
                         [pytest.param(*case, id=case[0]) for case in MORE_BAD])
def test_more_bad_recipes_are_refused_in_one_line_naming_file_and_field(
        tmp_path: Path, case_id: str, edit: Edit, field: str) -> None:
    directory = write_minimal(tmp_path / case_id)
    edit(directory)
    with pytest.raises(RecipeError) as caught:
        load_recipe(directory)
    line = caught.value.one_line()
    assert line.startswith(f"{directory / 'recipe.toml'}: {field}"), line
    assert "\n" not in line


@pytest.mark.slow
def test_the_minimal_recipe_builds_with_the_same_command(
        cli_runs: dict[str, Future[Run]]) -> None:
    """The refusals above are refusals of their one change, not of the starting point."""
    _, store, result = cli_runs["minimal"].result()
    assert result.returncode == 0, result.stderr
    assert len(list((store / "items").iterdir())) == 1


# --- messages that point at the fix ------------------------------------------------------


def test_a_misspelt_field_is_refused_with_the_nearest_known_one(tmp_path: Path) -> None:
    directory = write_minimal(tmp_path / "r")
    sub("seed = 1\n", "sead = 1\n")(directory)
    result = run_build(directory, tmp_path / "store")
    assert result.returncode == 2, result.stderr
    assert result.stderr == (f"reweigh: {directory / 'recipe.toml'}: sead: unknown field "
                             "(did you mean 'seed'?)\n")


@pytest.mark.parametrize(("edit", "field", "nearest"), [
    (sub("[build]\n", "[build]\ncheckpoint_evry = 2\n"), "build.checkpoint_evry",
     "checkpoint_every"),
    (input_as('path = "data.txt"\ndigets = "x"'), "inputs.data.digets", "digest"),
    (append("[evaluate]\nentry = 'train.py:train'\naudt = 'train.py:train'\n"),
     "evaluate.audt", "audit"),
    (sub("[license]\n", "[licence]\n"), "licence", "license"),
])
def test_each_table_suggests_its_own_nearest_field(tmp_path: Path, edit: Edit, field: str,
                                                   nearest: str) -> None:
    directory = write_minimal(tmp_path / "r")
    edit(directory)
    with pytest.raises(RecipeError) as caught:
        load_recipe(directory)
    assert caught.value.reason == f"unknown field (did you mean '{nearest}'?)"
    assert caught.value.field == field


def test_a_field_like_no_known_one_suggests_nothing(tmp_path: Path) -> None:
    directory = write_minimal(tmp_path / "r")
    top("colour = 'blue'")(directory)
    with pytest.raises(RecipeError) as caught:
        load_recipe(directory)
    assert (caught.value.field, caught.value.reason) == ("colour", "unknown field")


@pytest.mark.slow  # reads the command runs above
def test_a_bad_second_input_leaves_no_item_and_keeps_nothing_unverified(
        cli_runs: dict[str, Future[Run]]) -> None:
    """Inputs resolve in order; one that verified before a later one failed stays cached
    under inputs/ (content-addressed, like a source Guix fetched before a build failed),
    but no item appears and the failing input's content is never kept."""
    _, store, result = cli_runs["second-input"].result()
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "inputs.other" in result.stderr and "digest mismatch" in result.stderr
    assert not any((store / "items").iterdir())
    kept = [p.name for p in (store / "inputs").rglob("*") if p.is_file()]
    assert "other.txt" not in kept


# --- fuzzing parse_recipe and the schema together ----------------------------------------

VALID: dict[str, Any] = {
    "name": "fuzz",
    "version": "1.0.0",
    "description": "every field in use",
    "seed": 42,
    "license": {"code": "GPL-3.0-or-later", "data": "CC-BY-4.0", "weights": "CC0-1.0"},
    "inputs": {
        "local": {"path": "data/train.csv", "digest": ZERO},
        "bundled": {"package": "scikit-learn", "dataset": "digits"},
        "inside": {"package": "scikit-learn", "resource": "sklearn/datasets/data/iris.csv"},
        "remote": {"url": "https://example.org/data.csv", "digest": ZERO},
        "base": {"item": "digits-cnn"},
        "catalogues": {"debian": "iso-codes", "version": "1:4.15.0-1", "architecture": "all",
                       "digest": ZERO, "files": ["usr/share/locale/de/*/*.mo"]},
    },
    "build": {"entry": "train.py:train", "code": ["*.py", "lib/*.py"], "checkpoint_every": 5},
    "params": {"lr": 0.001, "epochs": 3, "layers": [16, 32], "flag": True, "mode": "fast",
               "nested": {"a": {"b": [1, 2.5]}}},
    "evaluate": {"entry": "evaluate.py:evaluate", "audit": "evaluate.py:audit",
                 "probes": "probes.txt",
                 "tolerance": {"weights_rel_l2": 0.001, "agreement": 1, "metric": "accuracy",
                               "metric_delta": 0.0}},
}

# Values one edit away from valid (or just past a limit), which random text rarely hits.
EDGE_VALUES = [
    "", " ", "x" * 10_001, "a\x00b", "a\n", "tiny\n", "Tiny", "1.0.0", "1.0.0\n", "MIT", "MIT\n",
    "../x", "a/../b", "a/..", "..", "...", "./x", "/abs", "//x", "~/x", "a\\b", "data.txt",
    "train.py:train", "train.py:train\n", "../train.py:train", "/train.py:train",
    "a/../t.py:f", "t.py:", ":f", "t.py:1f", "scikit-learn", "digits", "mnist", "-pkg",
    "http://example.org/x", "https://example.org/x\n", "https:// x", "ftp://example.org/x",
    "https://a\x00b", "iso-codes", "4.15.0-1", "1:2.39-1", "a:1", "all", "AMD64",
    ZERO, ZERO + "\n", ZERO.upper(), ZERO[:-1], "sha256:", "md5:00",
    0, 1, -1, 2, 0.0, -0.0, 0.5, 1.0, 1.5, -0.5, 7.0, 1e-3, 1e20, 1e308,
    2**32 - 1, 2**32, 10**9, 10**9 + 1, 2**53, 2**53 + 1, -(2**53), -(2**53) - 1, 2**63 - 1,
    10**400, math.inf, -math.inf, True, False, [], {}, [[[[[]]]]], {"a": {"b": {"c": {"d": 1}}}},
    datetime.date(1979, 5, 27), datetime.datetime(1979, 5, 27, 7, 32),
]
KEYS = sorted({*VALID, "entry", "code", "checkpoint_every", "path", "package", "url", "item",
               "dataset", "resource", "digest", "debian", "architecture", "files",
               "tolerance", "weights_rel_l2", "agreement",
               "metric", "metric_delta", "audit", "probes", "data", "weights", "a\n", "a.b",
               "_x", "9a", "x" * 64, "x" * 65})


ANY_KEY = st.one_of(st.sampled_from(KEYS), st.text(max_size=8))


def _values(allow_nan: bool) -> st.SearchStrategy[Any]:
    """TOML's values: strings, integers, floats, booleans, dates and times, arrays, tables."""
    scalars = st.one_of(
        st.sampled_from(EDGE_VALUES), st.text(max_size=12), st.integers(),
        st.floats(allow_nan=allow_nan), st.booleans(), st.datetimes(), st.dates(), st.times())
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_KEY, inner, max_size=4),
        max_leaves=12)


VALUES = {True: _values(allow_nan=True), False: _values(allow_nan=False)}


def random_tables(allow_nan: bool) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(ANY_KEY, VALUES[allow_nan], max_size=10)


def _children(node: dict[Any, Any] | list[Any]) -> list[Any]:
    pairs = node.items() if isinstance(node, dict) else enumerate(node)
    return [k for k, v in pairs if isinstance(v, dict | list) and v]


@st.composite
def mutated_recipes(draw: st.DrawFn, allow_nan: bool = False) -> dict[str, Any]:
    """The valid recipe with one to three edits: drop a key, replace a value, add a key."""
    recipe = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        node: Any = recipe
        while _children(node) and draw(st.booleans()):
            node = node[draw(st.sampled_from(_children(node)))]
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        action = draw(st.sampled_from(["drop", "replace", "add"]))
        if action == "drop" and keys:
            del node[draw(st.sampled_from(keys))]
        elif action == "replace" and keys:
            node[draw(st.sampled_from(keys))] = draw(VALUES[allow_nan])
        elif isinstance(node, dict):
            node[draw(ANY_KEY)] = draw(VALUES[allow_nan])
        else:
            node.append(draw(VALUES[allow_nan]))
    return recipe


def _toml_integer(checker: Any, instance: Any) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


# JSON has one kind of number, so JSON Schema calls 7.0 an integer and 1e20 too; TOML keeps
# integers and floats apart and parse_recipe refuses `seed = 7.0` while it accepts a float
# parameter of 1e20 (it is no integer beyond 2**53). Validating with TOML's own notion of
# "integer" is the one liberty taken; JSON has no NaN at all, so the agreement strategies
# leave NaN out (parse_recipe refuses it; a JSON Schema cannot say so).
TomlValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _toml_integer))
SCHEMA = TomlValidator(recipe_schema())


def parse_outcome(data: dict[str, Any]) -> Recipe | RecipeError:
    """parse_recipe's verdict; any exception other than RecipeError fails the test."""
    try:
        return parse_recipe(data, Path("/recipes/fuzz"), "recipe.toml")
    except RecipeError as e:
        assert e.reason and "\n" not in e.one_line()
        return e


def assert_parser_and_schema_agree(data: dict[str, Any]) -> None:
    outcome = parse_outcome(data)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in SCHEMA.iter_errors(data)]
    if isinstance(outcome, Recipe):
        assert not errors, f"parse_recipe accepts, the schema refuses: {errors[:3]}"
    else:
        assert errors, f"the schema accepts, parse_recipe refuses: {outcome.one_line()}"


def test_the_valid_fuzzing_seed_is_accepted_by_both() -> None:
    assert isinstance(parse_outcome(VALID), Recipe)
    assert SCHEMA.is_valid(VALID)


@FUZZ
@given(mutated_recipes(allow_nan=True))
def test_parse_recipe_gives_a_recipe_or_a_recipe_error_for_any_mutated_recipe(
        data: dict[str, Any]) -> None:
    parse_outcome(data)


@FUZZ
@given(random_tables(allow_nan=True))
def test_parse_recipe_gives_a_recipe_or_a_recipe_error_for_any_table(
        data: dict[str, Any]) -> None:
    parse_outcome(data)


@FUZZ
@given(mutated_recipes())
def test_parse_recipe_and_the_json_schema_agree_on_mutated_recipes(data: dict[str, Any]) -> None:
    assert_parser_and_schema_agree(data)


@FUZZ
@given(random_tables(allow_nan=False))
def test_parse_recipe_and_the_json_schema_agree_on_random_tables(data: dict[str, Any]) -> None:
    assert_parser_and_schema_agree(data)


@pytest.mark.parametrize("where", [
    "name", "version", "seed", "license.code", "inputs.local.path", "inputs.remote.url",
    "inputs.remote.digest", "inputs.inside.resource", "inputs.bundled.dataset",
    "inputs.bundled.package", "inputs.base.item", "build.entry", "build.checkpoint_every",
    "params.x", "evaluate.tolerance.agreement", "evaluate.tolerance.metric", "evaluate.audit",
    "evaluate.probes"])
def test_parse_recipe_and_the_json_schema_agree_on_every_edge_value_in_each_field(
        where: str) -> None:
    *parents, last = where.split(".")
    disagreements = []
    for value in EDGE_VALUES:
        data = copy.deepcopy(VALID)
        node = data
        for key in parents:
            node = node[key]
        node[last] = value
        try:
            assert_parser_and_schema_agree(data)
        except AssertionError as e:
            disagreements.append(f"{value!r}: {str(e).splitlines()[0]}")
    assert not disagreements, "\n".join(disagreements)


LIMITS: list[tuple[str, Any]] = [
    ("build.code", ["*.py"] * 100), ("build.code", ["*.py"] * 101), ("build.code", []),
    ("params.x", [0] * 10_000), ("params.x", [0] * 10_001),
    ("params.x", {"a": {"b": [{}]}}), ("params.x", {"a": {"b": [{"c": 1}]}}),
    ("params.x", [[[[]]]]), ("params.x", [[[[1]]]]), ("params.x", [[[{}]]]),
    ("params", {}), ("params", {"x" * 64: 1}), ("params", {"x" * 65: 1}),
    ("inputs", {}), ("evaluate", {}), ("evaluate", {"tolerance": {}}),
    ("description", "x" * 10_000), ("description", "x" * 10_001),
    ("license.code", "x" * 200), ("license.code", "x" * 201),
    ("name", "x" * 64), ("name", "x" * 65), ("version", "1" * 32), ("version", "1" * 33),
    ("inputs.remote.url", "https://" + "x" * 2000), ("inputs.remote.url", "https://" + "x" * 2001),
    ("inputs.local.path", "x" * 10_000), ("inputs.local.path", "x" * 10_001),
    ("inputs.bundled.package", "x" * 100), ("inputs.bundled.package", "x" * 101),
]


@pytest.mark.parametrize(("where", "value"), LIMITS,
                         ids=[f"{w}={str(v)[:20]}({len(v)})" for w, v in LIMITS])
def test_parse_recipe_and_the_json_schema_agree_at_the_limits(where: str, value: Any) -> None:
    data = copy.deepcopy(VALID)
    *parents, last = where.split(".")
    node = data
    for key in parents:
        node = node[key]
    node[last] = value
    assert_parser_and_schema_agree(data)


# --- fuzzing load_recipe with whole files --------------------------------------------------

TOML_SNIPPETS = [
    MINIMAL, 'name = "x"', "seed = 1", "[build]", 'entry = "t.py:f"', "[license]",
    "[inputs.a]", 'path = "../x"', "[[build]]", "[params]", "a = [[[[", "a = 1e400",
    "a = nan", "a = 1979-05-27T07:32:00Z", "a = 0x7fffffffffffffff", "a = 99999999999999999999",
    "a = {b = {c = 1}}", '"\\u0000" = 1', "a.b.c = 1", 'x = """\n', "a = '''", "\x00", "\ufeff",
]


def load_outcome(directory: Path, content: bytes) -> Recipe | RecipeError:
    (directory / "recipe.toml").write_bytes(content)
    try:
        return load_recipe(directory)
    except RecipeError as e:
        assert e.file == str(directory / "recipe.toml") and "\n" not in e.one_line()
        return e


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(st.text().map(lambda s: s.encode("utf-8", "surrogatepass")))
def test_load_recipe_gives_a_recipe_or_a_recipe_error_for_any_text(
        scratch: Path, content: bytes) -> None:
    load_outcome(scratch, content)


@FUZZ
@given(st.binary(max_size=2000))
def test_load_recipe_gives_a_recipe_or_a_recipe_error_for_any_bytes(
        scratch: Path, content: bytes) -> None:
    load_outcome(scratch, content)


@FUZZ
@given(st.lists(st.one_of(st.sampled_from(TOML_SNIPPETS), st.text(max_size=20)), max_size=12))
def test_load_recipe_gives_a_recipe_or_a_recipe_error_for_toml_like_text(
        scratch: Path, lines: list[str]) -> None:
    load_outcome(scratch, "\n".join(lines).encode("utf-8", "surrogatepass"))


def test_a_recipe_file_over_one_mebibyte_is_refused(tmp_path: Path) -> None:
    directory = write_minimal(tmp_path / "big")
    append("# " + "x" * (1 << 20) + "\n")(directory)
    with pytest.raises(RecipeError, match=r"\(file\): larger than"):
        load_recipe(directory)


# --- formatting does not matter ------------------------------------------------------------

CANONICAL = """\
name = "format"
version = "2.0.0"
description = "same recipe, different text"
seed = 1000

[license]
code = "MIT"
data = "CC0-1.0"
weights = "Apache-2.0"

[inputs.digits]
package = "scikit-learn"
dataset = "digits"

[inputs.extra]
path = "extra.txt"

[build]
entry = "train.py:train"
code = ["*.py"]
checkpoint_every = 16

[params]
lr = 0.001
epochs = 15
sizes = [8, 16]
schedule = { kind = "cosine", warmup = 2 }

[evaluate]
entry = "evaluate.py:evaluate"

[evaluate.tolerance]
agreement = 0.99
metric = "accuracy"
"""

REFORMATTED = {
    "reordered-with-comments-and-exponents": """\
# the same recipe, written by someone else
seed=1_000   # underscores in numbers
description='same recipe, different text'
version   =   "2.0.0"
name = 'format'

[params]
schedule.warmup = 2
schedule.kind = "cosine"
sizes = [
  8,   # trailing commas and comments inside arrays
  16,
]
epochs = 0xf
lr = 1e-3

[evaluate.tolerance]
metric = "accuracy"
agreement = 9.9e-1

[build]
checkpoint_every = 0o20
code = [ "*.py" ]
entry = "train.py:train"

[evaluate]
entry = "evaluate.py:evaluate"

[license]
weights = "Apache-2.0"
data = "CC0-1.0"
code = "MIT"

[inputs.digits]
dataset = "digits"
package = "scikit-learn"

[inputs.extra]
path = "extra.txt"
""",
    "inline-tables-and-dotted-keys": """\
name = "format"
version = "2.0.0"
description = \"\"\"same recipe, \\
different text\"\"\"
seed = 1000
license = { code = "MIT", data = "CC0-1.0", weights = "Apache-2.0" }
inputs.digits = { package = "scikit-learn", dataset = "digits" }
inputs.extra = { path = "extra.txt" }
build = { entry = "train.py:train", code = ["*.py"], checkpoint_every = 16 }
params.lr = 0.0010
params.epochs = 15
params.sizes = [8, 16]
params.schedule = { kind = "cosine", warmup = 2 }
evaluate.entry = "evaluate.py:evaluate"
evaluate.tolerance = { agreement = 0.990, metric = "accuracy" }
""",
    "crlf-line-endings-and-tabs": CANONICAL.replace(" = ", "\t=\t").replace("\n", "\r\n"),
}


def _without_directory(recipe: Recipe) -> Recipe:
    return dataclasses.replace(recipe, directory=Path())


@pytest.mark.parametrize("variant", sorted(REFORMATTED))
def test_reformatting_the_toml_gives_an_equal_recipe(tmp_path: Path, variant: str) -> None:
    """Input tables keep their declared order (it is the order provenance lists them in),
    so the variants reorder everything but that."""
    recipes = []
    for label, text in (("canonical", CANONICAL), (variant, REFORMATTED[variant])):
        (tmp_path / label).mkdir()
        (tmp_path / label / "recipe.toml").write_bytes(text.encode())
        recipes.append(_without_directory(load_recipe(tmp_path / label)))
    assert recipes[0] == recipes[1]
    assert recipes[0].params == recipes[1].params  # (params are left out of the hash only)
