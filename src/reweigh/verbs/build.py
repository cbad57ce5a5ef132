"""`build`: recipe -> store item, reusing what is there; `check`: rebuild and compare.

Planning (recipe, inputs, code, derivation) is separated from running so that
`challenge` and later verbs can ask "which item would this recipe give?" without
building. Under the derivation's lock a second builder waits, then finds the
item the first one committed: two concurrent builds train once.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import numerics, provenance, transcript
from .. import sandbox as sandboxing
from ..builder import (
    ChildResult,
    log_tail,
    raise_for_failure,
    run_child,
    stage_source,
)
from ..cluster import cluster_ranks
from ..derivation import Derivation, code_files, derive, hash_code, whole_floats
from ..digest import canonical_json, file_digest, tree_files
from ..entries import check_entries
from ..environment import fingerprint
from ..errors import BuildError
from ..inputs import ResolvedInput, resolve_inputs
from ..job import AuditSettings, Job, Replay, for_derivation, workers_asked
from ..keeper import Keeper, Kept
from ..progress import QuietReporter, Reporter
from ..recipe import Recipe, load_recipe
from ..store import Store, StoreItem, cores, remove_tree
from ..weights import read_header

if TYPE_CHECKING:
    from ..compare import TensorDiff


@dataclass(frozen=True)
class RecipeCode:
    """What running a recipe's code needs: the derivation it claims, its code files
    (path in the recipe -> file) and its inputs (name -> path)."""

    derivation: Derivation
    files: dict[str, Path]
    inputs: dict[str, Path]

    @property
    def folder(self) -> Path | None:
        """The folder the code files lie in (the recipe's, or a store item's source/)."""
        for rel, path in self.files.items():
            return path.parents[len(Path(rel).parts) - 1]
        return None


@dataclass(frozen=True)
class Plan:
    recipe: Recipe
    inputs: tuple[ResolvedInput, ...]
    code: dict[str, Path]
    derivation: Derivation

    @property
    def input_paths(self) -> dict[str, Path]:
        return {i.name: i.path for i in self.inputs}

    @property
    def recipe_code(self) -> RecipeCode:
        return RecipeCode(self.derivation, self.code, self.input_paths)


@dataclass(frozen=True)
class CheckResult:
    identical: bool
    rebuilt_digest: str
    differing: tuple[TensorDiff, ...]


@dataclass(frozen=True)
class BuildReport:
    path: Path
    name: str
    version: str
    derivation: str
    weights_digest: str
    reused: bool
    threads: int
    check: CheckResult | None = None
    platform: str = "native"  # the numerics platform's name (the derivation's)
    platform_digest: str = ""  # the item's recorded platform (environment.platform)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "path": str(self.path), "name": self.name, "version": self.version,
            "derivation": self.derivation, "weights_digest": self.weights_digest,
            "reused": self.reused, "threads": self.threads, "platform": self.platform,
            "platform_digest": self.platform_digest}
        if self.check is not None:
            data["check"] = {
                "identical": self.check.identical,
                "rebuilt_weights_digest": self.check.rebuilt_digest,
                "differing_tensors": [vars(d) for d in self.check.differing]}
        return data


# One thread unless asked: on a two-core machine shared with other work, two threads
# made build --check of digits-cnn and textgen 15x slower and verify of textgen 9x
# slower, and saved at most 10% when the machine was quiet (bench/threads.py, numbers in
# bench/README.md). The weights are the same whatever the count, so `--threads N` is
# only a question of speed, and one thread is never the slow choice by much.
DEFAULT_THREADS = 1


def threads_for(requested: int | None) -> int:
    """The intra-op thread count (and ctx.map's worker count) recipe code runs with: the
    request, else DEFAULT_THREADS, at most the usable cores.

    More threads than cores only adds contention, and it is outside the range where
    thread-count invariance was measured (bench/numerics/README.md).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(requested or DEFAULT_THREADS, cores or 1)


def plan(recipe_dir: Path | str, store: Store, *, own_platform: bool = False) -> Plan:
    """Everything that decides the derivation, resolved; nothing is built. The platform
    is the one `--platform` ($REWEIGH_PLATFORM) asks for, else (or with `own_platform`)
    the recipe's."""
    recipe = load_recipe(recipe_dir)
    platform = recipe_platform(recipe) if own_platform else platform_name(recipe)
    code = code_files(recipe)  # refuse bad code files before any input enters the store
    check_entries(recipe, code)
    whole_floats(recipe)  # a parameter the derivation cannot hold, refused before inputs
    inputs = resolve_inputs(recipe, store)
    return Plan(recipe, inputs, code, derive(recipe, inputs, hash_code(code), platform))


def platform_name(recipe: Recipe) -> str:
    """The numerics platform a build of `recipe` runs on here (its name)."""
    asked = os.environ.get(numerics.ENV_CHOICE) or recipe.platform
    return numerics.default_name(asked, numerics.machine_arch())


def recipe_platform(recipe: Recipe) -> str:
    """The platform the recipe itself names, on this machine's architecture."""
    return numerics.default_name(recipe.platform, numerics.machine_arch())


def build(recipe_dir: Path | str, *, store: Store | None = None, threads: int | None = None,
          check: bool = False, reporter: Reporter | None = None,
          sandbox: str | None = None) -> BuildReport:
    """Build the recipe (or reuse its item); with check, rebuild and compare bit for bit.
    `sandbox`: "bubblewrap" or "none" (default: $REWEIGH_SANDBOX, else bubblewrap); it is
    checked when a run starts, so reusing an item costs no probe of the sandbox."""
    store = store or Store()
    with store.gc_lock(exclusive=False):  # gc waits: what plan() found stays
        return build_plan(plan(recipe_dir, store), store, threads_for(threads), check,
                          reporter or QuietReporter(), sandbox)


def build_plan(the_plan: Plan, store: Store, threads: int, check: bool,
               reporter: Reporter, isolation: str | None = None) -> BuildReport:
    drv = the_plan.derivation
    with store.lock(drv.digest):
        item = store.find(drv.digest)
        reused = item is not None
        if item is None:
            out, record = run_build(the_plan, store, threads, reporter, "build", isolation)
            known, attempt = record.pop("known"), record.pop("attempt")
            cpu_seconds = record.pop("cpu_seconds")
            try:
                item = store.commit(out, drv.item_name, record, known)
            except BaseException as e:
                store.end_attempt(attempt, "failed", getattr(e, "message", str(e)))
                raise
            finally:
                remove_tree(out.parent)
            # only now: the item is in the store
            store.end_attempt(attempt, "built", cpu_seconds=cpu_seconds)
        result = check_item(the_plan, store, item, threads, reporter, isolation) if check else None
    return BuildReport(item.path, item.name, item.version, item.derivation, item.weights_digest,
                       reused, threads, result, drv.record.get("platform", numerics.NATIVE),
                       item.environment_digest or "")


def check_item(the_plan: Plan, store: Store, item: StoreItem, threads: int,
               reporter: Reporter, isolation: str | None = None) -> CheckResult:
    """Rebuild in a scratch directory and compare its weights with the item's, bit for bit."""
    from ..compare import compare_files  # numpy: only a check needs it

    out, record = run_build(the_plan, store, threads, reporter, "check", isolation)
    try:
        rebuilt = record["weights_digest"]
        diffs = compare_files(read_header(item.weights), read_header(out / "weights.safetensors"))
        differing = tuple(d for d in diffs if d.status != "identical")
        identical = rebuilt == item.weights_digest and not differing
        store.record_check(item, "rebuild", "identical" if identical else "mismatch", {
            "rebuilt_weights_digest": rebuilt, "threads": threads,
            "environment_digest": record["environment_digest"],
            "differing": [d.name for d in differing]})
        return CheckResult(identical, rebuilt, differing)
    finally:
        remove_tree(out.parent)


def run_build(the_plan: Plan, store: Store, threads: int, reporter: Reporter,
              purpose: str, isolation: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Train in a fresh directory under the store's tmp/; return the finished output folder."""
    recipe, drv = the_plan.recipe, the_plan.derivation
    work = store.new_build_dir(drv.digest)
    attempt = store.begin_attempt(drv.digest, recipe.name, purpose, threads)
    log = work / "build.log"
    try:
        job = stage_job(the_plan.recipe_code, work, threads)
        out = Path(job.out)
        what = "checking" if purpose == "check" else "building"
        reporter.stage(f"{what} {recipe.name} {recipe.version} ({threads} threads)")
        before = _input_stats(the_plan)
        # Checkpoints come down a pipe and are hashed (and the kept ones stored as chunks)
        # while training goes on; a --check rebuild only needs their digests.
        keeper = Keeper(out, store.chunks if purpose == "build" else None,
                        recipe.retention.every, recipe.retention.last, cores())
        try:
            result = run_child(job, work, log, reporter, isolation=isolation,
                               hidden=hidden_paths(store.root, the_plan.recipe.directory),
                               watch=lambda event: _checkpointed(keeper, event),
                               checkpoints=keeper.stream())
            if result.returncode and (failed := keeper.failed()) is not None:
                failed.details = log_tail(log)
                raise failed  # the reason, not the broken pipe the build process saw
            raise_for_failure(result, log, f"{what} {recipe.name}", recipe.directory)
            if _input_stats(the_plan) != before:
                raise BuildError("an input changed during the build; inputs are read-only",
                                 details=log_tail(log))
            kept = keeper.finish()
        finally:
            keeper.close()
        cpu_seconds = result.cpu_seconds
        run = {"weights_digest": file_digest(out / "weights.safetensors"),
               "environment": result.environment, "started": result.started,
               "finished": result.finished, "threads": threads, "attempt": attempt,
               # how the build was spread: recorded, never part of the derivation
               "workers": job.workers, **({"cluster": job.cluster} if job.cluster else {}),
               # data-parallel workers 1..N-1 that ran on that cluster, outside the sandbox
               **({"cluster_ranks": ranks} if (ranks := cluster_ranks(job)) else {})}
        read_header(out / "weights.safetensors")
        metrics = result.evaluations.get(0, {}).get("metrics", {})
        _write_item_files(the_plan, out, run, metrics, result, kept)
        shutil.copyfile(log, out / "build.log")
        shutil.copytree(work / "src", out / "source")  # what a verifier replays
        shutil.copyfile(recipe.file, out / "source" / "recipe.toml")
        if purpose != "build":  # a build's attempt ends when its item is committed
            store.end_attempt(attempt, "built", cpu_seconds=cpu_seconds)
        record = {"derivation": drv.digest, "name": recipe.name, "version": recipe.version,
                  "weights_digest": run["weights_digest"],
                  "environment_digest": fingerprint(result.environment),
                  "inputs": {i.name: i.digest for i in the_plan.inputs},
                  "known": {"weights.safetensors": run["weights_digest"]},
                  "attempt": attempt, "cpu_seconds": cpu_seconds}
        return out, record
    except BaseException as e:
        log_kept = store.keep_log(log, f"{drv.item_name}-attempt-"
                                       f"{_nth(store, drv.digest, attempt)}")
        store.end_attempt(attempt, "failed", getattr(e, "message", str(e)))
        remove_tree(work)
        if isinstance(e, BuildError) and log_kept:
            e.hint = f"log: {log_kept}"
        raise


def _checkpointed(keeper: Keeper, event: dict[str, Any]) -> bool:
    """Hand each checkpoint the build reports to the keeper; never stops the build."""
    if event.get("type") == "checkpoint":
        keeper.add(event.get("step"), event.get("file"))
    return False


def _nth(store: Store, derivation: str, attempt: int) -> int:
    """Which attempt at its derivation `attempt` (a store-wide id) is: 1, 2, ..."""
    return [a["id"] for a in store.attempts(derivation)].index(attempt) + 1


def stage_job(code: RecipeCode, work: Path, threads: int, mode: str = "build",
              weights: tuple[Path, ...] = (), replays: tuple[Replay, ...] = (),
              audit: AuditSettings | None = None, platform: str | None = None) -> Job:
    """Stage the recipe's code files into work/src and make work/out: the job that runs
    them there (one place for build, check, evaluation, replay, audit and estimate), on
    the derivation's platform unless `platform` names another."""
    src = stage_source(code.files, work)
    out = work / "out"
    out.mkdir()
    workers, cluster = workers_asked()
    return for_derivation(code.derivation.record, str(src), str(out),
                          {name: str(path) for name, path in code.inputs.items()}, threads,
                          mode, tuple(str(w) for w in weights), replays, audit, platform,
                          workers, cluster)


@contextlib.contextmanager
def sandboxed(store: Store, code: RecipeCode, threads: int, reporter: Reporter, what: str,
              label: str, mode: str = "build", weights: tuple[Path, ...] = (),
              replays: tuple[Replay, ...] = (), audit: AuditSettings | None = None,
              platform: str | None = None) -> Iterator[tuple[ChildResult, Path]]:
    """Run the recipe's code once in a sandboxed child (an evaluation, an audit, replayed
    segments: `mode` and the rest say which) in a scratch directory of the store. The
    child's result and its `out/` folder live as long as the caller reads them; on
    failure the BuildError points at the log, kept under logs/."""
    drv = code.derivation
    work = store.new_build_dir(drv.digest, kind="run")
    try:
        job = stage_job(code, work, threads, mode, weights, replays, audit, platform)
        out = Path(job.out)
        log = work / f"{label}.log"
        result = run_child(job, work, log, reporter, hidden=hidden_paths(store.root))
        try:
            raise_for_failure(result, log, what, code.folder)
        except BuildError as e:
            kept = store.keep_log(log, f"{drv.item_name}-{label}")
            e.hint = f"log: {kept}" if kept else None
            raise
        yield result, out
    finally:
        remove_tree(work)


def hidden_paths(*folders: Path) -> tuple[str, ...]:
    """Host folders the recipe's code must not see (the sandbox measures that it does not):
    the user's home and those given (the store, the recipe's own folder). Not those under
    the system's folders, which every run sees read-only on purpose (a recipe a
    distribution installs under /usr/share, say)."""
    system = [Path(d) for d in sandboxing.SYSTEM_DIRS]
    resolved = [f.resolve() for f in (Path.home(), *folders)]
    return tuple(str(f) for f in resolved
                 if f != Path("/") and not any(f.is_relative_to(d) for d in system))


def _input_stats(the_plan: Plan) -> list[tuple[str, int, int, int, int]]:
    """Size, modification and change times and inode of every input file: any write
    changes one of them (a restored mtime still moves the ctime, which no program can
    set), and reading them costs nothing beside rehashing the inputs after every build."""
    stats = []
    for i in the_plan.inputs:
        if i.kind != "item":
            for path in tree_files(i.path) if i.path.is_dir() else [i.path]:
                st = path.stat()
                stats.append((str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    return stats


def _write_item_files(the_plan: Plan, out: Path, run: dict[str, Any], metrics: dict[str, float],
                      result: Any, kept: list[Kept]) -> None:
    recipe, drv = the_plan.recipe, the_plan.derivation
    statement = provenance.statement(recipe, drv, the_plan.inputs, run)
    (out / "provenance.json").write_text(json.dumps(statement, indent=2) + "\n")
    (out / "derivation.json").write_bytes(canonical_json(drv.record) + b"\n")
    (out / "metrics.json").write_text(json.dumps(
        {"evaluation": metrics, "training": _last_values(result.metrics),
         "history": result.metrics}, indent=2) + "\n")
    (out / "transcript.json").write_text(json.dumps(
        _transcript(drv, recipe, kept, result.environment), indent=2) + "\n")
    (out / "MODEL_CARD.md").write_text(
        provenance.model_card(recipe, drv, the_plan.inputs, run, metrics))


def _last_values(history: list[dict[str, Any]]) -> dict[str, float]:
    return {entry["name"]: entry["value"] for entry in history}


def _transcript(drv: Derivation, recipe: Recipe, kept: list[Kept],
                environment: dict[str, Any]) -> dict[str, Any]:
    """The transcript: every checkpoint's step and digest, chained; `file` where the
    checkpoint's file is kept (in the store's chunks, named by the item's manifest; an
    exported transcript has the file there). A transcript that keeps them all is the
    format /1 that earlier reweigh writes and reads."""
    every = recipe.checkpoint_every
    entries = [{"step": k.step, "digest": k.digest,
                **({"file": k.file} if k.manifest or not _pruned(recipe) else {})}
               for k in kept]
    data: dict[str, Any] = {"format": transcript.FORMAT, "derivation": drv.digest,
                            "checkpoint_every": every, "environment": environment,
                            "checkpoints": transcript.chain(drv.digest, entries)}
    if _pruned(recipe):
        data["format"] = transcript.FORMAT_2
        data["retention"] = {"keep_every": recipe.retention.every,
                             "keep_last": recipe.retention.last}
    return data


def _pruned(recipe: Recipe) -> bool:
    """Whether the recipe keeps fewer checkpoint files than it records."""
    every, last = recipe.retention.every, recipe.retention.last
    return not (every == 1 or (every == 0 and last == 0))
