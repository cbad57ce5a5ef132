"""`verify`: check a training transcript by replaying a few of its segments.

Before any replay, every checkpoint file must have its recorded digest and the
chain must hold; a transcript of another derivation is refused. Then K random
segments and always the last are replayed from their published starting state,
in a sandboxed build process, and each replayed end state is compared with the
next published checkpoint (bit for bit: this verifier and the transcript must
share an environment; across environments the check is not done yet). The last
segment runs training to its end, so its weights must also equal the weights
being verified: fine-tuning after training is caught there.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import transcript as tr
from ..builder import child_spec, raise_for_failure, run_child, stage_source
from ..derivation import Derivation
from ..digest import file_digest
from ..errors import BuildError, UsageError
from ..progress import QuietReporter, Reporter
from ..store import Store, remove_tree
from .build import plan, threads_for


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

    @property
    def holds(self) -> bool:
        return self.chain_ok and all(r.holds for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {"verdict": "holds" if self.holds else "fails", "holds": self.holds,
                "target": str(self.target), "derivation": self.derivation,
                "transcript": str(self.transcript), "segments_total": self.segments_total,
                "seed": self.seed, "chain_ok": self.chain_ok, "problems": list(self.problems),
                "segments": [vars(r) for r in self.results],
                "compute_fraction": self.compute_fraction}


@dataclass(frozen=True)
class _Subject:
    """What is verified: weights, the derivation they claim, its code and inputs."""

    weights: Path
    derivation: Derivation
    source: dict[str, Path]
    inputs: dict[str, Path]


def verify(target: Path | str, transcript: Path | str, *, spot: int, seed: int | None = None,
           recipe: Path | str | None = None, store: Store | None = None,
           threads: int | None = None, reporter: Reporter | None = None) -> VerifyReport:
    store = store or Store()
    reporter = reporter or QuietReporter()
    threads = threads_for(threads)
    seed = secrets.randbelow(2**31) if seed is None else seed
    transcript = Path(transcript)
    parsed = _load(transcript)
    subject = _subject(Path(target), recipe, store)
    if parsed.derivation != subject.derivation.digest:
        raise UsageError(f"{transcript}: derivation: the transcript is of {parsed.derivation}, "
                         f"not of the verified weights' {subject.derivation.digest}")
    problems = _chain_problems(parsed, transcript.parent)
    all_segments = tr.segments(parsed)
    if problems:
        return VerifyReport(Path(target), parsed.derivation, transcript, len(all_segments), seed,
                            False, tuple(problems), (), 0.0)
    chosen = tr.choose(all_segments, spot, seed)
    results = tuple(_replay(subject, segment, transcript.parent, store, threads, reporter)
                    for segment in chosen)
    total = parsed.checkpoints[-1].step
    fraction = sum(s.steps for s in chosen) / total
    return VerifyReport(Path(target), parsed.derivation, transcript, len(all_segments), seed,
                        True, (), results, fraction)


def _load(path: Path) -> tr.Transcript:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: cannot read the transcript: {e}") from e
    return tr.parse(data, str(path))


def _subject(target: Path, recipe: Path | str | None, store: Store) -> _Subject:
    if recipe is not None:
        if not target.is_file():
            raise UsageError(f"{target}: no such weights file")
        the_plan = plan(recipe, store)
        return _Subject(target, the_plan.derivation, the_plan.code, the_plan.input_paths)
    if target.is_file():
        raise UsageError(f"{target}: a weights file needs --recipe to say how it was built")
    item = store.resolve(str(target))
    record = json.loads((item.path / "derivation.json").read_text())
    source = item.path / "source"
    code = {rel: source / rel for rel in record["code"]}
    inputs = {}
    for name, entry in record["inputs"].items():
        found = (store.resolve(entry["digest"]).path if entry["kind"] == "item"
                 else store.input_path(entry["digest"]))
        if found is None:
            raise UsageError(f"input {name} ({entry['digest']}) is not in the store")
        inputs[name] = found
    return _Subject(item.weights, Derivation(item.derivation, record), code, inputs)


def _chain_problems(parsed: tr.Transcript, folder: Path) -> list[str]:
    problems = []
    for c in parsed.checkpoints:
        path = folder / c.file
        if not path.is_file():
            problems.append(f"step {c.step}: checkpoint file {c.file} is missing")
        elif file_digest(path) != c.digest:
            problems.append(f"step {c.step}: {c.file} does not have its recorded digest")
    problems += [f"step {step}: the chain link does not follow from the entries before it"
                 for step in tr.broken_links(parsed)]
    return problems


def _replay(subject: _Subject, segment: tr.Segment, folder: Path, store: Store, threads: int,
            reporter: Reporter) -> SegmentResult:
    start_step = segment.start.step if segment.start else 0
    reporter.stage(f"replaying steps {start_step}..{segment.stop.step}"
                   + (" (the last segment)" if segment.last else ""))
    work = store.new_build_dir(subject.derivation.digest)
    began = time.monotonic()
    try:
        out = work / "out"
        out.mkdir()
        replay = {"start": str(folder / segment.start.file) if segment.start else None,
                  "stop": None if segment.last else segment.stop.step}
        record = {**subject.derivation.record, "evaluate": None}
        spec = child_spec(record, stage_source(subject.source, work), subject.inputs, threads,
                          out=str(out), replay=replay)
        log = work / "replay.log"
        result = run_child(spec, work, log, reporter)
        try:
            raise_for_failure(result, log, f"replaying segment {segment.index}")
        except BuildError as e:
            kept = store.keep_log(log, f"{subject.derivation.item_name}-replay-{segment.index}")
            e.hint = f"log: {kept}"
            raise
        replayed = next((c["digest"] for c in result.checkpoints
                         if c["step"] == segment.stop.step), None)
        holds, note = replayed == segment.stop.digest, ""
        if segment.last and holds:
            weights = out / "weights.safetensors"
            holds = weights.is_file() and file_digest(weights) == file_digest(subject.weights)
            note = "" if holds else "the final weights are not what training produces"
        return SegmentResult(segment.index, start_step, segment.stop.step, segment.stop.digest,
                             replayed, holds, time.monotonic() - began, note)
    finally:
        remove_tree(work)
