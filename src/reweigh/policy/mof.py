"""The Model Openness Framework (LF AI & Data): completeness graded in three classes.

Class III (Open Model) asks for the architecture, the final parameters, a technical
report, evaluation results, a model card, a data card and sample outputs; Class II (Open
Tooling) adds training, inference and evaluation code, evaluation data and supporting
libraries; Class I (Open Science) adds a research paper, the training data sets, the data
preprocessing code and intermediate parameters. Code components must be under
OSI-approved licences, data and parameters under open licences.

How reweigh's evidence maps onto the components is stated on each line: the recipe's
code holds the architecture and the preprocessing; the generated model card and the
in-toto/SLSA provenance stand for the technical report; checkpoints are intermediate
parameters. reweigh holds no research paper, so it never grants Class I. Pure.
"""

from __future__ import annotations

from .debian import data_line, licence_line
from .evidence import DataStatus, Evidence, Origin
from .osaid import code_line
from .report import Line, PolicyReport, Settings, Status, Verdict, failing

TITLE = "Model Openness Framework"
SOURCE = "https://arxiv.org/abs/2403.13784 (MOF, LF AI & Data)"
CLASSES = ((Verdict.MOF_CLASS_III, "III"), (Verdict.MOF_CLASS_II, "II"),
           (Verdict.MOF_CLASS_I, "I"))


def _line(component: str, grade: str, ok: bool, present: str, absent: str) -> Line:
    return Line(f"{component} ({grade})", Status.OK if ok else Status.MISSING,
                present if ok else absent)


def _retag(line: Line, component: str, grade: str) -> Line:
    return Line(f"{component} ({grade})", line.status, line.text)


def class_three(e: Evidence) -> list[Line]:
    recipe = e.origin is Origin.RECIPE
    evaluated = e.evaluate is not None
    described = e.data_status is not DataStatus.UNAVAILABLE
    where = "in the store item" if e.built else "built from the recipe"
    return [
        _retag(code_line(e), "model architecture", "III"),
        _retag(licence_line("", e.weights_licence, "weights"), "final parameters", "III"),
        _line("technical report", "III", recipe, f"the model card and the in-toto/SLSA "
              f"provenance ({where}) record data, code, parameters, environment and metrics",
              "no recipe: nothing documents how the weights were made"),
        _line("evaluation results", "III", evaluated, f"{e.evaluate} ({where}: metrics.json)",
              "the recipe declares no [evaluate] entry" if recipe else "no evaluation"),
        _line("model card", "III", recipe, f"MODEL_CARD.md ({where})",
              "only a stub card: nothing is known about the training"),
        _line("data card", "III", recipe and described,
              f"the model card's inputs and the provenance name each input by digest and "
              f"origin ({e.data_note})", f"no description of the training data: {e.data_note}"),
        _line("sample outputs", "III", evaluated,
              f"{e.evaluate} returns predictions on held-out inputs",
              "no evaluation entry produces outputs"),
    ]


def class_two(e: Evidence) -> list[Line]:
    evaluated = e.evaluate is not None
    usable = e.data_status is not DataStatus.UNAVAILABLE
    return [
        _retag(code_line(e), "training code", "II"),
        _line("inference code", "II", evaluated, f"{e.evaluate} loads the weights and runs "
              "the model", "no code runs the model"),
        _line("evaluation code", "II", evaluated, str(e.evaluate), "no evaluation entry"),
        _line("evaluation data", "II", evaluated and usable,
              "the evaluation reads the recipe's own inputs (held out from training)",
              "no evaluation data available"),
        _line("supporting libraries", "II", e.origin is Origin.RECIPE,
              "reweigh and the build's packages, with versions, in the provenance",
              "unknown: no build environment recorded"),
    ]


def class_one(e: Evidence) -> list[Line]:
    return [
        Line("research paper (I)", Status.MISSING, "reweigh holds no research paper"),
        _retag(data_line(e), "datasets", "I"),
        _line("data preprocessing code", "I", bool(e.code),
              "part of the training code hashed into the derivation", "no code"),
        _line("intermediate parameters", "I", e.intermediate is not None, str(e.intermediate),
              "no checkpoints kept (build.checkpoint_every = 0 and none recorded)"
              if e.origin is Origin.RECIPE else "none: no training record"),
    ]


def evaluate(evidence: Evidence, settings: Settings) -> PolicyReport:
    groups = (class_three(evidence), class_two(evidence), class_one(evidence))
    lines = tuple(line for group in groups for line in group)
    verdict, reasons = Verdict.MOF_UNCLASSIFIED, tuple[str, ...]()
    for (grade, name), group in zip(CLASSES, groups, strict=True):
        problems = failing(group)
        if problems:
            reasons = tuple(f"Class {name} needs the {line.component.split(' (')[0]}: "
                            f"{line.status.value}: {line.text}" for line in problems)
            break
        verdict = grade
    if verdict is Verdict.MOF_CLASS_I:
        reasons = ("every component of Classes I to III is present under open licences",)
    return PolicyReport("mof", TITLE, SOURCE, verdict, reasons, lines)
