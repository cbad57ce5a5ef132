"""Progress: a real `reweigh build` in a pseudo-terminal shows tqdm's bar with elapsed time,
rate and time left; piped, or with --json, it shows none of it."""

from __future__ import annotations

import fcntl
import io
import os
import re
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from reweigh.progress import QuietReporter, TerminalReporter, reporter_for

from .helpers import run_reweigh, write_recipe

STEPS = 20
SLOW_TRAIN = f"""
import time

import numpy as np

def train(ctx):
    for step in range(1, {STEPS} + 1):
        time.sleep(0.1)
        ctx.progress(step, {STEPS}, f"loss {{1 / step:.3f}}")
    ctx.save_weights({{"w": np.zeros(2, dtype=np.float32)}})
"""
# tqdm's bar: "45%|████▌     | 9/20 [00:00<00:01, 9.93step/s, loss 0.111]"
BAR = re.compile(r"(\d+)%\|[^|]*\| (\d+)/20 \[(\d\d:\d\d)<(\d\d:\d\d|\?), +[\d.?]+ ?step/s")


def in_a_terminal(*args: object, store: Path, timeout: float = 300) -> tuple[int, str]:
    """Run the real command with stdin, stdout and stderr on a 100x30 pseudo-terminal."""
    main, side = os.openpty()
    fcntl.ioctl(main, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    command = [sys.executable, "-m", "reweigh.cli.main", *map(str, args), "--store", str(store)]
    process = subprocess.Popen(command, stdin=side, stdout=side, stderr=side,
                               start_new_session=True)
    os.close(side)
    output, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: every holder of the terminal's other side has gone
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(main)
        if process.poll() is None:
            process.kill()
    return process.wait(), output.decode("utf-8", "replace")


@pytest.mark.slow
def test_a_build_on_a_terminal_shows_elapsed_rate_and_time_left(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r", SLOW_TRAIN)
    code, output = in_a_terminal("build", recipe, store=tmp_path / "store")
    assert code == 0, output
    bars = BAR.findall(output)
    assert bars, output
    assert any(remaining not in ("?", "00:00") for *_, remaining in bars), bars
    assert bars[-1][:2] == ("100", "20")  # the last drawing is the whole build
    assert "loss 0.050" in output  # the recipe's label rides along
    assert output.rstrip().splitlines()[-1].strip().endswith("test-recipe-0.1")


@pytest.mark.slow
def test_piped_or_with_json_a_build_shows_no_bar(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r", SLOW_TRAIN)
    piped = run_reweigh("build", recipe, store=tmp_path / "piped")
    assert piped.returncode == 0, piped.stderr
    assert not BAR.search(piped.stderr) and "step/s" not in piped.stderr + piped.stdout
    assert "\r" not in piped.stderr
    code, output = in_a_terminal("build", recipe, "--json", store=tmp_path / "json")
    assert code == 0, output
    assert "step/s" not in output and "\r\n" in output  # the terminal's own newlines only
    assert "\r" not in output.replace("\r\n", "\n")


# --- the reporter itself ----------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_reporter_is_quiet_unless_a_terminal_and_not_json() -> None:
    assert isinstance(reporter_for(False, io.StringIO()), QuietReporter)
    assert isinstance(reporter_for(True, FakeTerminal()), QuietReporter)
    assert isinstance(reporter_for(False, FakeTerminal()), TerminalReporter)


def test_a_bar_starts_at_the_first_count_and_a_count_going_back_starts_another() -> None:
    screen = FakeTerminal()
    reporter = TerminalReporter(screen)
    reporter.progress(50, 100, "resumed")
    assert reporter.bar is not None and reporter.bar.n == 50
    first = reporter.bar
    reporter.progress(60, 100)
    assert reporter.bar is first and first.n == 60
    reporter.progress(10, 100)  # the next replayed segment
    assert reporter.bar is not first and reporter.bar.n == 10
    reporter.stage("evaluating")
    assert reporter.bar is None
    assert "60/100" in screen.getvalue() and "evaluating\n" in screen.getvalue()


def test_bytes_are_counted_in_binary_units() -> None:
    screen = FakeTerminal()
    reporter = TerminalReporter(screen)
    reporter.progress(3 * 1024 * 1024, 8 * 1024 * 1024, "weights.safetensors", unit="B")
    reporter.finish()
    assert "3.00M/8.00M" in screen.getvalue()
