"""Provenance (in-toto Statement v1, SLSA Provenance v1 predicate) and the model card.

Both are generated from records the build already holds; nothing here reads or
writes files. The statement's subject is the weights file; its build definition
is the derivation with every resolved input and code file; its run details are
the builder and the environment the build ran in.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from . import __version__
from .derivation import Derivation
from .environment import fingerprint
from .inputs import ResolvedInput
from .policy.estimate import DEFAULT_MAX_CORE_HOURS
from .policy.evidence import RecipeFacts, StoreRecord, build_cost, from_recipe
from .policy.report import Settings
from .recipe import Recipe

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:reweigh:build-type:recipe:v1"
BUILDER_ID = "urn:reweigh:builder:local"


def _hex(digest: str) -> dict[str, str]:
    algorithm, value = digest.split(":", 1)
    return {algorithm: value}


def _time(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def statement(recipe: Recipe, drv: Derivation, inputs: tuple[ResolvedInput, ...],
              run: dict[str, Any]) -> dict[str, Any]:
    """`run` holds weights_digest, environment, started, finished, threads, attempt."""
    dependencies = [
        {"name": f"input:{i.name}", "digest": _hex(i.digest),
         **({"uri": i.origin["url"]} if "url" in i.origin else {}),
         "annotations": {"kind": i.kind, **{k: v for k, v in i.origin.items() if k != "url"}}}
        for i in inputs
    ] + [{"name": f"code:{rel}", "digest": _hex(digest)}
         for rel, digest in drv.record["code"].items()]
    env = run["environment"]
    return in_toto(
        run["weights_digest"], BUILD_TYPE,
        external={"recipe": {"name": recipe.name, "version": recipe.version,
                             "seed": recipe.seed, "entry": str(recipe.entry),
                             "params": recipe.params, "license": vars(recipe.license)},
                  "derivation": drv.digest},
        internal={"threads": run["threads"], "numerics": env.get("numerics"),
                  **{k: run[k] for k in ("workers", "cluster", "cluster_ranks") if k in run}},
        dependencies=dependencies,
        builder={"id": BUILDER_ID,
                 "version": {"reweigh": __version__, **env.get("packages", {})}},
        metadata={"invocationId": f"attempt-{run['attempt']}",
                  "startedOn": _time(run["started"]), "finishedOn": _time(run["finished"])},
        environment={**env, "fingerprint": fingerprint(env)})


def in_toto(weights_digest: str, build_type: str, *, external: dict[str, Any],
            dependencies: list[dict[str, Any]], builder: dict[str, Any],
            internal: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None,
            environment: dict[str, Any] | None = None) -> dict[str, Any]:
    """An in-toto Statement v1 about an item's weights with a SLSA Provenance v1 predicate:
    the one form of every item's provenance.json, built or imported."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": "weights.safetensors", "digest": _hex(weights_digest)}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {"buildType": build_type, "externalParameters": external,
                                "internalParameters": internal or {},
                                "resolvedDependencies": dependencies},
            "runDetails": {"builder": builder, "metadata": metadata or {},
                           "environment": environment or {}},
        },
    }


def environment_of(provenance: dict[str, Any]) -> dict[str, Any] | None:
    """The environment record inside a provenance statement, if it carries one."""
    try:
        env = provenance["predicate"]["runDetails"]["environment"]
    except (KeyError, TypeError):
        return None
    return env if isinstance(env, dict) else None


def model_card(recipe: Recipe, drv: Derivation, inputs: tuple[ResolvedInput, ...],
               run: dict[str, Any], metrics: dict[str, float]) -> str:
    """Markdown with Hugging Face-style YAML front matter (JSON scalars are valid YAML)."""
    env = run["environment"]
    datasets = [i.origin.get("package", "") + "/" + i.origin.get("resource", "")
                .removeprefix("dataset:") if i.kind == "package" else
                i.origin.get("url") or i.origin.get("path") or i.name
                for i in inputs if i.kind != "item"]
    bases = [i.origin["item"] for i in inputs if i.kind == "item"]
    front = [
        "---",
        f"license: {json.dumps(recipe.license.weights)}",
        "library_name: reweigh",
        f"tags: {json.dumps(['reweigh', 'reproducible'])}",
        f"datasets: {json.dumps(datasets)}",
        *([f"base_model: {json.dumps(bases[0] if len(bases) == 1 else bases)}"] if bases else []),
        f"metrics: {json.dumps(sorted(metrics))}",
        "model-index:",
        f"- name: {json.dumps(recipe.name)}",
        "  results:",
        "  - task: {\"type\": \"evaluation\"}",
        "    metrics:",
        *[f"    - {{\"type\": {json.dumps(k)}, \"value\": {json.dumps(v)}}}"
          for k, v in sorted(metrics.items())],
        "reweigh:",
        f"  derivation: {json.dumps(drv.digest)}",
        f"  weights_digest: {json.dumps(run['weights_digest'])}",
        f"  environment_fingerprint: {json.dumps(fingerprint(env))}",
        "---",
    ]
    body = [
        f"# {recipe.name} {recipe.version}", "",
        recipe.description or "Built from source by reweigh.", "",
        "## Licences", "",
        f"- code: {recipe.license.code}", f"- data: {recipe.license.data}",
        f"- weights: {recipe.license.weights}", "",
        "## Inputs", "",
        *[f"- `{i.name}` ({i.kind}): `{i.digest}`" for i in inputs], "",
        "## Evaluation", "",
        *([f"- {k}: {v:.6g}" for k, v in sorted(metrics.items())] or ["- none declared"]), "",
        "## Environment", "",
        f"- numerics platform: {drv.record.get('platform', 'native')} "
        f"(`{fingerprint(env)}`)" + (f"; native because: {recipe.platform_reason}"
                                     if recipe.platform_reason else ""),
        f"- Python {env.get('python')}, packages: "
        + ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items()),
        f"- BLAS: {env.get('blas')}",
        f"- CPU: {env.get('cpu_model')} ({env.get('cpu_arch')}, kernels "
        f"{env.get('cpu_capability')}, ISA: {' '.join(env.get('isa', []))})",
        f"- threads: {run['threads']}; workers: {run.get('workers', 1)}"
        + (f" (Ray cluster {run['cluster']})" if run.get("cluster") else "")
        + f"; numerics pinned: {json.dumps(env.get('numerics'))}",
        f"- network isolation: {env.get('network_isolation')}", "",
        "## Rebuild", "",
        f"`reweigh build {recipe.name}/ --check` rebuilds these weights from source; the same "
        "derivation on the same numerics platform (any machine that offers it, with the same "
        "library versions) gives a bit-identical `weights.safetensors`.", "",
        *policy_section(recipe, drv, inputs, run),
    ]
    return "\n".join(front + body)


def policy_section(recipe: Recipe, drv: Derivation, inputs: tuple[ResolvedInput, ...],
                   run: dict[str, Any]) -> list[str]:
    """The policies' verdicts from what this build knows (see `policy.policies`)."""
    facts = RecipeFacts(recipe, inputs, tuple(drv.record["code"]))
    store = StoreRecord(item=drv.item_name, builds=1,
                        environments=(fingerprint(run["environment"]),))
    evidence = from_recipe(facts, store=store, cost=build_cost(run),
                           weights_digest=run["weights_digest"])
    from .policy.policies import judge_all, markdown  # the licence stack: only a build pays

    reports = judge_all(evidence, Settings(DEFAULT_MAX_CORE_HOURS))
    return markdown(reports, "Judged when these weights were built, from the recipe, its "
                    "inputs and this build's measured cost. `reweigh check` judges again with "
                    "what the store learns later (rebuilds, challenges).")
