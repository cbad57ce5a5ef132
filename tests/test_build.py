"""Building: determinism across builds and thread counts, reuse, new derivations."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reweigh import build
from reweigh.errors import BuildError
from reweigh.store import Store

from .conftest import Examples
from .helpers import run_json, run_reweigh, write_recipe

pytestmark = pytest.mark.slow


def test_more_threads_than_cores_are_capped_at_the_cores(tmp_path: Path) -> None:
    from reweigh.verbs.build import threads_for

    cores = len(os.sched_getaffinity(0))
    assert threads_for(None) == 1 and threads_for(1) == 1  # one unless asked (bench/README.md)
    data = run_json("build", write_recipe(tmp_path / "r"), "--threads", str(4 * cores),
                    store=tmp_path / "store")
    assert data["threads"] == cores


@pytest.mark.parametrize("example", ["digits-logreg", "digits-cnn"])
def test_each_example_builds_to_one_digest_with_one_thread_and_with_two(
        example: str, examples: Examples) -> None:
    """Two builds from scratch, into two stores: the shared one on one thread, a second one
    on two (test_diff compares the two CNNs' answers too)."""
    one, two = examples.built(example), examples.built(example, threads=2)
    assert one.store != two.store
    records = [Store(b.store).attempts() for b in (one, two)]
    assert [[(a["purpose"], a["status"], a["threads"]) for a in r] for r in records] == [
        [("build", "built", 1)], [("build", "built", 2)]]
    items = [Store(b.store).resolve(b.item.name) for b in (one, two)]
    assert items[0].derivation == items[1].derivation
    assert items[0].weights_digest == items[1].weights_digest
    for built, threads in ((one, 1), (two, 2)):  # each says how it was built
        statement = json.loads((built.item / "provenance.json").read_text())
        assert statement["predicate"]["runDetails"]["environment"]["threads"] == threads
    metrics = json.loads((one.item / "metrics.json").read_text())
    assert metrics["evaluation"]["accuracy"] >= 0.95


def test_check_rebuilds_and_says_the_weights_are_bit_identical(examples: Examples,
                                                               tmp_path: Path) -> None:
    """`--check` of an item already in the store: one rebuild, compared bit for bit, and
    recorded. The shared numpy recipe: what is tested here is the check. That digits-cnn
    rebuilds bit for bit is tested by the builds that compare it with the shared one
    (test_checkpoints' shipped digits-cnn, each checkpoint's digest too; above, on two
    threads); a --check of digits-cnn here trained it once more (4 s)."""
    first = examples.copy("minimal", tmp_path)
    store = Store(first.store)
    # the copy keeps what other tests recorded in the shared store (their checks)
    checks_before, attempts_before = len(store.checks(store.resolve(str(first.item)))), len(
        store.attempts())
    checked = run_reweigh("build", write_recipe(tmp_path / "r"), "--check", store=first.store)
    assert checked.returncode == 0, checked.stderr
    assert "bit-identical" in checked.stdout
    assert checked.stdout.strip().splitlines()[-1] == str(first.item)
    checks = store.checks(store.resolve(str(first.item)))[checks_before:]
    assert [(c["kind"], c["result"]) for c in checks] == [("rebuild", "identical")]
    attempts = store.attempts()
    assert [(a["purpose"], a["status"]) for a in attempts[:1]] == [("build", "built")]
    assert [(a["purpose"], a["status"]) for a in attempts[attempts_before:]] == [
        ("check", "built")]


SPIN = """
import subprocess
import sys
import time

import numpy as np

def train(ctx):  # 0.6 s of CPU here, 0.4 s in a program it waits for
    while time.process_time() < 0.6:
        pass
    subprocess.run([sys.executable, "-c", "import time\\nwhile time.process_time() < 0.4: pass"],
                   check=True)
    ctx.save_weights({"w": np.zeros(2, np.float32)})
"""


@pytest.mark.slow
def test_an_attempt_records_the_cpu_time_its_run_measured_itself(tmp_path: Path) -> None:
    """Measured inside the sandbox (the builder cannot see its processes' CPU time), with
    the programs the run waited for; an attempt that failed before it said has none."""
    store = Store(tmp_path / "store")
    build(write_recipe(tmp_path / "r", SPIN), store=store)
    failing = write_recipe(tmp_path / "bad", "def train(ctx):\n    raise ValueError('no')\n")
    with pytest.raises(BuildError):
        build(failing, store=store)
    built, failed = store.attempts()
    assert built["status"] == "built" and 1.0 <= built["cpu_seconds"] < 10
    assert failed["status"] == "failed" and failed["cpu_seconds"] is None


def test_an_index_made_before_cpu_seconds_gains_the_column(tmp_path: Path) -> None:
    """A store made by an earlier reweigh: its attempts table without cpu_seconds; opening
    it adds the column, its rows have none, and new attempts record theirs. Six commands
    opening it at the same moment all succeed (each switching it to WAL mode or adding the
    column failed with "locked" or "duplicate column" in about half the runs)."""
    import sqlite3

    root = tmp_path / "store"
    root.mkdir()
    with sqlite3.connect(root / "index.sqlite") as db:
        db.execute("CREATE TABLE attempts (id INTEGER PRIMARY KEY AUTOINCREMENT, derivation "
                   "TEXT NOT NULL, name TEXT NOT NULL, purpose TEXT NOT NULL, status TEXT NOT "
                   "NULL, threads INTEGER, pid INTEGER, started_at REAL NOT NULL, ended_at "
                   "REAL, message TEXT)")
        db.execute("INSERT INTO attempts (derivation, name, purpose, status, started_at) "
                   "VALUES ('sha256:0', 'old', 'build', 'built', 1.0)")
    # several commands open it at the same moment: each adds the column or finds it added
    go = tmp_path / "go"
    opener = ("import os, sys, time\nfrom pathlib import Path\nfrom reweigh.store import Store\n"
              "while not os.path.exists(sys.argv[2]): time.sleep(0.001)\n"
              "Store(Path(sys.argv[1]))\n")
    openers = [subprocess.Popen([sys.executable, "-c", opener, str(root), str(go)],
                                stderr=subprocess.PIPE, text=True) for _ in range(6)]
    time.sleep(1.0)  # all of them started and waiting
    go.touch()
    assert [(p.wait(), p.stderr.read() if p.stderr else "") for p in openers] == [(0, "")] * 6
    store = Store(root)
    attempt = store.begin_attempt("sha256:1", "new", "build", 1)
    store.end_attempt(attempt, "built", cpu_seconds=2.5)
    assert [(a["name"], a["cpu_seconds"]) for a in store.attempts()] == [("old", None),
                                                                         ("new", 2.5)]


def test_a_second_build_reuses_the_item(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r")
    first = build(recipe, store=Store(tmp_path / "store"))
    second = build(recipe, store=Store(tmp_path / "store"))
    assert not first.reused and second.reused
    assert second.path == first.path and second.weights_digest == first.weights_digest


def test_changing_a_parameter_gives_a_new_derivation_and_a_new_item(tmp_path: Path) -> None:
    """A numpy recipe (each build here ran digits-logreg's training, 2.5 s): the
    derivation is computed from the recipe, whatever trains."""
    store = tmp_path / "store"
    built = run_json("build", write_recipe(tmp_path / "a", params="scale = 1.0"), store=store)
    recipe = tmp_path / "b"
    shutil.copytree(tmp_path / "a", recipe)
    first = run_json("build", recipe, store=store)
    assert first["reused"]  # the same recipe in another folder: the same derivation
    assert first["derivation"] == built["derivation"]
    text = (recipe / "recipe.toml").read_text()
    assert text.count("scale = 1.0") == 1
    (recipe / "recipe.toml").write_text(text.replace("scale = 1.0", "scale = 0.5"))
    second = run_json("build", recipe, store=store)
    assert not second["reused"]
    assert second["derivation"] != first["derivation"]
    assert second["weights_digest"] != first["weights_digest"]
    assert len(run_json("list", store=store)) == 2


def test_build_prints_the_store_path_last_and_json_has_the_contract_keys(
        tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r")
    store = tmp_path / "store"
    text = run_reweigh("build", recipe, store=store)
    assert text.returncode == 0, text.stderr
    last = Path(text.stdout.strip().splitlines()[-1])
    assert last.is_dir() and (last / "weights.safetensors").is_file()
    data = run_json("build", recipe, store=store)
    assert {"path", "derivation", "weights_digest", "reused"} <= data.keys()
    assert data["path"] == str(last) and data["reused"] is True
    assert data["weights_digest"].startswith("sha256:") and len(data["weights_digest"]) == 71


def test_an_item_holds_weights_provenance_metrics_card_transcript_and_log(
        examples: Examples) -> None:
    built = examples.built("digits-logreg")
    item = built.item
    weights_digest = Store(built.store).resolve(str(item)).weights_digest
    for name in ("weights.safetensors", "provenance.json", "metrics.json", "MODEL_CARD.md",
                 "build.log", "transcript.json", "derivation.json"):
        assert (item / name).is_file(), name
    statement = json.loads((item / "provenance.json").read_text())
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    assert statement["subject"][0]["digest"]["sha256"] == weights_digest[7:]
    env = statement["predicate"]["runDetails"]["environment"]
    for key in ("python", "packages", "blas", "cpu_model", "isa", "threads", "numerics"):
        assert env[key], key
    assert env["packages"]["torch"] and env["packages"]["scikit-learn"]
    card = (item / "MODEL_CARD.md").read_text()
    assert card.startswith("---\nlicense: \"CC0-1.0\"")
    assert weights_digest in card and "accuracy" in card
    deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    digits = next(d for d in deps if d["name"] == "input:digits")
    assert digits["annotations"]["package"] == "scikit-learn"
    assert digits["annotations"]["version"]


def test_the_cnn_transcript_chains_its_checkpoints(digits_cnn: tuple[Path, Path]) -> None:
    _, item = digits_cnn
    transcript = json.loads((item / "transcript.json").read_text())
    steps = [c["step"] for c in transcript["checkpoints"]]
    assert steps == [*range(10, 341, 10), 345]  # every 10th batch, and the last
    links = [c["chain"] for c in transcript["checkpoints"]]
    assert len(set(links)) == 35
    assert transcript["environment"]["threads"] >= 1  # where it was recorded, for verify
    for entry in transcript["checkpoints"]:  # each kept as chunks, named by a manifest
        manifest = json.loads((item / entry["file"]).with_suffix(".json").read_text())
        assert manifest["digest"] == entry["digest"] and manifest["chunks"]


def test_check_catches_a_recipe_that_is_not_deterministic_and_names_the_tensor(
        tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r", """
        import os
        import numpy as np

        def train(ctx):
            noise = np.frombuffer(os.urandom(16), dtype=np.float32)  # not seeded: a bug
            ctx.save_weights({"stable": np.ones(4, dtype=np.float32), "noisy": noise})
        """)
    store = tmp_path / "store"
    run_json("build", recipe, store=store)
    result = run_reweigh("build", recipe, "--check", store=store)
    assert result.returncode == 1
    assert "MISMATCH" in result.stdout
    assert "    noisy: changed" in result.stdout and "stable" not in result.stdout
    data = run_json("build", recipe, "--check", store=store)
    assert data["check"]["identical"] is False
    assert [d["name"] for d in data["check"]["differing_tensors"]] == ["noisy"]


def test_kept_logs_count_the_attempts_of_each_derivation_on_their_own(tmp_path: Path) -> None:
    store = tmp_path / "store"
    failing = "def train(ctx):\n    raise ValueError(ctx.params['which'])\n"
    first = write_recipe(tmp_path / "a", failing, params='which = "a"')
    second = write_recipe(tmp_path / "b", failing, params='which = "b"')
    for recipe in (first, second, first):
        assert run_reweigh("build", recipe, store=store).returncode == 1
    attempts: dict[str, list[str]] = {}  # item name -> the attempt numbers of its logs
    for log in sorted((store / "logs").iterdir()):
        item, rest = log.name.split("-attempt-")
        attempts.setdefault(item, []).append(rest.split("-")[0])
    assert sorted(attempts.values()) == [["1"], ["1", "2"]], attempts
