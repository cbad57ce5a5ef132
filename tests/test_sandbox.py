"""The build sandbox: no network, read-only inputs, failures that leave nothing behind."""

from __future__ import annotations

import gzip
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from reweigh.store import Store

from .helpers import run_reweigh, store_is_empty, write_recipe


class _CountingHandler(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[int, type[_CountingHandler]]]:
    handler = type("Handler", (_CountingHandler,), {"hits": 0})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1], handler
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.slow
def test_a_build_that_opens_a_connection_fails_with_a_clear_message(
        tmp_path: Path, store: Path, server: tuple[int, type[_CountingHandler]]) -> None:
    port, handler = server
    recipe = write_recipe(tmp_path / "r", f"""
        import urllib.request

        def train(ctx):
            urllib.request.urlopen("http://127.0.0.1:{port}/", timeout=5).read()
        """)
    result = run_reweigh("build", recipe, store=store)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "network connection" in last and "without network" in last
    assert handler.hits == 0
    assert not any((store / "items").iterdir())


@pytest.mark.slow
def test_a_build_that_swallows_the_network_error_still_fails(
        tmp_path: Path, store: Path, server: tuple[int, type[_CountingHandler]]) -> None:
    port, handler = server
    recipe = write_recipe(tmp_path / "r", f"""
        import socket
        import numpy as np

        def train(ctx):
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=5)
            except Exception:
                pass
            ctx.save_weights({{"w": np.zeros(2, dtype=np.float32)}})
        """)
    result = run_reweigh("build", recipe, store=store)
    assert result.returncode == 1
    assert "network" in result.stderr.strip().splitlines()[-1]
    assert handler.hits == 0
    assert not any((store / "items").iterdir())


@pytest.mark.slow
def test_a_process_started_by_the_build_has_no_network_either(
        tmp_path: Path, store: Path, server: tuple[int, type[_CountingHandler]]) -> None:
    port, handler = server
    recipe = write_recipe(tmp_path / "r", f"""
        import subprocess, sys
        import numpy as np

        def train(ctx):
            probe = "import urllib.request as u; u.urlopen('http://127.0.0.1:{port}/', timeout=3)"
            code = subprocess.run([sys.executable, "-c", probe]).returncode
            ctx.log_metric("grandchild_exit", code)
            ctx.save_weights({{"w": np.zeros(2, dtype=np.float32)}})
        """)
    result = run_reweigh("build", recipe, "--json", store=store)
    assert result.returncode == 0, result.stderr
    item = Path(json.loads(result.stdout)["path"])
    assert json.loads((item / "metrics.json").read_text())["training"]["grandchild_exit"] != 0
    assert handler.hits == 0
    provenance = json.loads((item / "provenance.json").read_text())
    assert "network namespace" in provenance["predicate"]["runDetails"]["environment"][
        "network_isolation"]


@pytest.mark.slow
def test_a_build_that_writes_to_its_input_fails_and_the_input_is_unchanged(
        tmp_path: Path, store: Path) -> None:
    recipe = write_recipe(tmp_path / "r", """
        def train(ctx):
            with open(ctx.inputs["notes"], "w") as handle:
                handle.write("changed")
        """, inputs='[inputs.notes]\npath = "notes.txt"', files={"notes.txt": "original"})
    result = run_reweigh("build", recipe, store=store)
    assert result.returncode == 1
    assert "inputs are read-only" in result.stderr.strip().splitlines()[-1]
    kept = list((store / "inputs").rglob("notes.txt"))
    assert [p.read_text() for p in kept] == ["original"]
    assert not any((store / "items").iterdir())


@pytest.mark.slow
def test_a_failing_build_leaves_no_item_and_shows_the_recipes_own_traceback(
        tmp_path: Path, store: Path) -> None:
    recipe = write_recipe(tmp_path / "r", """
        from helper import step

        def train(ctx):
            print("training starts")
            step()
        """, files={"helper.py": "def step():\n    raise ValueError('the loss went to NaN')\n"},
        build='code = ["*.py"]')
    result = run_reweigh("build", recipe, store=store)
    assert result.returncode == 1
    shown = result.stderr.strip().splitlines()
    assert shown[:5] == [
        "Traceback (the recipe's code, most recent call last):",
        f'  File "{recipe / "train.py"}", line 6, in train', "    step()",
        f'  File "{recipe / "helper.py"}", line 2, in step',
        "    raise ValueError('the loss went to NaN')"]
    assert "/build/src" not in result.stderr and "runtime.py" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("reweigh: building test-recipe failed: ValueError: the loss went")
    log = Path(last.split("log: ", 1)[1].rstrip(")"))
    assert "the loss went to NaN" in log.read_text()
    assert not any((store / "items").iterdir())
    assert not any((store / "tmp").iterdir())
    attempts = Store(store).attempts()
    assert [a["status"] for a in attempts] == ["failed"]


@pytest.mark.slow
def test_an_entry_point_that_saves_no_weights_fails(tmp_path: Path, store: Path) -> None:
    recipe = write_recipe(tmp_path / "r", "def train(ctx):\n    pass\n")
    result = run_reweigh("build", recipe, store=store)
    assert result.returncode == 1
    assert "save_weights" in result.stderr.strip().splitlines()[-1]
    assert store_is_empty(store)


@pytest.mark.slow
def test_an_input_touched_during_the_build_fails_it_and_leaves_no_item(
        tmp_path: Path, store: Path) -> None:
    """`os.utime` is no write the guard sees; the builder's check of the inputs' stat
    after training still notices that the input changed. Unisolated: in the sandbox the
    input is mounted read-only and the touch itself fails (test_hermetic)."""
    recipe = write_recipe(tmp_path / "r", TOUCH_TRAIN, inputs=(
        '[inputs.data]\npath = "data.txt"'), files={"data.txt": "some data\n"})
    result = run_reweigh("build", recipe, "--sandbox", "none", store=store)
    assert result.returncode == 1, result.stderr
    assert "an input changed during the build" in result.stderr
    assert not any((store / "items").iterdir())


@pytest.mark.slow
def test_an_input_rewritten_with_its_size_and_mtime_restored_still_fails_the_build(
        tmp_path: Path, store: Path) -> None:
    """A process the guard cannot see rewrites the input with bytes of the same length and
    puts its modification time back: only the change time still tells."""
    recipe = write_recipe(tmp_path / "r", REWRITE_TRAIN, inputs=(
        '[inputs.data]\npath = "data.txt"'), files={"data.txt": "some data\n"})
    result = run_reweigh("build", recipe, "--sandbox", "none", store=store)
    assert result.returncode == 1, result.stderr
    assert "an input changed during the build" in result.stderr
    assert not any((store / "items").iterdir())


REWRITE_TRAIN = """
import os
import subprocess

import numpy as np

REWRITE = (\'chmod u+w "$0" && printf "SOME DATA\\\\n" > "$0" && touch -m -d "$1" "$0"\'
           \' && chmod "$2" "$0"\')

def train(ctx):
    data = ctx.inputs["data"]
    before = os.stat(data)
    when = f"@{before.st_mtime_ns // 10**9}.{before.st_mtime_ns % 10**9:09d}"
    subprocess.run(["sh", "-c", REWRITE, str(data), when, oct(before.st_mode & 0o7777)[2:]],
                   check=True)
    after = os.stat(data)
    assert open(data).read() == "SOME DATA\\n" and after.st_size == before.st_size
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)
    ctx.save_weights({"w": np.zeros(2, dtype=np.float32)})
"""


TOUCH_TRAIN = """
import os

import numpy as np

def train(ctx):
    os.utime(ctx.inputs["data"], (0, 0))
    ctx.save_weights({"w": np.zeros(2, dtype=np.float32)})
"""


@pytest.mark.slow
def test_files_a_recipe_leaves_open_are_complete_in_the_item(tmp_path: Path,
                                                             store: Path) -> None:
    """The build process skips the garbage collection of its teardown (most of a second
    with torch loaded), not the teardown: what a recipe leaves unfinished is still
    finished before the item is made: a buffer never flushed, a csv writer's file, a
    gzip stream (its end marker is written on close), a thread still writing, an exit
    handler."""
    recipe = write_recipe(tmp_path / "r", LEAKY_TRAIN)
    result = run_reweigh("build", recipe, store=store)
    assert result.returncode == 0, result.stderr
    item = Path(result.stdout.strip().splitlines()[-1])
    assert (item / "notes.txt").read_text() == "written, never closed\n"
    assert (item / "table.csv").read_text().splitlines() == ["a,b", "1,2"]
    assert gzip.decompress((item / "log.gz").read_bytes()) == b"compressed\n"
    assert (item / "late.txt").read_text() == "written by a thread after training"
    assert (item / "bye.txt").read_text() == "written at exit"


LEAKY_TRAIN = """
import atexit
import csv
import gzip
import threading
import time

import numpy as np

NOTES = TABLE = LOG = None

def late(path):
    time.sleep(0.5)
    path.write_text("written by a thread after training")

def train(ctx):
    global NOTES, TABLE, LOG
    NOTES = open(ctx.out / "notes.txt", "w")
    NOTES.write("written, never closed\\n")  # stays in the buffer
    TABLE = csv.writer(open(ctx.out / "table.csv", "w", newline=""), lineterminator="\\n")
    TABLE.writerows([["a", "b"], [1, 2]])
    LOG = gzip.open(ctx.out / "log.gz", "wt")
    LOG.write("compressed\\n")
    threading.Thread(target=late, args=(ctx.out / "late.txt",)).start()
    atexit.register((ctx.out / "bye.txt").write_text, "written at exit")
    ctx.save_weights({"w": np.zeros(2, dtype=np.float32)})
"""


@pytest.mark.parametrize(("train", "field", "reason"), [
    ("def training(ctx):\n    pass\n", "build.entry", "train.py defines no function 'train'"),
    ("def train(ctx):\n    return (\n", "build.entry", "train.py, line 2"),
])
def test_a_missing_or_broken_entry_point_is_refused_before_anything_runs(
        tmp_path: Path, store: Path, train: str, field: str, reason: str) -> None:
    recipe = write_recipe(tmp_path / "r", train)
    result = run_reweigh("build", recipe, store=store)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{field}: {reason}" in lines[0], lines
    assert store_is_empty(store) and not Store(store).attempts()


def test_a_missing_evaluation_function_is_refused_before_training(tmp_path: Path,
                                                                  store: Path) -> None:
    recipe = write_recipe(tmp_path / "r", extra='[evaluate]\nentry = "train.py:evaluate"')
    result = run_reweigh("build", recipe, store=store)
    assert result.returncode == 2
    assert "evaluate.entry: train.py defines no function 'evaluate'" in result.stderr
    assert not Store(store).attempts()


def test_entry_points_bound_by_assignment_import_or_a_conditional_are_found() -> None:
    from reweigh.entries import defined_names

    names = defined_names("import numpy as np\nfrom m import train\nrun = train\n"
                          "def evaluate(ctx): pass\nclass Model: pass\nx: int = 1\n", "t.py")
    assert {"np", "train", "run", "evaluate", "Model", "x"} <= names and "*" not in names
    assert "*" in defined_names("try:\n    from a import f\nexcept ImportError:\n    f = 1\n",
                                "t.py")
