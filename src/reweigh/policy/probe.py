"""Runs inside the estimate's build process: the unchanged runtime, plus one FLOP count.

`reweigh estimate` starts this module instead of `reweigh.runtime` (same sandbox, same
spec). It counts the floating-point operations of the training between its first and
second `ctx.progress` calls with `torch.utils.flop_counter.FlopCounterMode`, which
sees matrix products and convolutions, forward and backward, through torch's
dispatcher. Counting slows those steps down, so the estimate starts its clock at the
second progress event. Nothing here changes what the training computes.
"""

from __future__ import annotations

import sys
from typing import Any

from .. import runtime


class FlopProbe:
    """Counts FLOPs from the first progress call to the second, then reports once."""

    def __init__(self) -> None:
        self.mode: Any = None
        self.first_done = 0
        self.done = False

    def on_progress(self, done: int) -> None:
        if self.done:
            return
        if self.mode is None:
            if "torch" not in sys.modules:  # numpy's operations are not torch's to count
                self.done = True
                return
            from torch.utils.flop_counter import FlopCounterMode

            self.mode = FlopCounterMode(display=False)
            self.mode.__enter__()
            self.first_done = done
            return
        self.mode.__exit__(None, None, None)
        self.done = True
        runtime.emit("flops", count=int(self.mode.get_total_flops()),
                     units=max(done - self.first_done, 0))


def main() -> None:
    probe = FlopProbe()
    report = runtime.BuildContext.progress

    def progress(self: runtime.BuildContext, done: int, total: int, label: str = "") -> None:
        probe.on_progress(done)
        report(self, done, total, label)

    runtime.BuildContext.progress = progress  # type: ignore[method-assign]
    runtime.main()


if __name__ == "__main__":
    main()
