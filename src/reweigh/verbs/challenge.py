"""`challenge`: is a published weights file what the recipe builds?

Rebuild (or reuse) the recipe's item, compare the published file with it as a
whole (tensor by tensor, then its metadata and how its header is written), run the
recipe's evaluation on both for behavioural evidence where the tensors differ, and
decide. `identical` means the same bytes; anything else names what differs. The
report is data; the command turns it into text and an exit code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..compare import (
    Behaviour,
    EnvRelation,
    MetadataDiff,
    TensorDiff,
    Verdict,
    behaviour_of,
    compare_whole,
    decide,
)
from ..digest import file_digest
from ..environment import claim_problem, platform_of
from ..errors import UsageError
from ..numerics import relate
from ..policy.evidence import UNISOLATED_NOTE, cluster_note
from ..policy.gather import cluster_of, isolation_of
from ..progress import QuietReporter, Reporter
from ..provenance import environment_of
from ..recipe import Tolerance
from ..store import Store, StoreItem
from ..weights import read_header
from .build import Plan, build_plan, plan, recipe_platform, sandboxed, threads_for


@dataclass(frozen=True)
class ChallengeReport:
    verdict: Verdict
    reasons: tuple[str, ...]
    item: Path
    derivation: str
    rebuilt_digest: str
    published: Path
    published_digest: str
    environment: EnvRelation
    environment_differences: tuple[str, ...]
    tensors: tuple[TensorDiff, ...]
    behaviour: Behaviour | None
    isolation: str = "unrecorded"  # how the rebuild was isolated ("none": unisolated)
    metadata: tuple[MetadataDiff, ...] = ()  # the __metadata__ keys that differ
    layout: tuple[str, ...] = ()  # how the published header is written differently
    claim: str = "none"  # the publisher's environment claim: none, unsigned or signed

    def to_json(self) -> dict[str, Any]:
        behaviour = None
        if self.behaviour is not None:
            behaviour = {**vars(self.behaviour), "metric_delta": self.behaviour.metric_delta}
        return {
            "verdict": self.verdict.value, "reasons": list(self.reasons),
            "item": str(self.item), "derivation": self.derivation,
            "rebuilt_weights_digest": self.rebuilt_digest,
            "published": str(self.published), "published_digest": self.published_digest,
            "environment": self.environment.value,
            "environment_differences": list(self.environment_differences),
            "environment_claim": self.claim,
            "isolation": self.isolation,
            "tensors": [vars(t) for t in self.tensors],
            "metadata": [m.to_json() for m in self.metadata],
            "header_layout": list(self.layout),
            "behaviour": behaviour,
        }


def challenge(recipe_dir: Path | str, published: Path | str, *,
              published_provenance: Path | str | None = None,
              published_signature: Path | str | None = None, store: Store | None = None,
              threads: int | None = None, reporter: Reporter | None = None) -> ChallengeReport:
    """`published_provenance` says where the publisher built the file, in their word;
    `published_signature` (a bundle of `reweigh sign`) says it under a key this user
    trusts: only that, or a rebuild here on another platform (`--platform`), earns the
    recipe's tolerance."""
    store = store or Store()
    reporter = reporter or QuietReporter()
    threads = threads_for(threads)
    published = Path(published)
    if not published.is_file():
        raise UsageError(f"{published}: no such file")
    published_file = read_header(published)  # bad files are refused before any build
    claimed = _claimed_environment(published_provenance)
    signed = None
    if published_signature is not None:  # checked before any build: a bad one is refused
        from .sign import signed_platform  # cryptography: only a signature needs it

        signed = signed_platform(Path(published_signature), file_digest(published))
    with store.gc_lock(exclusive=False):  # gc waits: what plan() found stays
        the_plan = plan(recipe_dir, store)
        built = build_plan(the_plan, store, threads, False, reporter)
        item = store.resolve(built.path.name)
        compared = compare_whole(read_header(item.weights), published_file)
        tensors = compared.tensors
        relation, differing, why = _relation(item, claimed, signed,
                                             recipe_platform(the_plan.recipe))
        behaviour = None
        needs_evidence = any(t.status != "identical" for t in tensors)
        if needs_evidence and the_plan.recipe.evaluate and all(
                t.status in ("identical", "changed") for t in tensors):
            behaviour = _behaviour(the_plan, store, item, published, threads, reporter)
        evaluation = the_plan.recipe.evaluate
        tolerance = evaluation.tolerance if evaluation else Tolerance()
        verdict, reasons = decide(compared, behaviour, tolerance, relation)
        if verdict is not Verdict.IDENTICAL:
            reasons = [*reasons, *why]
        isolation = isolation_of(item.path)
        if isolation == "none":
            reasons = [*reasons, f"the rebuild compared against was {UNISOLATED_NOTE}"]
        if (cluster := cluster_of(item.path)) is not None:
            reasons = [*reasons, f"the rebuild compared against was {cluster_note(cluster)}"]
        report = ChallengeReport(verdict, tuple(reasons), item.path, item.derivation,
                                 item.weights_digest, published, file_digest(published), relation,
                                 tuple(differing), tensors, behaviour, isolation,
                                 compared.metadata, compared.layout,
                                 "signed" if signed else "unsigned" if claimed else "none")
        store.record_check(item, "challenge", verdict.value, {
            "published": str(published), "published_digest": report.published_digest,
            "environment": relation.value})
        return report


def _claimed_environment(path: Path | str | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # bad UTF-8 or JSON, huge ints, depth
        raise UsageError(f"{path}: cannot read the published provenance: {e}") from e
    env = environment_of(data)
    if env is None:
        raise UsageError(f"{path}: predicate.runDetails.environment: missing; "
                         "not a reweigh provenance statement")
    if problem := claim_problem(env):
        raise UsageError(f"{path}: predicate.runDetails.environment: {problem}")
    return env


def _relation(item: StoreItem, claimed: dict[str, Any] | None, signed: dict[str, Any] | None,
              recipe_platform: str) -> tuple[EnvRelation, list[str], list[str]]:
    """The rebuild's platform (the item's record) against the claimed one, a signed claim
    first (see relate)."""
    local = platform_of(environment_of(
        json.loads((item.path / "provenance.json").read_text())) or {})
    if signed is not None:
        return relate(local, signed, recipe_platform, signed=True)
    return relate(local, None if claimed is None else platform_of(claimed), recipe_platform)


def _behaviour(the_plan: Plan, store: Store, item: StoreItem, published: Path, threads: int,
               reporter: Reporter) -> Behaviour:
    """Run the recipe's evaluation on both weights files in one sandboxed process."""
    recipe = the_plan.recipe
    assert recipe.evaluate is not None
    reporter.stage(f"evaluating both networks with {recipe.evaluate.entry}")
    with sandboxed(store, the_plan.recipe_code, threads, reporter, f"evaluating {recipe.name}",
                   "evaluate", mode="evaluate",
                   weights=(item.weights, published.resolve())) as (result, _):
        a, b = result.evaluations[0], result.evaluations[1]
    return behaviour_of(a["predictions"], b["predictions"], recipe.evaluate.tolerance.metric,
                        a["metrics"], b["metrics"])
