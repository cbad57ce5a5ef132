"""`store repair`: an unreadable index is set aside and rebuilt from the items' records."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from reweigh.store import Store

from .helpers import run_json, run_reweigh, write_recipe

pytestmark = pytest.mark.slow  # every test here builds

READS_TABLE = """
import numpy as np

def train(ctx):
    rows = (ctx.inputs["table"] / "rows.csv").read_text().splitlines()
    ctx.save_weights({"w": np.array([len(rows)], dtype=np.float32)})
"""


def _garble(store: Path) -> Path:
    index = store / "index.sqlite"
    index.write_bytes(random.Random(7).randbytes(index.stat().st_size))
    return index


def _built_and_imported(tmp_path: Path, store: Path) -> tuple[Path, dict, dict]:
    recipe = write_recipe(tmp_path / "r", READS_TABLE, inputs='[inputs.table]\npath = "table"',
                          files={"table/rows.csv": "1,2\n3,4\n"})
    built = run_json("build", recipe, store=store)
    weights = tmp_path / "published.safetensors"
    save_file({"layer.weight": np.ones((2, 2), dtype=np.float32)}, str(weights))
    imported = run_json("import", weights, "--name", "outside", "--license", "MIT",
                        store=store)
    return recipe, built, imported


def test_store_repair_rebuilds_an_unreadable_index_from_the_items(
        tmp_path: Path, store: Path) -> None:
    recipe, built, imported = _built_and_imported(tmp_path, store)
    shown = run_json("show", built["path"], store=store)
    index = _garble(store)
    assert run_reweigh("list", store=store).returncode == 2

    result = run_reweigh("store", "repair", "--json", store=store)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert sorted(report["items"]) == sorted(Path(i["path"]).name for i in (built, imported))
    assert report["inputs"] == list(shown["inputs"].values()) and report["skipped"] == []
    kept = Path(report["broken_index"])
    assert kept.name.startswith("index.sqlite.broken-") and kept.read_bytes()[:4] != b"SQLi"
    assert index.read_bytes().startswith(b"SQLite format 3")

    assert {i["path"] for i in run_json("list", store=store)} == {built["path"],
                                                                 imported["path"]}
    again = run_json("show", built["path"], store=store)
    for key in ("derivation", "weights_digest", "environment_digest", "inputs", "metrics"):
        assert again[key] == shown[key], key
    rebuilt = run_json("build", recipe, store=store)
    assert rebuilt["reused"] and rebuilt["path"] == built["path"]
    item = Store(store).resolve("outside")
    record = Store(store).import_record(item)
    assert record is not None and record["license"] == "MIT"
    assert run_json("import", tmp_path / "published.safetensors", "--name", "outside",
                    "--license", "MIT", store=store)["reused"]
    assert run_json("store", "verify", store=store)["ok"]


def test_store_repair_indexes_what_a_lost_index_forgot_and_leaves_a_readable_one_alone(
        tmp_path: Path, store: Path) -> None:
    recipe, _, _ = _built_and_imported(tmp_path, store)
    for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
        (store / name).unlink(missing_ok=True)
    result = run_reweigh("store", "repair", store=store)
    assert result.returncode == 0, result.stderr
    assert "indexed 2 item(s) and 1 input(s) again" in result.stdout
    assert not list(store.glob("index.sqlite.broken-*"))
    assert run_json("build", recipe, store=store)["reused"]
    nothing = run_json("store", "repair", store=store)
    assert nothing["items"] == [] and nothing["inputs"] == [] and nothing["broken_index"] is None


def test_store_repair_does_not_index_an_item_whose_weights_changed(
        tmp_path: Path, store: Path) -> None:
    _, built, _ = _built_and_imported(tmp_path, store)
    weights = Path(built["path"]) / "weights.safetensors"
    weights.chmod(0o644)
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0x01
    weights.write_bytes(bytes(raw))
    _garble(store)
    result = run_reweigh("store", "repair", "--json", store=store)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    ((path, reason),) = [(s["path"], s["reason"]) for s in report["skipped"]]
    assert path == f"items/{Path(built['path']).name}"
    assert reason.startswith("weights.safetensors has sha256:")
    assert reason.endswith(f"its provenance names {built['weights_digest']}")
    assert [i["name"] for i in run_json("list", store=store)] == ["outside"]
    verified = run_json("store", "verify", store=store)
    assert {"item": Path(built["path"]).name, "relpath": "", "problem": "unknown"} in \
        verified["corrupted"]
