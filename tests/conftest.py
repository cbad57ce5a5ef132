"""Shared fixtures: a fresh store per test, and the shipped examples built once per run.

Training is what makes this suite slow, so each example a test reads (and each variant of
one: another seed, a shorter training) is built at most once per test run, when a test first
asks for it, into a store of its own under the session's temporary folder:
`examples.built("digits-cnn")`. Nothing is kept between runs: every run trains afresh, so
a change to the builder or to an example is tested by the run that follows it.

Tests read these stores; they may run the commands that read a store (challenge, diff,
verify, check, show), which leave only check records and scratch folders behind. A test
that must change a store in a way another test could see (build into it, `--check` it,
count its attempts, collect it) works on its own copy: `examples.copy("digits-cnn",
tmp_path)`. At the end of the run each shared store must still hold exactly its one item,
with the weights it was built with; a test that built into one fails the run there.

Tests about building itself (determinism across thread counts and stores, `--check`, the
sandbox, an unprivileged user) still build what they test.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .helpers import EXAMPLES, variant, write_recipe

# Where PYTHONDONTWRITEBYTECODE is set (CI machines, this one), each test worker rewrote
# and compiled every test module anew at each run (pytest's assertion rewriting: 5 s of
# CPU a worker). The test process keeps that cache (tests/__pycache__, ignored by git; a
# recipe's __pycache__ is never part of its code). Commands and recipe code run in
# processes of their own, which this does not change.
sys.dont_write_bytecode = False


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


# --- the quick tier: `-m "not slow"` ------------------------------------------------------

# A test is slow when it takes seconds: it starts recipe code (a build, a replay, an
# evaluation, an estimate: each a sandboxed interpreter importing torch), trains or plays a
# network, runs a command that loads torch, or starts a browser. Mark it @pytest.mark.slow
# (or its module, with pytestmark); a test that reads the shared builds is marked here, as
# it may be the one that trains them. The rest, the quick tier, runs in under a minute.
BUILDS = frozenset({"examples", "digits_cnn", "backdoor_diff"})
QUICK_HINT_SECONDS = 2.0  # a quick-tier test slower than this is named at the end of the run


QUICK_EXAMPLES = 25  # examples of a fuzz test in the quick tier; the full run keeps its own


@pytest.hookimpl(tryfirst=True)  # before -m deselects by the marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    quick = _quick(config)
    for item in items:
        if BUILDS & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        elif quick:
            _fewer_examples(getattr(item, "obj", None))


def _quick(config: pytest.Config) -> bool:
    return "not slow" in (config.getoption("markexpr") or "")


def _fewer_examples(function: Any) -> None:
    """A Hypothesis test runs QUICK_EXAMPLES examples in the quick tier (its fuzzers took a
    third of the tier's time). Hypothesis keeps a test's settings on the function, under a
    name it does not document: if a later version moves them, this does nothing."""
    from hypothesis import settings

    current = getattr(function, "_hypothesis_internal_use_settings", None)
    if isinstance(current, settings) and current.max_examples > QUICK_EXAMPLES:
        function._hypothesis_internal_use_settings = settings(current,
                                                             max_examples=QUICK_EXAMPLES)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """In the quick tier, name the tests that took long: a hint, never a failure (the
    machine may be busy), for whoever keeps the tier under a minute."""
    if not _quick(config):
        return
    slow = sorted(((report.duration, report.nodeid)
                   for reports in terminalreporter.stats.values() for report in reports
                   if getattr(report, "when", None) == "call"
                   and report.duration >= QUICK_HINT_SECONDS), reverse=True)
    if slow:
        terminalreporter.write_line(f"quick tier: {len(slow)} test(s) took over "
                                    f"{QUICK_HINT_SECONDS:g} s; mark them slow if they run "
                                    "recipe code (tests/conftest.py):")
        for duration, nodeid in slow[:10]:
            terminalreporter.write_line(f"  {duration:5.1f} s  {nodeid}")


# --- the examples, built once per run -------------------------------------------------------

TEXTGEN_SMOKE_STEPS = 400  # of the shipped 1500: enough to learn its corpus (test_textgen)

# The recipes the shared stores are built from: a name -> (where to put a variant) -> recipe.
# examples/digits-cnn keeps the files of its last 3 checkpoints; the tests of verify keep
# all 35 (retention is no part of the derivation: the same item, the same transcript's
# derivation), so that every segment's update is measured. test_checkpoints builds the
# shipped recipe itself.
KEEP_DIGITS = "\nkeep_last = 3\n"


def digits_keeping_all(where: Path, old: str = KEEP_DIGITS, new: str = "\n") -> Path:
    """examples/digits-cnn at `where`, keeping every checkpoint's file (and `new` for
    `old` besides)."""
    return variant("digits-cnn", where, KEEP_DIGITS, "\n",
                   *([(old, new)] if old != KEEP_DIGITS else []))


RECIPES: dict[str, Callable[[Path], Path]] = {
    "digits-cnn": digits_keeping_all,
    "digits-logreg": lambda _: EXAMPLES / "digits-logreg",
    "connect4-zero-smoke": lambda _: EXAMPLES / "connect4-zero" / "smoke.toml",
    # another seed: every tensor differs, the architecture and the data do not
    "digits-cnn-seed-4242": lambda where: digits_keeping_all(where, "seed = 20231",
                                                            "seed = 4242"),
    # data-parallel digits-cnn built plainly: test_workers rebuilds it on 3 workers,
    # test_cluster on 2 with a worker on a Ray cluster
    "digits-cnn-sharded": lambda _: EXAMPLES / "digits-cnn" / "sharded.toml",
    "textgen-smoke": lambda where: variant("textgen", where, "\nsteps = 1500\n",
                                           f"\nsteps = {TEXTGEN_SMOKE_STEPS}\n"),
    # helpers.write_recipe as it stands: for tests that need an item, any item (the same
    # recipe written elsewhere is the same derivation, so a build of it reuses this one)
    "minimal": write_recipe,
}


# CPUs emulated on this one: each setting caps what the machine offers in all three
# libraries (torch's own kernels, oneDNN, MKL), as an older CPU would. A portable build's
# weights must not change under either (test_platform and the thread tests use them).
AVX512 = {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
          "MKL_ENABLE_INSTRUCTIONS": "AVX512"}
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


@contextmanager
def emulated(caps: dict[str, str]) -> Iterator[None]:
    """This process's environment with `caps` set, for an in-process build (the command
    reads them from its environment)."""
    before = {key: os.environ.get(key) for key in caps}
    os.environ.update(caps)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass(frozen=True)
class Built:
    """A store holding one built recipe: the store's root, the item's folder, the recipe."""

    store: Path
    item: Path
    recipe: Path

    def moved(self, root: Path) -> Built:
        """The same item in a copy of the store at `root`."""
        return Built(root, root / self.item.relative_to(self.store), self.recipe)


class Examples:
    """The shared stores, each built on first use (one thread: on a busy two-core machine
    two threads spin against each other; the weights are the same either way, which
    test_build checks with builds of its own).

    With pytest-xdist the workers of one run share them: the first worker to ask for a
    build makes it while holding its lock file, the others wait on that lock and read
    what it wrote (`built.json`, or `failed.txt` when the build failed)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._built: dict[tuple[str, int], Built] = {}

    def built(self, name: str, threads: int = 1) -> Built:
        """`name` built with `threads` threads into a store of its own; `threads` other
        than 1 gives a second, independent build, on an emulated AVX-512 CPU (the
        emulation matrix of test_platform reads it: one build for both questions)."""
        key = (name, threads)
        if key not in self._built:
            folder = self.root / (name if threads == 1 else f"{name}-{threads}-threads")
            with _locked(self.root / f"{folder.name}.lock"):
                self._built[key] = self._build_once(name, threads, folder)
        return self._built[key]

    @staticmethod
    def _build_once(name: str, threads: int, folder: Path) -> Built:
        """The build in `folder`: made now, or read back from the worker that made it."""
        from reweigh import build
        from reweigh.store import Store, remove_tree

        record, failed = folder / "built.json", folder / "failed.txt"
        if failed.exists():  # one failed build, reported once, not retried by every test
            pytest.fail(f"the shared build of {name} failed earlier: {failed.read_text()}")
        if record.exists():
            paths = json.loads(record.read_text())
            return Built(Path(paths["store"]), Path(paths["item"]), Path(paths["recipe"]))
        if folder.exists():  # a worker died while building: start again
            remove_tree(folder)  # items are read-only: shutil.rmtree fails as a user
        folder.mkdir()
        recipe = RECIPES[name](folder / "recipe")
        try:
            with emulated(AVX512 if threads != 1 else {}):
                report = build(recipe, store=Store(folder / "store"), threads=threads)
        except Exception as e:
            failed.write_text(f"{type(e).__name__}: {e}")
            raise
        built = Built(folder / "store", report.path, recipe)
        record.write_text(json.dumps({"store": str(built.store), "item": str(built.item),
                                      "recipe": str(built.recipe)}))
        return built

    def copy(self, name: str, where: Path, threads: int = 1) -> Built:
        """A copy of the shared store of `name` at where/store, for a test that changes it.
        Item and input folders keep their names (their content addresses) and their
        read-only modes; the index keeps its rows, attempts and checks."""
        built = self.built(name, threads)
        shutil.copytree(built.store, where / "store", symlinks=True)
        return built.moved(where / "store")

    def check_untouched(self) -> None:
        """Each shared store still holds its one item, with the weights it was built with."""
        from reweigh.digest import file_digest
        from reweigh.store import Store

        for (name, _), built in self._built.items():
            items = Store(built.store).items()
            assert [i.path for i in items] == [built.item], (
                f"a test changed the shared store of {name} ({built.store}): it holds "
                f"{[i.path.name for i in items]}; change a copy instead (examples.copy)")
            assert file_digest(built.item / "weights.safetensors") == items[0].weights_digest, (
                f"a test changed the weights of the shared {name} item")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on the file `path` (created if need be), held for the block."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def shared_temp(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder of this run that every pytest-xdist worker sees (each worker's own
    temporary folder lies in the run's; without xdist it is the run's)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    folder = base / name
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Examples]:
    shared = Examples(shared_temp(tmp_path_factory, "examples"))
    yield shared
    shared.check_untouched()


@pytest.fixture(scope="session")
def digits_cnn(examples: Examples) -> tuple[Path, Path]:
    """The shared build of examples/digits-cnn: (store, item)."""
    built = examples.built("digits-cnn")
    return built.store, built.item


# --- session-wide audits of the shared build (diff, report) ----------------------------------

@pytest.fixture(scope="session")
def backdoor_diff(digits_cnn: tuple[Path, Path],
                  tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`reweigh diff` of the clean digits-cnn against a copy with a planted trigger (fc1 only
    fine-tuned, patch -> class 3), run once through the real command with --report (once
    per run: pytest-xdist workers read what the first one wrote, as with the examples)."""
    from dataclasses import asdict

    from . import backdoor
    from .helpers import run_reweigh

    store, item = digits_cnn
    folder = shared_temp(tmp_path_factory, "backdoor")
    suspect, report, record = (folder / "published.safetensors", folder / "report.html",
                               folder / "diff.json")
    with _locked(folder.with_suffix(".lock")):
        if not record.exists():
            planted = backdoor.plant(item / "weights.safetensors", suspect, target=3,
                                     layers=("fc1.",))  # on one thread (backdoor.fine_tune)
            result = run_reweigh("diff", item, suspect, "--recipe", EXAMPLES / "digits-cnn",
                                 "--json", "--report", report, "--threads", 1, store=store)
            assert result.returncode in (0, 1), result.stderr
            record.write_text(json.dumps({"planted": asdict(planted), "code": result.returncode,
                                          "report": json.loads(result.stdout)}))
    seen = json.loads(record.read_text())
    return {"planted": backdoor.Backdoor(**seen["planted"]), "code": seen["code"],
            "report": seen["report"], "html": report, "suspect": suspect}
