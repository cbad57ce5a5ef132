"""The entry point (`cli/main.py`): usage errors in one line, a closed pipe ends quietly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .helpers import run_reweigh, write_recipe


def test_a_usage_error_names_the_program_once_in_one_line(store: Path) -> None:
    result = run_reweigh("list", "--bogus", store=store)
    assert result.returncode == 2
    assert result.stderr == "reweigh: unrecognized arguments: --bogus (hint: reweigh --help)\n"


def test_a_command_s_usage_error_names_the_command(store: Path) -> None:
    result = run_reweigh("build", store=store)
    assert result.returncode == 2
    assert result.stderr == ("reweigh build: the following arguments are required: recipe "
                             "(hint: reweigh build --help)\n")


def test_a_reader_that_goes_away_ends_the_command_quietly_with_the_sigpipe_status(
        tmp_path: Path, store: Path) -> None:
    """`reweigh show ITEM --json | head -c1`, with the reader gone before the first write:
    141 (128 + SIGPIPE) as `cat` would end, and nothing on stderr."""
    built = run_reweigh("build", write_recipe(tmp_path / "r"), store=store)
    assert built.returncode == 0, built.stderr
    item = built.stdout.splitlines()[-1]
    child = subprocess.Popen([sys.executable, "-m", "reweigh.cli.main", "show", item, "--json",
                              "--store", str(store)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None
    child.stdout.close()  # long before the interpreter has started
    _, stderr = child.communicate(timeout=120)
    assert (child.returncode, stderr) == (141, "")
