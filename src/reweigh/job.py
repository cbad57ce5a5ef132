"""One run of a recipe's code, as a typed record: what the builder asks and the runtime reads.

Build, `--check`, evaluation, verify's replay, diff's audit and estimate all start the
same sandboxed process (`builder.run_child`) with a `Job`. It crosses the process
boundary as one JSON form (`to_json`/`from_json`), and the builder moves its paths into
the sandbox in one place (`with_paths`), so nothing reads the instructions by string key.

Modes: `build` trains (the whole training, or `replays`: segments from checkpoints) and
evaluates the result; `evaluate` runs the recipe's evaluation on each of `weights`;
`audit` runs its audit entry on the two `weights` (diff); `platform` runs no recipe code
and only reports the environment (`reweigh platform`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

MODES = ("build", "evaluate", "audit", "platform")

# What `--workers` and `--cluster` set for every run a command starts (like --sandbox)
ENV_WORKERS = "REWEIGH_WORKERS"
ENV_CLUSTER = "REWEIGH_CLUSTER"


@dataclass(frozen=True)
class Replay:
    """A segment to replay: from the checkpoint `start` (None: from scratch) to the
    checkpoint at step `stop` (None: to the end of training). `from_out`, a path in the
    job's output folder, starts it from a checkpoint an earlier replay of the same job
    wrote instead (a verifier replays through segments whose start was not kept)."""

    start: str | None
    stop: int | None
    from_out: str | None = None


@dataclass(frozen=True)
class AuditSettings:
    """What diff's audit measures (see `audit.child`)."""

    entry: str
    top: int
    agreement: float
    trigger: dict[str, Any] | None
    probes: tuple[tuple[str, str], ...]
    length: int


@dataclass(frozen=True)
class Sandbox:
    kind: str  # "bubblewrap" or "none"
    hidden: tuple[str, ...] = ()  # host paths the run must not see (it measures that)


@dataclass(frozen=True)
class Job:
    mode: str
    src: str  # the staged recipe source
    out: str  # the writable output folder
    entry: str  # "file.py:function"
    evaluate: str | None
    params: dict[str, Any]
    seed: int
    checkpoint_every: int
    threads: int
    inputs: dict[str, str]
    weights: tuple[str, ...] = ()
    replays: tuple[Replay, ...] = ()
    audit: AuditSettings | None = None
    sandbox: Sandbox = field(default_factory=lambda: Sandbox("none"))
    platform: str = "native"  # the numerics platform's name (reweigh.numerics)
    workers: int = 1  # data-parallel workers and ctx.map's (not part of the derivation)
    cluster: str | None = None  # an existing Ray cluster's address, for ctx.map
    # what the derivation says each input and code file holds: a data-parallel worker on a
    # cluster checks the copies it was sent against these (a replay's start checkpoint is
    # checked only against worker 0's digest of its copy: a check of the transport)
    input_digests: dict[str, str] = field(default_factory=dict)
    code_digests: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> Job:
        audit = data.get("audit")
        return Job(
            mode=data["mode"], src=data["src"], out=data["out"], entry=data["entry"],
            evaluate=data.get("evaluate"), params=data["params"], seed=int(data["seed"]),
            checkpoint_every=int(data["checkpoint_every"]), threads=int(data["threads"]),
            inputs=dict(data["inputs"]), weights=tuple(data.get("weights") or ()),
            replays=tuple(Replay(r["start"], r["stop"], r.get("from_out"))
                          for r in data.get("replays") or ()),
            audit=None if audit is None else AuditSettings(
                audit["entry"], int(audit["top"]), float(audit["agreement"]), audit["trigger"],
                tuple((str(t), str(p)) for t, p in audit["probes"]), int(audit["length"])),
            sandbox=Sandbox(data["sandbox"]["kind"], tuple(data["sandbox"]["hidden"])),
            platform=str(data.get("platform", "native")),
            workers=int(data.get("workers", 1)), cluster=data.get("cluster"),
            input_digests=dict(data.get("input_digests") or {}),
            code_digests=dict(data.get("code_digests") or {}))

    def with_paths(self, place: Callable[[str, str, bool], str],
                   file: Callable[[str], str]) -> Job:
        """The job with every host path moved: `place(host, inside, writable)` for the
        source, output and inputs (their fixed places), `file(host)` for files it reads."""
        from . import sandbox

        return replace(
            self, src=place(self.src, sandbox.SRC, False),
            out=place(self.out, sandbox.OUT, True),
            inputs={name: place(path, f"{sandbox.INPUTS}/{name}/{_name(path)}", False)
                    for name, path in self.inputs.items()},
            weights=tuple(file(w) for w in self.weights),
            replays=tuple(replace(r, start=None if r.start is None else file(r.start))
                          for r in self.replays))


def for_derivation(record: dict[str, Any], src: str, out: str, inputs: dict[str, str],
                   threads: int, mode: str = "build", weights: tuple[str, ...] = (),
                   replays: tuple[Replay, ...] = (), audit: AuditSettings | None = None,
                   platform: str | None = None, workers: int = 1,
                   cluster: str | None = None) -> Job:
    """The job of a derivation record: one place for build, evaluation and replay alike;
    on the record's platform unless `platform` names another (verify --platform)."""
    if mode not in MODES:
        raise ValueError(f"unknown job mode {mode!r}")
    return Job(mode=mode, src=src, out=out, entry=record["entry"],
               evaluate=record["evaluate"], params=record["params"], seed=record["seed"],
               checkpoint_every=record["checkpoint_every"], threads=threads, inputs=inputs,
               weights=weights, replays=replays, audit=audit,
               # records older than platforms ran on their machine's own kernels
               platform=platform or record.get("platform", "native"),
               workers=workers, cluster=cluster,
               input_digests={name: str(record["inputs"][name]["digest"]) for name in inputs
                              if name in record.get("inputs", {})},
               code_digests={str(rel): str(d) for rel, d in record.get("code", {}).items()})


def workers_asked() -> tuple[int, str | None]:
    """The worker count and cluster address the command was given (--workers, --cluster
    or their environment variables): how a build is spread, never what it builds."""
    from .errors import UsageError

    text = os.environ.get(ENV_WORKERS) or "1"
    if not text.isdigit() or not 1 <= int(text) <= 4096:
        raise UsageError(f"${ENV_WORKERS}: {text!r} is not a worker count from 1 to 4096")
    address = os.environ.get(ENV_CLUSTER) or None
    if address is not None:
        from .cluster import resolve_address

        try:
            address = resolve_address(address)
        except ValueError as e:
            raise UsageError(f"--cluster (${ENV_CLUSTER}): {e}") from None
    return int(text), address


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]
