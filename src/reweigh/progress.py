"""One reporter for progress: tqdm bars on a terminal, silence when piped or with --json.

Library functions never print; they call a reporter, and the CLI picks which. Every long
step goes through it: a build's and a replay's `ctx.progress` events (forwarded by the
builder from the sandboxed process), diff's trigger search, and any step that counts
bytes (`unit="B"`, shown in KB/MB). On a terminal the bar is tqdm's: done/total, the
share, elapsed time, rate and the time left. A bar starts at the first event's count,
so a replay or a resumed build that begins half way measures its rate from there, not
from zero; a count that goes back (the next segment of a replay) starts a new bar.

It draws nothing else: not when stderr is not a terminal (a pipe, a file, CI), not
with --json, and it never writes to stdout, whose last line is a command's result.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, Protocol, TextIO

if TYPE_CHECKING:
    from tqdm import tqdm


class Reporter(Protocol):
    def stage(self, text: str) -> None: ...
    def progress(self, done: int, total: int, label: str = "", unit: str = "step") -> None: ...
    def finish(self) -> None: ...


class QuietReporter:
    def stage(self, text: str) -> None:
        pass

    def progress(self, done: int, total: int, label: str = "", unit: str = "step") -> None:
        pass

    def finish(self) -> None:
        pass


class TerminalReporter:
    """One tqdm bar at a time on `stream`, redrawn at most ten times a second."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.bar: tqdm | None = None

    def stage(self, text: str) -> None:
        self.finish()
        self.stream.write(f"{text}\n")
        self.stream.flush()

    def progress(self, done: int, total: int, label: str = "", unit: str = "step") -> None:
        bar = self.bar
        if bar is None or done < bar.n or total != bar.total or unit != bar.unit:
            bar = self._start(done, total, unit)
        if label:
            bar.set_postfix_str(label, refresh=False)
        bar.update(done - bar.n)  # the events carry counts so far; tqdm adds increments

    def _start(self, done: int, total: int, unit: str) -> tqdm:
        from tqdm import tqdm  # imported by the first bar drawn: piped or --json, never

        self.finish()
        self.bar = tqdm(total=total if total > 0 else None, initial=done, unit=unit,
                        unit_scale=unit == "B", unit_divisor=1024 if unit == "B" else 1000,
                        file=self.stream, leave=True, mininterval=0.1, smoothing=0.1,
                        **_width(self.stream))
        return self.bar

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _width(stream: TextIO) -> dict[str, Any]:
    """Follow the terminal's width; one that reports no size (a bare pty) is 80x24, as tqdm
    would otherwise hide its bar there."""
    try:
        known = os.get_terminal_size(stream.fileno()).columns > 0
    except (OSError, ValueError, AttributeError):
        known = False
    return {"dynamic_ncols": True} if known else {"ncols": 80, "nrows": 24}


def reporter_for(quiet: bool, stream: TextIO | None = None) -> Reporter:
    stream = stream or sys.stderr
    if quiet or not stream.isatty():
        return QuietReporter()
    return TerminalReporter(stream)
