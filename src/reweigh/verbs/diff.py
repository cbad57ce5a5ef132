"""`diff`: where and how two networks of one architecture differ.

`challenge` answers *whether* a published file is what the recipe builds; `diff`
shows *where and how* two networks differ, so a user can judge what was changed:
the layers that moved (weight space), the answers that changed on the recipe's
evaluation data, a search for a hidden trigger, and for text models the prompts
whose continuations moved most. The reference A is usually a clean rebuild, the
suspect B the published file.

Weight space is measured here, on memory-mapped files, and so is the rest of the
file: metadata that differs is flagged (a loader may act on it), a header written
differently is said but not flagged, and tensors that moved less than the recipe's
tolerance are said too ("differs below tolerance"), never passed off as nothing.
Everything that needs the
model runs the recipe's own code in the sandboxed child (mode "audit", see
`reweigh.audit.child`); without an `evaluate.audit` entry the recipe's evaluation
still gives the disagreement, and the report says what it could not look at.
Nothing is built and nothing is written to the store but the recipe's inputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..audit import behaviour as audit_behaviour
from ..audit.probes import Probe, load_probes
from ..audit.trigger import TriggerSettings
from ..audit.weights import LayerDiff, layer_diffs
from ..compare import MetadataDiff, layout_differences, metadata_differences, metadata_summary
from ..digest import file_digest
from ..errors import BuildError, RecipeError, UsageError
from ..job import AuditSettings
from ..progress import QuietReporter, Reporter
from ..recipe import Tolerance
from ..store import Store
from ..weights import WeightsFile, read_header
from .build import Plan, plan, sandboxed, threads_for


@dataclass(frozen=True)
class DiffOptions:
    top: int = 10  # how many diverging inputs to show
    trigger: TriggerSettings | None = field(default_factory=TriggerSettings)  # None: skip
    probes: Path | None = None  # a probe set in place of the recipe's `evaluate.probes`
    length: int = 8  # tokens each text model writes per prompt
    threads: int | None = None


@dataclass(frozen=True)
class DiffReport:
    recipe: str
    a: Path
    b: Path
    a_digest: str
    b_digest: str
    layers: tuple[LayerDiff, ...]
    layer_threshold: float
    behaviour: dict[str, Any] | None = None  # sections as the audit modules wrote them
    trigger: dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    notes: tuple[str, ...] = ()  # what was not looked at, and why
    metadata: tuple[MetadataDiff, ...] = ()  # the __metadata__ keys that differ
    layout: tuple[str, ...] = ()  # how B's header is written differently from A's

    @property
    def flagged(self) -> bool:
        return bool(self.findings())

    @property
    def below_tolerance(self) -> int:
        """How many tensors differ without being flagged."""
        return sum(1 for layer in self.layers if not (layer.identical or layer.flagged))

    def findings(self) -> list[str]:
        """One line per flagged thing; empty when nothing is."""
        metadata = [metadata_summary(self.metadata, "A", "B")] if self.metadata else []
        return [*_layer_findings(self), *metadata, *_behaviour_findings(self.behaviour),
                *_trigger_findings(self.trigger), *_text_findings(self.text)]

    def verdict(self) -> str:
        """The one-line outcome: flagged, differing below every flag, or nothing."""
        if self.flagged:
            return "flagged"
        if count := self.below_tolerance:
            return f"differs below tolerance in {count} tensor{'s' * (count != 1)}"
        if self.layout:
            return "nothing flagged; the header is written differently"
        return "nothing flagged"

    def to_json(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "a": {"path": str(self.a), "digest": self.a_digest},
            "b": {"path": str(self.b), "digest": self.b_digest},
            "flagged": self.flagged, "verdict": self.verdict(),
            "below_tolerance": self.below_tolerance, "findings": self.findings(),
            "notes": list(self.notes),
            "metadata": [m.to_json() for m in self.metadata], "header_layout": list(self.layout),
            "layers": [layer.to_json() for layer in self.layers],
            "layer_threshold": self.layer_threshold,
            "behaviour": self.behaviour, "trigger": self.trigger, "text": self.text,
        }


def diff(a: Path | str, b: Path | str, recipe: Path | str, *, store: Store | None = None,
         options: DiffOptions | None = None, reporter: Reporter | None = None) -> DiffReport:
    """Compare A (the reference) with B (the suspect) in every way the recipe allows."""
    store = store or Store()
    options = options or DiffOptions()
    reporter = reporter or QuietReporter()
    with store.gc_lock(exclusive=False):  # gc waits: what plan() found stays
        (weights_a, digest_a), (weights_b, digest_b) = weights_of(a, store), weights_of(b, store)
        file_a, file_b = weights_a.path, weights_b.path
        the_plan = plan(recipe, store)
        evaluation = the_plan.recipe.evaluate
        tolerance = evaluation.tolerance if evaluation else Tolerance()
        layers = layer_diffs(weights_a, weights_b, tolerance.weights_rel_l2)
        report = DiffReport(the_plan.recipe.name, file_a, file_b, digest_a, digest_b,
                            tuple(layers), tolerance.weights_rel_l2,
                            metadata=metadata_differences(weights_a, weights_b),
                            layout=layout_differences(weights_a, weights_b))
        if all(layer.identical for layer in layers):
            return replace(report, notes=(IDENTICAL_TENSORS,))
        if evaluation is None:
            return replace(report, notes=("the recipe has no [evaluate]: weight space only",))
        if evaluation.audit is None:
            return _behaviour_from_evaluation(report, the_plan, store, options, reporter)
        return _audit(report, the_plan, store, options, reporter)


# The recipe's code is given the tensors alone (not the header's metadata or layout), so
# two files with the same tensors are the same network to it: its answers, probes and
# triggers are the same, and running it twice would only say so after seconds.
IDENTICAL_TENSORS = ("the tensors are identical, bit for bit: the recipe's code would "
                     "answer alike for both, so it was not run")


def weights_of(ref: Path | str, store: Store) -> tuple[WeightsFile, str]:
    """A weights file, a folder holding one, or a store reference -> the file's checked
    header and its digest (hashed here, except for a store item named by reference, whose
    digest the store recorded). A bad file is refused before anything runs."""
    path = Path(ref)
    if path.is_file() or (path / "weights.safetensors").is_file():
        file = (path if path.is_file() else path / "weights.safetensors").resolve()
        return read_header(file), file_digest(file)
    try:
        item = store.resolve(str(ref))
        return read_header(item.weights), item.weights_digest
    except UsageError:
        if path.suffix == ".safetensors" or "/" in str(ref):
            raise UsageError(f"{ref}: no such weights file or store item") from None
        raise


def _audit(report: DiffReport, the_plan: Plan, store: Store, options: DiffOptions,
           reporter: Reporter) -> DiffReport:
    evaluation = the_plan.recipe.evaluate
    assert evaluation is not None and evaluation.audit is not None
    probes = _probes(the_plan, options)
    settings = AuditSettings(str(evaluation.audit), options.top,
                             evaluation.tolerance.agreement,
                             asdict(options.trigger) if options.trigger else None,
                             tuple((p.topic, p.prompt) for p in probes), options.length)
    data = _run(the_plan, store, options, reporter, mode="audit", audit=settings,
                weights=(report.a, report.b)).audit or {}
    if data.get("kind") == "text":
        notes = () if probes else ("no probe set: give --probes FILE or evaluate.probes",)
        return replace(report, text=data["text"] if probes else None, notes=notes)
    notes = ()
    if options.trigger is None:
        notes = ("trigger search skipped (--no-trigger)",)
    elif data.get("trigger") is None:
        notes = ("trigger search needs image inputs shaped (N, C, H, W)",)
    return replace(report, behaviour=data.get("behaviour"), trigger=data.get("trigger"),
                 notes=notes)


def _behaviour_from_evaluation(report: DiffReport, the_plan: Plan, store: Store,
                               options: DiffOptions, reporter: Reporter) -> DiffReport:
    """Without an audit entry: the evaluation's answers, as certain one-hot outputs."""
    evaluation = the_plan.recipe.evaluate
    assert evaluation is not None
    result = _run(the_plan, store, options, reporter, mode="evaluate",
                  weights=(report.a, report.b))
    answers_a = np.asarray(result.evaluations[0]["predictions"], dtype=np.int64)
    answers_b = np.asarray(result.evaluations[1]["predictions"], dtype=np.int64)
    if len(answers_a) == 0 or len(answers_a) != len(answers_b):
        return replace(report, notes=("the evaluation gave no comparable predictions",))
    classes = int(max(answers_a.max(), answers_b.max())) + 1
    section = audit_behaviour.compare(np.eye(classes)[answers_a], np.eye(classes)[answers_b],
                                      None, options.top, evaluation.tolerance.agreement)
    return replace(report, behaviour=section, notes=(
        "the recipe has no evaluate.audit entry: behaviour from its evaluation's answers "
        "only; no labels, output probabilities, trigger search or text probes",))


def _probes(the_plan: Plan, options: DiffOptions) -> tuple[Probe, ...]:
    if options.probes is not None:
        return load_probes(Path(options.probes))
    evaluation = the_plan.recipe.evaluate
    if evaluation is None or evaluation.probes is None:
        return ()
    directory = the_plan.recipe.directory.resolve()
    path = (directory / evaluation.probes).resolve()
    if not path.is_relative_to(directory):
        raise RecipeError(str(the_plan.recipe.file), "evaluate.probes",
                          "leaves the recipe directory")
    return load_probes(path)


def _run(the_plan: Plan, store: Store, options: DiffOptions, reporter: Reporter,
         **extra: Any) -> Any:
    """Run the recipe's code on both networks in one sandboxed child."""
    reporter.stage(f"running {the_plan.recipe.name}'s code on both networks")
    try:
        with sandboxed(store, the_plan.recipe_code, threads_for(options.threads), reporter,
                       f"running {the_plan.recipe.name}'s code on A and B", "diff",
                       **extra) as (result, _):
            return result
    except BuildError as e:  # the networks do not fit the recipe's code: bad input
        raise UsageError(f"{e.message} (are A and B networks of {the_plan.recipe.file}?)",
                         hint=e.hint, details=e.details) from e


def _layer_findings(report: DiffReport) -> list[str]:
    moved = [layer for layer in report.layers if layer.flagged]
    if not moved:
        return []
    names = ", ".join(f"{m.name} ({m.rel_l2:.3g})" for m in moved[:6])
    more = f" and {len(moved) - 6} more" if len(moved) > 6 else ""
    return [f"{len(moved)} of {len(report.layers)} tensors moved beyond relative L2 "
            f"{report.layer_threshold:g}: {names}{more}"]


def _behaviour_findings(section: dict[str, Any] | None) -> list[str]:
    if section is None:
        return []
    found = []
    if section["flagged"]:
        found.append(f"answers differ on {section['disagreement']:.1%} of {section['samples']} "
                     f"evaluation inputs (tolerance {section['disagreement_threshold']:.1%})")
    found += [f"class {c['class']}: {c['moved_in']} inputs moved in, {c['moved_out']} out"
              for c in section["classes"] if c["flagged"]]
    return found


def _trigger_findings(section: dict[str, Any] | None) -> list[str]:
    if section is None or not section["flagged"]:
        return []
    best = section["best"]
    return [f"trigger: a {len(best['pixels'])}-pixel patch drives B to class {best['class']} "
            f"on {best['success_b']:.0%} of unseen inputs; A follows on {best['success_a']:.0%}; "
            f"it leads every other class by {section['margin']:.2f} (B minus A)"]


def _text_findings(section: dict[str, Any] | None) -> list[str]:
    if section is None:
        return []
    return [f"prompt {p['prompt']!r}" + (f" ({p['topic']})" if p["topic"] else "")
            + f": KL {p['kl']:.3g}; B writes {p['continuation_b']!r} where A writes "
            f"{p['continuation_a']!r}" for p in section["prompts"] if p["flagged"]]
