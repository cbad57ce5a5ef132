"""Recompute cost: from a few observed training steps to the whole training (pure).

Guix's rule is that a network must be realistically recomputable from its training data.
`reweigh estimate` runs the real build for a few seconds and records when each
`ctx.progress(done, total)` event arrived; this module turns that observation into the
time of the whole build, core-hours, floating-point operations and the time on a
declared reference machine. Start-up (interpreter, torch import, data loading) is
measured once, up to the first progress event; the time per step is measured after it
(after the second event when the first interval was slowed by counting FLOPs).

Assumptions, stated in the output: steps cost the same throughout training; the
evaluation after training is not included; core-hours are wall-clock hours times the
threads the build used (the cores it occupied).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

# One "commodity machine": what Guix's build farm or a contributor can devote to one
# package for a week. Its cores are assumed as fast as this machine's, and the training is
# assumed to use all of them (perfect scaling: the estimate errs towards packageable only
# through that assumption, which the output states).
WEEK_HOURS = 7 * 24.0


@dataclass(frozen=True)
class ReferenceMachine:
    name: str
    cores: int
    memory_gib: int
    budget_hours: float  # wall-clock hours of this machine a recompute may take

    @property
    def max_core_hours(self) -> float:
        return self.cores * self.budget_hours

    def describe(self) -> str:
        return (f"{self.name}: {self.cores} CPU cores (each as fast as one of this machine's), "
                f"{self.memory_gib} GiB memory, no GPU; budget {self.budget_hours:g} h")


REFERENCE = ReferenceMachine("one commodity machine", cores=8, memory_gib=32,
                             budget_hours=WEEK_HOURS)
DEFAULT_MAX_CORE_HOURS = REFERENCE.max_core_hours  # 1344 core-hours: one week, 8 cores
# When no torch operation could be counted (scikit-learn, numpy), FLOPs are guessed from
# the CPU time: 1e10 FLOP/s per core is a sustained rate for vectorised float64 code on a
# current x86-64 core (a few GHz, SIMD, well below peak).
HEURISTIC_FLOPS_PER_CORE_SECOND = 1e10


class Bound(Enum):
    MEASURED = "measured"  # the whole build ran: no extrapolation
    EXTRAPOLATED = "extrapolated"
    LOWER_BOUND = "lower bound"  # too few steps were seen: the build takes at least this
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Sample:
    at: float  # when the event arrived (seconds, wall clock)
    done: int
    total: int


@dataclass(frozen=True)
class Observation:
    """What the estimate run saw."""

    started: float
    ended: float
    finished: bool  # the build ran to the end
    threads: int
    samples: tuple[Sample, ...]
    flops: float | None = None  # counted over `flop_units` progress units, if any
    flop_units: int = 0  # > 0: FLOPs were counted (slowly) between the first two events


@dataclass(frozen=True)
class CostEstimate:
    bound: Bound
    threads: int
    wall_seconds: float | None  # the whole build, on this machine, with `threads`
    startup_seconds: float | None
    seconds_per_step: float | None
    total_steps: int | None
    measured_steps: int  # steps whose time the rate comes from
    observed_seconds: float  # how long the estimate ran
    flops: float | None
    flops_how: str
    note: str = ""

    @property
    def core_hours(self) -> float | None:
        return None if self.wall_seconds is None else self.wall_seconds * self.threads / 3600

    def reference_hours(self, machine: ReferenceMachine = REFERENCE) -> float | None:
        hours = self.core_hours
        return None if hours is None else hours / machine.cores

    def to_json(self) -> dict[str, Any]:
        return {"bound": self.bound.value, "threads": self.threads,
                "wall_seconds": self.wall_seconds, "core_hours": self.core_hours,
                "startup_seconds": self.startup_seconds,
                "seconds_per_step": self.seconds_per_step, "total_steps": self.total_steps,
                "measured_steps": self.measured_steps,
                "observed_seconds": self.observed_seconds, "flops": self.flops,
                "flops_method": self.flops_how, "note": self.note,
                "reference_machine": {"description": REFERENCE.describe(),
                                      "cores": REFERENCE.cores,
                                      "hours": self.reference_hours()}}


@dataclass(frozen=True)
class _Timing:
    wall: float
    startup: float | None = None
    per_step: float | None = None
    measured: int = 0


def extrapolate(seen: Observation) -> CostEstimate:
    """The whole build's cost from what the estimate run saw."""
    observed = seen.ended - seen.started
    if seen.finished:
        return _estimate(seen, Bound.MEASURED, _Timing(observed),
                         "the whole build ran within the estimate's time")
    if not seen.samples:
        return _estimate(seen, Bound.LOWER_BOUND, _Timing(observed),
                         "the training reported no progress (ctx.progress) before it was "
                         "stopped: the build takes at least this long")
    first = seen.samples[0]
    clock = seen.samples[1] if seen.flop_units and len(seen.samples) > 1 else first
    later = [s for s in seen.samples if s.done > clock.done]
    total = seen.samples[-1].total
    startup = first.at - seen.started
    if later:
        last = later[-1]
        per_step = (last.at - clock.at) / (last.done - clock.done)
        wall = startup + max(total - first.done, 0) * per_step
        return _estimate(seen, Bound.EXTRAPOLATED,
                         _Timing(wall, startup, per_step, last.done - clock.done),
                         "steps are assumed to cost the same throughout; the evaluation "
                         "after training is not included")
    # No step completed after the clock started: each takes at least the time waited.
    per_step = seen.ended - clock.at
    wall = (clock.at - seen.started) + max(total - clock.done, 0) * per_step
    return _estimate(seen, Bound.LOWER_BOUND, _Timing(wall, startup, per_step),
                     f"no step finished within {per_step:.1f} s of the clock starting: "
                     "each step takes at least that long")


def _estimate(seen: Observation, bound: Bound, timing: _Timing, note: str) -> CostEstimate:
    total = seen.samples[-1].total if seen.samples else None
    flops, how = _flops(seen, total, timing.wall)
    return CostEstimate(bound, seen.threads, timing.wall, timing.startup, timing.per_step,
                        total, timing.measured, seen.ended - seen.started, flops, how, note)


def _flops(seen: Observation, total: int | None, wall: float) -> tuple[float, str]:
    if seen.flops and seen.flop_units > 0 and total:
        per_unit = seen.flops / seen.flop_units
        return per_unit * total, (
            f"counted: torch.utils.flop_counter.FlopCounterMode over {seen.flop_units} "
            f"step(s) ({per_unit:.3g} FLOP per step, matrix products and convolutions, "
            f"forward and backward) x {total} steps")
    rate = HEURISTIC_FLOPS_PER_CORE_SECOND
    return wall * seen.threads * rate, (
        f"heuristic: core-seconds x {rate:.0e} FLOP/s per core (no torch matrix product or "
        "convolution was seen to count)")
