"""One reporter for progress: bars on a terminal, silence when piped or with --json.

Library functions never print; they call a reporter, and the CLI picks which.
"""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO


class Reporter(Protocol):
    def stage(self, text: str) -> None: ...
    def progress(self, done: int, total: int, label: str = "") -> None: ...
    def finish(self) -> None: ...


class QuietReporter:
    def stage(self, text: str) -> None:
        pass

    def progress(self, done: int, total: int, label: str = "") -> None:
        pass

    def finish(self) -> None:
        pass


class TerminalReporter:
    """Draws one updating line on a terminal (at most ten redraws a second)."""

    WIDTH = 30

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.drawn = False
        self.last = 0.0

    def stage(self, text: str) -> None:
        self.finish()
        self.stream.write(f"{text}\n")
        self.stream.flush()

    def progress(self, done: int, total: int, label: str = "") -> None:
        now = time.monotonic()
        if done < total and now - self.last < 0.1:
            return
        self.last = now
        fraction = min(max(done / total, 0.0), 1.0) if total > 0 else 0.0
        filled = round(fraction * self.WIDTH)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        self.stream.write(f"\r  [{bar}] {fraction:6.1%} {done}/{total} {label}\x1b[K")
        self.stream.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


def reporter_for(quiet: bool, stream: TextIO | None = None) -> Reporter:
    stream = stream or sys.stderr
    if quiet or not stream.isatty():
        return QuietReporter()
    return TerminalReporter(stream)
