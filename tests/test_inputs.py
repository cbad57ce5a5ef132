"""Inputs: recipe files and folders, package data sets, URLs, store items; all by digest."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from reweigh.inputs import resolve_inputs
from reweigh.recipe import load_recipe
from reweigh.store import Store

from .helpers import run_json, run_reweigh, store_is_empty, write_recipe

PAYLOAD = b"x,y\n" + b"".join(f"{i},{i % 3}\n".encode() for i in range(500))
PAYLOAD_DIGEST = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()
READ_INPUT = """
import numpy as np

def train(ctx):
    data = (ctx.inputs["table"]).read_bytes()
    ctx.save_weights({"w": np.frombuffer(data[:64], dtype=np.uint8).astype(np.float32)})
"""


class _Files(http.server.BaseHTTPRequestHandler):
    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        body = PAYLOAD if self.path == "/table.csv" else None
        self.send_response(200 if body else 404)
        self.end_headers()
        if body:
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[tuple[str, type[_Files]]]:
    handler = type("Handler", (_Files,), {"requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()


def _url_recipe(directory: Path, url: str, digest: str) -> Path:
    return write_recipe(directory, READ_INPUT,
                        inputs=f'[inputs.table]\nurl = "{url}"\ndigest = "{digest}"')


@pytest.mark.slow
def test_a_url_input_is_downloaded_once_verified_and_kept(
        tmp_path: Path, store: Path, http_server: tuple[str, type[_Files]]) -> None:
    base, handler = http_server
    recipe = _url_recipe(tmp_path / "r", f"{base}/table.csv", PAYLOAD_DIGEST)
    first = run_json("build", recipe, store=store)
    kept = list((store / "inputs").rglob("table.csv"))
    assert len(kept) == 1 and kept[0].read_bytes() == PAYLOAD
    # A second recipe with the same input: no second download.
    other = _url_recipe(tmp_path / "r2", f"{base}/table.csv", PAYLOAD_DIGEST)
    (other / "recipe.toml").write_text((other / "recipe.toml").read_text().replace(
        "seed = 1", "seed = 2"))
    run_json("build", other, store=store)
    assert handler.requests == ["/table.csv"]
    shown = run_json("show", first["path"], store=store)
    assert shown["inputs"] == {"table": PAYLOAD_DIGEST}


def test_a_url_input_with_the_wrong_digest_is_refused_and_nothing_is_kept(
        tmp_path: Path, store: Path, http_server: tuple[str, type[_Files]]) -> None:
    base, _ = http_server
    wrong = "sha256:" + "0" * 64
    result = run_reweigh("build", _url_recipe(tmp_path / "r", f"{base}/table.csv", wrong),
                         store=store)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "inputs.table.url: digest mismatch" in lines[0] and PAYLOAD_DIGEST in lines[0]
    assert store_is_empty(store) and not any((store / "tmp").iterdir())


def test_a_url_that_fails_is_bad_input(tmp_path: Path, store: Path,
                                       http_server: tuple[str, type[_Files]]) -> None:
    base, _ = http_server
    result = run_reweigh("build", _url_recipe(tmp_path / "r", f"{base}/missing",
                                              PAYLOAD_DIGEST), store=store)
    assert result.returncode == 2
    assert "HTTP 404" in result.stderr.strip().splitlines()[-1]
    assert store_is_empty(store)


@pytest.mark.parametrize("dataset,first_file", [
    ("digits", "digits.csv.gz"), ("iris", "iris.csv"), ("wine", "wine_data.csv"),
    ("breast_cancer", "breast_cancer.csv")])
def test_scikit_learn_data_sets_resolve_with_package_version_and_digest(
        tmp_path: Path, dataset: str, first_file: str) -> None:
    import sklearn

    recipe = write_recipe(tmp_path / "r",
                          inputs=f'[inputs.data]\npackage = "scikit-learn"\n'
                                 f'dataset = "{dataset}"')
    (resolved,) = resolve_inputs(load_recipe(recipe), Store(tmp_path / "store"))
    assert resolved.origin["package"] == "scikit-learn"
    assert resolved.origin["version"] == sklearn.__version__
    assert (resolved.path / first_file).is_file()
    assert resolved.digest.startswith("sha256:")
    source = Path(sklearn.__file__).parent / "datasets" / "data" / first_file
    assert (resolved.path / first_file).read_bytes() == source.read_bytes()


def test_a_pinned_package_digest_that_does_not_match_is_refused(tmp_path: Path,
                                                               store: Path) -> None:
    recipe = write_recipe(tmp_path / "r", inputs='[inputs.data]\npackage = "scikit-learn"\n'
                          f'dataset = "iris"\ndigest = "sha256:{"a" * 64}"')
    result = run_reweigh("build", recipe, store=store)
    assert result.returncode == 2
    assert "inputs.data: digest mismatch" in result.stderr
    assert store_is_empty(store)


def test_a_package_named_by_its_import_name_is_refused_with_the_distribution_name(
        tmp_path: Path, store: Path) -> None:
    recipe = write_recipe(tmp_path / "r", inputs='[inputs.data]\npackage = "sklearn"\n'
                          'dataset = "wine"')
    result = run_reweigh("build", recipe, store=store)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.endswith("inputs.data.package: no distribution named sklearn is installed; "
                         "the module sklearn comes from the distribution named scikit-learn: "
                         'write package = "scikit-learn"'), line
    assert store_is_empty(store)


@pytest.mark.slow
def test_a_folder_input_is_hashed_as_a_tree_and_changes_the_derivation(
        tmp_path: Path, store: Path) -> None:
    recipe = write_recipe(tmp_path / "r", """
        import numpy as np

        def train(ctx):
            names = sorted(p.name for p in ctx.inputs["corpus"].iterdir())
            ctx.save_weights({"w": np.array([len(names)], dtype=np.float32)})
        """, inputs='[inputs.corpus]\npath = "corpus"',
        files={"corpus/a.txt": "alpha", "corpus/b/c.txt": "gamma"})
    first = run_json("build", recipe, store=store)
    (recipe / "corpus" / "b" / "c.txt").write_text("changed")
    second = run_json("build", recipe, store=store)
    assert first["derivation"] != second["derivation"]
    assert first["weights_digest"] == second["weights_digest"]  # same count of files


@pytest.mark.slow
def test_a_store_item_is_an_input_for_fine_tuning(tmp_path: Path, store: Path) -> None:
    base = run_json("build", write_recipe(tmp_path / "base"), store=store)
    tuned = write_recipe(tmp_path / "tuned", """
        def train(ctx):
            base = ctx.load_weights("base")
            ctx.save_weights({"w": base["w"] + 1})
        """, inputs=f'[inputs.base]\nitem = "{base["weights_digest"]}"')
    text = (tuned / "recipe.toml").read_text().replace('"test-recipe"', '"tuned"')
    (tuned / "recipe.toml").write_text(text)
    result = run_json("build", tuned, store=store)
    statement = json.loads((Path(result["path"]) / "provenance.json").read_text())
    deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    base_dep = next(d for d in deps if d["name"] == "input:base")
    assert base_dep["annotations"]["kind"] == "item"
    assert base_dep["digest"]["sha256"] == base["weights_digest"][7:]
    assert "base_model:" in (Path(result["path"]) / "MODEL_CARD.md").read_text()


COUNTS_CORPUS = """
import numpy as np

def train(ctx):
    root = ctx.inputs["corpus"]
    texts = sorted(p.read_text() for p in root.rglob("*") if p.is_file())
    ctx.save_weights({"w": np.array([len(texts), sum(map(len, texts))], dtype=np.float32)})
"""
CORPUS = {"corpus/a.txt": "alpha", "corpus/b/c.txt": "gamma", "corpus/b/d.txt": "delta",
          "corpus/e.txt": "epsilon"}


def _corpus_recipe(directory: Path, seed: int) -> Path:
    recipe = write_recipe(directory, COUNTS_CORPUS, inputs='[inputs.corpus]\npath = "corpus"',
                          files=CORPUS)
    text = (recipe / "recipe.toml").read_text()
    (recipe / "recipe.toml").write_text(text.replace("seed = 1", f"seed = {seed}"))
    return recipe


def _kept_corpus(store: Path) -> Path:
    (kept,) = (store / "inputs").glob("*/corpus")
    return kept


def _weights(item: str) -> list[float]:
    from safetensors.numpy import load_file

    return load_file(str(Path(item) / "weights.safetensors"))["w"].tolist()


@pytest.mark.slow
def test_a_half_deleted_input_in_the_store_is_staged_again_never_trained_on(
        tmp_path: Path, store: Path) -> None:
    """As a gc killed mid-delete (before gc moved folders aside) would leave it: some files
    of a kept folder gone. The next recipe with the same input must get it whole."""
    first = run_json("build", _corpus_recipe(tmp_path / "one", seed=1), store=store)
    assert _weights(first["path"]) == [4.0, 22.0]
    kept = _kept_corpus(store)
    for folder in (kept, kept / "b"):
        folder.chmod(0o755)
    (kept / "b" / "c.txt").unlink()
    (kept / "e.txt").unlink()

    second = run_json("build", _corpus_recipe(tmp_path / "two", seed=2), store=store)
    assert not second["reused"]
    assert _weights(second["path"]) == [4.0, 22.0]  # the whole corpus, not what was left
    assert sorted(p.name for p in _kept_corpus(store).rglob("*.txt")) == [
        "a.txt", "c.txt", "d.txt", "e.txt"]
    log = (store / "logs" / "store.log").read_text()
    assert "damaged (2 file(s) missing)" in log and "stages it again" in log
    assert run_reweigh("store", "verify", store=store).returncode == 0


@pytest.mark.slow
def test_a_kept_input_rewritten_with_its_times_restored_is_caught(
        tmp_path: Path, store: Path) -> None:
    """Size and modification time can be put back; the change time cannot."""
    run_json("build", _corpus_recipe(tmp_path / "one", seed=1), store=store)
    target = _kept_corpus(store) / "a.txt"
    before = target.stat()
    target.chmod(0o644)
    target.write_text("ALPHA")  # same size
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    verified = run_json("store", "verify", store=store)
    assert verified["corrupted"] == [{"item": _kept_corpus(store).relative_to(store).as_posix(),
                                      "relpath": "", "problem": "modified"}]
    second = run_json("build", _corpus_recipe(tmp_path / "two", seed=2), store=store)
    assert _kept_corpus(store).joinpath("a.txt").read_text() == "alpha"
    assert _weights(second["path"]) == [4.0, 22.0]


@pytest.mark.slow
def test_store_verify_names_the_files_a_half_deleted_input_lost(
        tmp_path: Path, store: Path) -> None:
    run_json("build", _corpus_recipe(tmp_path / "one", seed=1), store=store)
    kept = _kept_corpus(store)
    (kept / "b").chmod(0o755)
    (kept / "b" / "d.txt").unlink()
    report = run_json("store", "verify", store=store)
    assert not report["ok"] and report["corrupted"] == [
        {"item": kept.relative_to(store).as_posix(), "relpath": "b/d.txt",
         "problem": "missing"}]


@pytest.mark.slow
def test_inputs_kept_before_their_files_were_recorded_are_still_reused(
        tmp_path: Path, store: Path) -> None:
    """A store from before the input_files table: the first reuse rehashes and records."""
    recipe = _corpus_recipe(tmp_path / "one", seed=1)
    first = run_json("build", recipe, store=store)
    with sqlite3.connect(store / "index.sqlite") as db:
        db.execute("DROP TABLE input_files")
    kept = _kept_corpus(store)
    assert run_json("build", recipe, store=store)["reused"]
    second = run_json("build", _corpus_recipe(tmp_path / "two", seed=2), store=store)
    assert _kept_corpus(store) == kept and _weights(second["path"]) == _weights(first["path"])
    with sqlite3.connect(store / "index.sqlite") as db:
        recorded = db.execute("SELECT relpath FROM input_files ORDER BY relpath").fetchall()
    assert recorded == [("a.txt",), ("b/c.txt",), ("b/d.txt",), ("e.txt",)]
    assert not (store / "logs" / "store.log").exists()


def test_a_kept_input_is_reused_on_a_stat_of_its_files_and_rehashed_only_when_one_moved(
        tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reuse must not read the data: the kept copy is rehashed only when a file's size,
    inode or times moved, and then once, after which a stat suffices again."""
    from reweigh import store_inputs

    recipe, opened = load_recipe(_corpus_recipe(tmp_path / "r", seed=1)), Store(store)
    (first,) = resolve_inputs(recipe, opened)
    rehashed: list[Path] = []
    digest_of = store_inputs.path_digest
    monkeypatch.setattr(store_inputs, "path_digest",
                        lambda path: rehashed.append(path) or digest_of(path))
    assert resolve_inputs(recipe, opened) == (first,) and rehashed == []
    os.utime(first.path / "a.txt")  # touched: maybe changed
    assert resolve_inputs(recipe, opened) == (first,) and rehashed == [first.path]
    assert resolve_inputs(recipe, opened) == (first,) and rehashed == [first.path]
    assert not (store / "logs" / "store.log").exists()
