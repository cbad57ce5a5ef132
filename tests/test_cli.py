"""The entry point (`cli/main.py`): usage errors in one line, a closed pipe ends quietly;
and the options every command that runs recipe code shares."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from reweigh import __version__

from .conftest import Examples
from .helpers import run_json, run_reweigh, write_recipe


def test_a_usage_error_names_the_program_once_in_one_line(store: Path) -> None:
    result = run_reweigh("list", "--bogus", store=store)
    assert result.returncode == 2
    assert result.stderr == "reweigh: unrecognized arguments: --bogus (hint: reweigh --help)\n"


def test_a_command_s_usage_error_names_the_command(store: Path) -> None:
    result = run_reweigh("build", store=store)
    assert result.returncode == 2
    assert result.stderr == ("reweigh build: the following arguments are required: recipe "
                             "(hint: reweigh build --help)\n")


@pytest.mark.slow
def test_a_reader_that_goes_away_ends_the_command_quietly_with_the_sigpipe_status(
        examples: Examples) -> None:
    """`reweigh show ITEM --json | head -c1`, with the reader gone before the first write:
    141 (128 + SIGPIPE) as `cat` would end, and nothing on stderr."""
    built = examples.built("minimal")  # only read
    item, store = str(built.item), built.store
    child = subprocess.Popen([sys.executable, "-m", "reweigh.cli.main", "show", item, "--json",
                              "--store", str(store)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None
    child.stdout.close()  # long before the interpreter has started
    _, stderr = child.communicate(timeout=120)
    assert (child.returncode, stderr) == (141, "")


@pytest.mark.parametrize("command", ["build", "challenge", "check", "diff", "estimate",
                                     "adapt", "verify"])
def test_each_command_that_runs_recipe_code_says_its_thread_default(command: str) -> None:
    result = run_reweigh(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "--threads N" in result.stdout
    assert "(default 1: for the examples, two threads were up to 15x slower" in \
        " ".join(result.stdout.split())


@pytest.mark.slow
def test_recipe_code_runs_on_one_thread_unless_asked(tmp_path: Path, store: Path) -> None:
    recipe = write_recipe(tmp_path / "r")
    assert run_json("build", recipe, store=store)["threads"] == 1


def test_no_command_imports_torch_at_start_up() -> None:
    """The parser with every command registered (what `reweigh --help` makes) imports
    each command's module: none may import torch, which adds 1.5 s or more to the start of
    every command (recipe code imports it in a process of its own)."""
    code = ("import sys\nfrom reweigh.cli.main import make_parser\nmake_parser()\n"
            "print(sorted(name for name in ('torch', 'tqdm') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


# What `reweigh build` of a built recipe, piped, leaves unimported: it draws no bar and
# parses no licence, and each of these costs milliseconds at start-up (-X importtime).
LAZY = ("tqdm",)
IMPORTED = """
import sys
from reweigh.cli.main import main
code = main(sys.argv[1:])
print(sorted(name for name in {lazy!r} if name in sys.modules))
sys.exit(code)
"""


@pytest.mark.slow
def test_reusing_a_built_item_imports_neither_bars_nor_the_licence_parser(
        examples: Examples, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r")  # the shared item's recipe, in another folder
    store = examples.copy("minimal", tmp_path).store
    result = subprocess.run([sys.executable, "-c", IMPORTED.format(lazy=LAZY), "build",
                             str(recipe), "--store", str(store)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


def test_version_imports_no_command() -> None:
    """`reweigh --version` registers no command, so it imports none of their modules (all
    of them took 0.36 s; scripts ask it to find which reweigh they run)."""
    code = ("import sys, runpy\nsys.argv = ['reweigh', '--version']\ntry:\n"
            "    runpy.run_module('reweigh.cli.main', run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "print(sorted(m for m in sys.modules if m.startswith(('reweigh.verbs', "
            "'reweigh.cli.build'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"reweigh {__version__}", "[]"]
