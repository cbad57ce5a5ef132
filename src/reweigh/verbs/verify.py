"""`verify`: check a training transcript by replaying a few of its segments.

Before any replay, every checkpoint file must have its recorded digest and the
chain must hold; a transcript of another derivation, or whose checkpoints are not
the derivation's (`checkpoint_every`), is refused, and so is a malformed checkpoint.
Then the segments `transcript.choose` picks (the last, the first, the largest update
of each stretch of training, K at random) are replayed from their published starting
states, one after the other in a single sandboxed build process (its start-up is paid
once), and each replayed end state is compared with the next published checkpoint;
a failing segment names the tensors that differ and by how much.

A segment's update is measured from the checkpoints alone, without training: the
largest relative L2 distance of one of the model's weight tensors (the state's tensors
that carry the name and shape of a tensor of the verified weights; every float tensor
of the state when none does) between the checkpoint it starts from and the one it
ends at. It is read memory-mapped, a chunk at a time (`compare.distances`). A forger
who jumps to planted weights makes one segment's update far larger than training's
own late in training; one who spreads the jump thin enough to make no stretch's
largest update is left to the random picks, and the report says with what odds.

On the environment the transcript was recorded on (or when it names none) the
comparison is bit for bit. On another environment, floating-point results legitimately
drift a little, so each segment may drift by the recipe's per-segment tolerance: the
drift of one segment, not of the whole training, which is far smaller and so leaves a
forger far less room. The last segment runs training to its end, so its weights must
also be the weights being verified: fine-tuning after training is caught there.

What it does not do: replay what it does not pick. A forgery spread over segments that
each move the weights less than their stretch's largest update is caught only by the
random picks, with the odds the report states; only `build --check` replays it all.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

from .. import states
from .. import transcript as tr
from ..builder import ChildResult
from ..compare import EnvRelation
from ..derivation import Derivation, read_record
from ..digest import file_digest
from ..environment import platform_of
from ..errors import UsageError
from ..job import Replay
from ..numerics import ENV_CHOICE, NATIVE, default_name, machine_arch, relate
from ..progress import QuietReporter, Reporter
from ..recipe import Recipe, Tolerance, load_recipe
from ..store import Store
from ..weights import WeightsFile, read_header, unique_keys
from .build import RecipeCode, plan, sandboxed, threads_for

STRETCHES = 3  # default Q: stretches of training whose largest update is always replayed
SPREADS = (1, 2, 5, 10)  # forgeries of this many segments get their odds in the report


@dataclass(frozen=True)
class Sampling:
    """Which segments to replay besides the last (`--spot`, `--largest`, `--seed`): the
    segment with the largest update in each of `largest` (Q) stretches of training, and
    the first, and `spot` (K) drawn at random; each a count, or a Fraction: a share of
    all the segments, rounded up."""

    spot: int | Fraction
    largest: int | Fraction = STRETCHES
    seed: int | None = None  # None: a fresh random seed


@dataclass(frozen=True)
class SegmentResult:
    index: int
    start_step: int
    stop_step: int
    expected: str
    replayed: str | None
    holds: bool
    seconds: float
    note: str = ""
    drift: float | None = None  # worst relative L2 of a state tensor (another environment)
    why: tr.Why = tr.Why.RANDOM  # why it was replayed
    update: float | None = None  # its measured update (None: the first, unmeasurable)
    difference: states.Difference | None = None  # what differed, when it fails

    def to_json(self) -> dict[str, Any]:
        return {**vars(self), "why": self.why.value,
                "difference": vars(self.difference) if self.difference else None}


@dataclass(frozen=True)
class VerifyReport:
    target: Path
    derivation: str
    transcript: Path
    segments_total: int
    seed: int
    chain_ok: bool
    problems: tuple[str, ...]
    results: tuple[SegmentResult, ...]
    compute_fraction: float  # replayed training steps / all training steps
    environment: str = "same"  # same | unknown | other: where the transcript was recorded
    tolerance: float = 0.0  # the per-segment drift allowed on another environment
    stretches: int = 0  # Q: stretches whose largest update was replayed
    drawn: int = 0  # K: segments drawn at random
    population: int = 0  # the segments they were drawn from
    catch: dict[int, float] = field(default_factory=dict)  # m forged segments -> odds
    environment_reasons: tuple[str, ...] = ()  # the platforms' relation in words

    @property
    def holds(self) -> bool:
        return self.chain_ok and all(r.holds for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {"verdict": "holds" if self.holds else "fails", "holds": self.holds,
                "target": str(self.target), "derivation": self.derivation,
                "transcript": str(self.transcript), "segments_total": self.segments_total,
                "seed": self.seed, "chain_ok": self.chain_ok, "problems": list(self.problems),
                "segments": [r.to_json() for r in self.results],
                "compute_fraction": self.compute_fraction, "environment": self.environment,
                "environment_reasons": list(self.environment_reasons),
                "tolerance": self.tolerance,
                "sampling": {"stretches": self.stretches, "random": self.drawn,
                             "drawn_from": self.population},
                "catch": {"largest_update": 1.0,
                          "not_largest": {str(m): p for m, p in self.catch.items()}}}


@dataclass(frozen=True)
class _Subject:
    """What is verified: weights, the derivation they claim, its code and inputs."""

    weights: WeightsFile  # checked on the way in: a malformed file is bad input (exit 2)
    code: RecipeCode
    tolerance: Tolerance


def verify(target: Path | str, transcript: Path | str, sampling: Sampling, *,
           recipe: Path | str | None = None, store: Store | None = None,
           threads: int | None = None, reporter: Reporter | None = None) -> VerifyReport:
    """Check `transcript` (its chain, its derivation, its checkpoints) against the weights
    `target` (a store item, or a file with `recipe`) and replay the segments `sampling`
    picks. Bad input (a malformed file, another derivation's transcript) raises
    UsageError or WeightsError; a chain that breaks or a segment that does not replay is
    a report that does not hold."""
    store = store or Store()
    reporter = reporter or QuietReporter()
    threads = threads_for(threads)
    seed = secrets.randbelow(2**31) if sampling.seed is None else sampling.seed
    transcript = Path(transcript).absolute()
    parsed = _load(transcript)
    target = Path(target)
    with store.gc_lock(exclusive=False):  # gc waits: the item and inputs found stay
        subject = _subject(target, recipe, store)
        if parsed.derivation != subject.code.derivation.digest:
            raise UsageError(f"{transcript}: derivation: the transcript is of {parsed.derivation}"
                             f", not of the verified weights' {subject.code.derivation.digest}")
        problems = _chain_problems(parsed, transcript.parent)
        segments_total = len(parsed.checkpoints)  # one segment ends at each checkpoint
        if problems:
            return VerifyReport(target, parsed.derivation, transcript, segments_total, seed,
                                False, tuple(problems), (), 0.0)
        selection, moved = _select(parsed, transcript, subject, sampling, seed)
        chosen = [p.segment for p in selection.picks]
        total = parsed.checkpoints[-1].step
        tolerance = segment_tolerance(subject.tolerance, total, max(s.steps for s in chosen))
        with _replayed(subject, chosen, transcript.parent, store, threads, reporter) as replay:
            relation, why = _relation(parsed.environment, replay.result.environment,
                                      subject.code.derivation.record)
            allowed = tolerance if relation is EnvRelation.OTHER else 0.0
            results = tuple(_judge(subject, pick, moved, transcript.parent, replay, allowed)
                            for pick in selection.picks)
        fraction = sum(s.steps for s in chosen) / total
        return VerifyReport(target, parsed.derivation, transcript, segments_total, seed,
                            True, (), results, fraction, relation.value, allowed,
                            selection.stretches, selection.drawn, selection.population,
                            {m: selection.catch(m) for m in SPREADS}, tuple(why))


def segment_tolerance(tolerance: Tolerance, total_steps: int, segment_steps: int) -> float:
    """The drift one segment may show on another environment: the recipe's own
    `segment_rel_l2`, else its end-to-end `weights_rel_l2` scaled down as drift that
    accumulates like a random walk would be (by the square root of the step share)."""
    if tolerance.segment_rel_l2 is not None:
        return tolerance.segment_rel_l2
    return tolerance.weights_rel_l2 * math.sqrt(segment_steps / total_steps)


def _relation(recorded: dict[str, Any] | None, local: dict[str, Any],
              derivation: dict[str, Any]) -> tuple[EnvRelation, list[str]]:
    """The replay's platform against the one the transcript records (see relate): the
    derivation names the platform the transcript must have been recorded on."""
    relation, _, why = relate(platform_of(local), platform_of(recorded) if recorded else None,
                              derivation.get("platform", NATIVE))
    return relation, why


def _load(path: Path) -> tr.Transcript:
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=unique_keys)
    except (OSError, ValueError, RecursionError) as e:  # bad UTF-8 or JSON, huge ints, depth
        raise UsageError(f"{path}: cannot read the transcript: {e}") from e
    return tr.parse(data, str(path))


def _subject(target: Path, recipe: Path | str | None, store: Store) -> _Subject:
    if recipe is not None:
        if not target.is_file():
            raise UsageError(f"{target}: no such weights file")
        the_plan = plan(recipe, store, own_platform=True)  # --platform moves the replay only
        return _Subject(read_header(target), the_plan.recipe_code, _tolerance(the_plan.recipe))
    if target.is_file():
        raise UsageError(f"{target}: a weights file needs --recipe to say how it was built")
    item = store.resolve(str(target))
    record = read_record(item.path / "derivation.json")
    source = item.path / "source"
    code = {rel: source / rel for rel in record["code"]}
    inputs = {}
    for name, entry in record["inputs"].items():
        found = (store.resolve(entry["digest"]).path if entry["kind"] == "item"
                 else store.input_path(entry["digest"]))
        if found is None:
            raise UsageError(f"input {name} ({entry['digest']}) is not in the store")
        inputs[name] = found
    derivation = Derivation(item.derivation, record)
    return _Subject(read_header(item.weights), RecipeCode(derivation, code, inputs),
                    _tolerance(load_recipe(source / "recipe.toml")))


def _tolerance(recipe: Recipe) -> Tolerance:
    return recipe.evaluate.tolerance if recipe.evaluate else Tolerance()


def _chain_problems(parsed: tr.Transcript, folder: Path) -> list[str]:
    problems = []
    root = folder.resolve()
    for c in parsed.checkpoints:
        path = folder / c.file
        try:
            if not path.resolve().is_relative_to(root):
                problems.append(f"step {c.step}: {c.file} leads out of the transcript's folder")
            elif not path.is_file():
                problems.append(f"step {c.step}: checkpoint file {c.file} is missing")
            elif file_digest(path) != c.digest:
                problems.append(f"step {c.step}: {c.file} does not have its recorded digest")
        except (OSError, ValueError) as e:  # a name too long, a NUL byte, no permission
            problems.append(f"step {c.step}: {c.file} cannot be read ({e})")
    problems += [f"step {step}: the chain link does not follow from the entries before it"
                 for step in tr.broken_links(parsed)]
    return problems


def _select(parsed: tr.Transcript, path: Path, subject: _Subject, sampling: Sampling,
            seed: int) -> tuple[tr.Selection, dict[int, float]]:
    """The segments to replay, and each segment's update by index (the first has none:
    it starts from the initialisation, which is not published). Refused first: segments
    other than the derivation's, and a malformed checkpoint."""
    every = int(subject.code.derivation.record.get("checkpoint_every", 0))
    if problem := tr.grid_problem(parsed, every):
        raise UsageError(f"{path}: {problem}")
    moved = states.updates([path.parent / c.file for c in parsed.checkpoints], subject.weights)
    updates = dict(enumerate(moved, start=1))
    count = len(parsed.checkpoints)
    return tr.choose(tr.segments(parsed), updates, seed=seed,
                     stretches=tr.spot_count(sampling.largest, count),
                     spot=tr.spot_count(sampling.spot, count)), updates


@dataclass
class _Replay:
    out: Path
    result: ChildResult
    began: dict[int, float]  # segment stop step -> when its replay started


@contextlib.contextmanager
def _replayed(subject: _Subject, chosen: list[tr.Segment], folder: Path, store: Store,
              threads: int, reporter: Reporter) -> Iterator[_Replay]:
    """Replay the chosen segments in one sandboxed process; its output lives as long
    as the caller judges it."""
    reporter.stage(f"replaying {len(chosen)} segments: "
                   + ", ".join(f"{(s.start.step if s.start else 0)}..{s.stop.step}"
                               for s in chosen))
    replays = tuple(Replay(str(folder / s.start.file) if s.start else None,
                           None if s.last else s.stop.step) for s in chosen)
    code = subject.code
    if asked := os.environ.get(ENV_CHOICE):  # --platform: replay on another platform
        drv = code.derivation
        moved = {**drv.record, "platform": default_name(asked, machine_arch())}
        code = replace(code, derivation=Derivation(drv.digest, moved))
    with sandboxed(store, code, threads, reporter, "replaying segments", "replay",
                   replays=replays) as (result, out):
        began = {s.stop.step: at for s, at in zip(chosen, result.segments_began, strict=False)}
        yield _Replay(out, result, began)


def _judge(subject: _Subject, pick: tr.Pick, updates: Mapping[int, float], folder: Path,
           replay: _Replay, allowed: float) -> SegmentResult:
    segment = pick.segment
    made = next((c for c in replay.result.checkpoints if c["step"] == segment.stop.step), None)
    start_step = segment.start.step if segment.start else 0
    seconds = (made["at"] - replay.began[segment.stop.step]) if made else 0.0
    result = SegmentResult(segment.index, start_step, segment.stop.step, segment.stop.digest,
                           None, False, seconds, "the replay made no checkpoint there",
                           why=pick.why, update=updates.get(segment.index))
    if made is None:
        return result
    replayed, published = replay.out / made["file"], folder / segment.stop.file
    holds, note, drift = made["digest"] == segment.stop.digest, "", None
    if not holds and allowed > 0:
        drift = states.drift(replayed, published)
        holds = drift <= allowed
        note = f"drift {drift:.2e} {'within' if holds else 'beyond'} {allowed:.2e}"
    difference = None if holds else states.difference(replayed, published)
    if segment.last and holds:
        weights = replay.out / "weights.safetensors"
        holds = weights.is_file() and _same_weights(weights, subject.weights.path, allowed)
        if not holds:
            difference = (states.difference(weights, subject.weights.path) if weights.is_file()
                          else None)
            note = "the final weights are not what training produces"
    if difference is not None:
        note = f"{note}: {difference.describe()}" if note else difference.describe()
    return replace(result, replayed=made["digest"], holds=holds, note=note, drift=drift,
                   difference=difference)


def _same_weights(replayed: Path, published: Path, allowed: float) -> bool:
    if file_digest(replayed) == file_digest(published):
        return True
    return allowed > 0 and states.drift(replayed, published) <= allowed
