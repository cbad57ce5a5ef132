"""Trigger search: a small patch that drives B to one class while A keeps its answers.

In the spirit of Neural Cleanse (Wang et al., 2019), but differential: we have the
clean reference A beside the suspect B, so instead of hunting for an unusually small
mask on B alone, we look for a patch of at most `pixels` pixels that makes B answer
the target class on inputs of other classes *while A's answers hold*. A planted
trigger is exactly such a patch, and B follows it nearly always. Two honest
trainings differ too, at the margins: the search finds patches that fool one more
than the other, but not ones the suspect follows nearly always (see FLAG_B).

For each target class: optimise a soft mask and pattern (Adam, a penalty on mask
area beyond the budget), keep the `pixels` strongest mask pixels, refine the
pattern on those pixels alone, then measure success on inputs the optimisation
never saw. A planted trigger serves one class, so besides being strong it stands
out: the best class's score beats every other class's by a wide margin (the idea of
Neural Cleanse's anomaly index across classes), where honest differences spread
over several classes alike. Runs inside the sandboxed child (it calls the recipe's
model); the result is plain data. It does not claim to find every trigger: a pattern larger
than the budget, or one that needs a transformation rather than a patch, is out
of its reach.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch  # imported where the search runs: the command line needs only the settings

# A trigger is flagged when it drives B on at least FLAG_B of the unseen victims while A
# follows it on at most FLAG_A, measured on at least MIN_VICTIMS inputs. A planted trigger
# exists to work nearly always; the clean reference ignores it. Between two honest
# trainings of digits-cnn with different seeds the best differential 9-pixel patch reached
# 0.42-0.48 on B (0.69 with twice the optimisation), so 0.8 keeps a margin above chance
# findings, and the gap B - A of at least 0.6 is what "while A's answers hold" means.
FLAG_B = 0.8
FLAG_A = 0.2
MIN_VICTIMS = 10
# A trigger is also flagged when it stands out: its score (B - A) is at least STAND_OUT and
# no other class's comes within MARGIN of it. A trigger fine-tuned into the last layer
# only, or under a tight weight bound, reaches B - A of 0.56-0.84 on digits-cnn, below
# FLAG_B, but no other class then reaches within 0.37 of it; among 14 honest networks (other
# seeds, clean fine-tunes) the best class's lead was at most 0.26, with scores up to 0.65
# (bench/trojans.py, three search seeds). Calibrated on that suite: a margin, not a proof.
STAND_OUT = 0.5
MARGIN = 0.3

Model = Callable[["torch.Tensor"], "torch.Tensor"]  # (B, C, H, W) -> (B, classes) logits


@dataclass(frozen=True)
class TriggerSettings:
    pixels: int = 0  # the patch budget; 0: a seventh of the image (9 of 64 for 8x8 digits)
    steps: int = 60  # soft-mask optimisation steps per target class
    refine_steps: int = 20  # pattern-only steps once the pixels are chosen
    fit_inputs: int = 64  # inputs the patch is optimised on; the rest measure it
    lr: float = 0.1
    seed: int = 0


@dataclass(frozen=True)
class Candidate:
    """The best patch found for one target class, measured on unseen inputs."""

    target: int
    pixels: tuple[tuple[int, int], ...]  # (row, column), strongest first
    pattern: tuple[tuple[float, ...], ...]  # per pixel, one value per channel
    success_a: float  # fraction of victims A answers `target` when patched
    success_b: float
    victims: int  # unseen inputs neither network answers `target` unpatched

    @property
    def score(self) -> float:
        return self.success_b - self.success_a

    @property
    def flagged(self) -> bool:
        return (self.success_b >= FLAG_B and self.success_a <= FLAG_A
                and self.victims >= MIN_VICTIMS)


@dataclass(frozen=True)
class TriggerResult:
    best: Candidate | None
    candidates: tuple[Candidate, ...] = field(default=())
    seconds: float = 0.0
    pixels: int = 0

    @property
    def margin(self) -> float:
        """How far the best class's score leads every other class's (a score below zero
        counts as zero: no class reached)."""
        if self.best is None:
            return 0.0
        others = [c.score for c in self.candidates if c.target != self.best.target]
        return self.best.score - max([0.0, *others])

    @property
    def flagged(self) -> bool:
        best = self.best
        if best is None:
            return False
        stands_out = (best.score >= STAND_OUT and self.margin >= MARGIN
                      and best.victims >= MIN_VICTIMS)
        return best.flagged or stands_out


def search(model_a: Model, model_b: Model, inputs: torch.Tensor, settings: TriggerSettings, *,
           value_range: tuple[float, float] = (0.0, 1.0),
           progress: Callable[[int, int], None] | None = None) -> TriggerResult:
    """The patch, per target class, that best separates B from A; the best overall.

    Runs on one thread: its batches are small, so more threads only add overhead (and
    on a busy machine, spinning), and the report must not depend on the thread count.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _search(model_a, model_b, inputs, settings, value_range, progress)
    finally:
        torch.set_num_threads(before)


def _search(model_a: Model, model_b: Model, inputs: torch.Tensor, settings: TriggerSettings,
            value_range: tuple[float, float],
            progress: Callable[[int, int], None] | None) -> TriggerResult:
    import torch

    started = time.perf_counter()
    x = inputs.detach().float()  # (N, C, H, W)
    if x.dim() != 4 or len(x) < 4:
        raise ValueError("trigger search needs images shaped (N, C, H, W), N >= 4")
    area = x.shape[2] * x.shape[3]
    budget = min(settings.pixels or max(1, round(area / 7)), area)
    with torch.no_grad():
        clean_a, clean_b = model_a(x).argmax(1), model_b(x).argmax(1)  # (N,)
    classes = int(model_b(x[:1]).shape[1])
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(settings.seed))
    cut = min(settings.fit_inputs, len(x) // 2)
    fit, held = order[:cut], order[cut:]  # optimise on one part, measure on the other
    candidates = []
    for target in range(classes):
        others = (clean_a != target) & (clean_b != target)  # (N,) victims of this target
        fit_t, held_t = fit[others[fit]], held[others[held]]
        if progress is not None:
            progress(target, classes)
        if len(fit_t) == 0 or len(held_t) == 0:
            continue
        chosen, pattern = _optimise(model_a, model_b, x[fit_t], clean_a[fit_t], target,
                                    value_range, budget, settings)
        candidates.append(_measure(model_a, model_b, x[held_t], target, chosen, pattern))
    best = max(candidates, key=lambda c: (c.flagged, c.score, -c.target), default=None)
    return TriggerResult(best, tuple(candidates), time.perf_counter() - started, budget)


def _optimise(model_a: Model, model_b: Model, x: torch.Tensor, answers_a: torch.Tensor,
              target: int, value_range: tuple[float, float], budget: int,
              settings: TriggerSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """The `budget` chosen pixels (flat indices, strongest first) and the pattern (C, H, W)."""
    import torch

    low, high = value_range
    _, channels, height, width = x.shape
    mask_logit = torch.full((height, width), -2.0, requires_grad=True)
    pattern_logit = torch.zeros((channels, height, width), requires_grad=True)
    goal = torch.full((len(x),), target, dtype=torch.long)

    def loss(mask: torch.Tensor) -> torch.Tensor:
        pattern = low + (high - low) * torch.sigmoid(pattern_logit)  # (C, H, W)
        patched = x * (1 - mask) + pattern * mask  # (n, C, H, W)
        fooled = torch.nn.functional.cross_entropy(model_b(patched), goal)
        held = torch.nn.functional.cross_entropy(model_a(patched), answers_a)
        return fooled + held

    optimiser = torch.optim.Adam([mask_logit, pattern_logit], lr=settings.lr)
    for _ in range(settings.steps):
        mask = torch.sigmoid(mask_logit)
        area = torch.relu(mask.sum() - budget) / budget
        total = loss(mask) + area
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
    chosen = torch.topk(mask_logit.detach().flatten(), budget).indices  # strongest first
    hard = torch.zeros(height * width)
    hard[chosen] = 1.0
    hard = hard.reshape(height, width)
    optimiser = torch.optim.Adam([pattern_logit], lr=settings.lr)
    for _ in range(settings.refine_steps):
        total = loss(hard)
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
    pattern = low + (high - low) * torch.sigmoid(pattern_logit.detach())
    return chosen, pattern


def _measure(model_a: Model, model_b: Model, x: torch.Tensor, target: int,
             chosen: torch.Tensor, pattern: torch.Tensor) -> Candidate:
    import torch

    _, channels, height, width = x.shape
    hard = torch.zeros(height * width)
    hard[chosen] = 1.0
    hard = hard.reshape(height, width)
    with torch.no_grad():
        patched = x * (1 - hard) + pattern * hard  # (n, C, H, W)
        success_a = (model_a(patched).argmax(1) == target).double().mean().item()
        success_b = (model_b(patched).argmax(1) == target).double().mean().item()
    pixels = tuple((int(i) // width, int(i) % width) for i in chosen)
    values = tuple(tuple(round(float(pattern[c, r, k]), 4) for c in range(channels))
                   for r, k in pixels)
    return Candidate(target, pixels, values, success_a, success_b, len(x))


def to_json(result: TriggerResult) -> dict[str, Any]:
    def candidate(c: Candidate) -> dict[str, Any]:
        return {"class": c.target, "pixels": [list(p) for p in c.pixels],
                "pattern": [list(v) for v in c.pattern], "success_a": c.success_a,
                "success_b": c.success_b, "victims": c.victims, "flagged": c.flagged}

    best = result.best
    return {"flagged": result.flagged, "best": candidate(best) if best else None,
            "margin": result.margin,
            "per_class": [candidate(c) for c in result.candidates],
            "pixels": result.pixels, "seconds": round(result.seconds, 3),
            "thresholds": {"success_b_at_least": FLAG_B, "success_a_at_most": FLAG_A,
                           "victims_at_least": MIN_VICTIMS,
                           "or_score_at_least": STAND_OUT, "with_margin_at_least": MARGIN}}
