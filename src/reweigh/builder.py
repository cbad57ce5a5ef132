"""Running recipe code in a separate, sandboxed process: the one way it is started.

The child runs a typed `Job` in the OS-level sandbox (`reweigh.sandbox`: bubblewrap,
namespaces, a seccomp filter, only the job's paths mounted), with an allow-listed
environment (fixed PYTHONHASHSEED, pinned numerics and thread counts, a private HOME
and TMPDIR) and an audit hook that names a refused connection or input write. It dies
with its parent, so killing a build kills its training. Everything it writes goes to a
directory under the store's tmp/; whether that directory becomes an item is the
caller's decision (see `reweigh.verbs.build`).
"""

from __future__ import annotations

import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from . import cluster, environment, numerics, sandbox
from .entries import render_traceback
from .errors import BuildError, EntryResultError
from .job import Job, Sandbox
from .progress import Reporter
from .state_bytes import ENV as CHECKPOINT_FD

LOG_TAIL_LINES = 25


@dataclass
class ChildResult:
    """What the build process reported through its event pipe."""

    returncode: int = 0
    environment: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)  # step, file, at
    segments_began: list[float] = field(default_factory=list)  # when each replay started
    evaluations: dict[int, dict[str, Any]] = field(default_factory=dict)
    audit: dict[str, Any] | None = None  # what `diff` measured (mode "audit")
    violations: list[str] = field(default_factory=list)
    error: str | None = None
    bad_result: bool = False  # the error: an entry point returned what reweigh cannot use
    plain: bool = False  # the error says all there is (a lost Ray cluster): no traceback
    frames: list[dict[str, Any]] = field(default_factory=list)  # the recipe's, when it raised
    started: float = 0.0
    finished: float = 0.0
    stopped: bool = False  # ended early on purpose (`watch` or `stop_after_seconds`)
    done: bool = False  # the runtime said it finished (its last event)
    cpu_seconds: float | None = None  # what the run cost in CPU time, as it measured itself


def stage_source(code: dict[str, Path], work: Path) -> Path:
    """Copy exactly the hashed code files into the build's source directory."""
    src = work / "src"
    for rel, path in code.items():
        target = src / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    src.mkdir(exist_ok=True)
    return src


def child_env(home: str, tmp: str, package_parent: str, threads: int,
              event_fd: int, platform: numerics.Platform) -> dict[str, str]:
    """The whole environment of the process that runs recipe code: an allow-list."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": tmp,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "PYTHONPATH": package_parent,
        "REWEIGH_EVENT_FD": str(event_fd),
        **environment.build_env(threads, platform),
    }


@dataclass
class Launch:
    """How one run starts: its command, environment, and the fds it inherits besides
    the event pipe."""

    command: list[str]
    env: dict[str, str]
    fds: tuple[int, ...] = ()


class _Inside:
    """Host paths a job names, each given its fixed place inside the sandbox."""

    def __init__(self) -> None:
        self.mounts: list[sandbox.Mount] = []
        self.seen: dict[str, str] = {}

    def place(self, host: str | Path, inside: str, writable: bool = False) -> str:
        key = str(host)
        if key not in self.seen:
            self.mounts.append(sandbox.Mount(Path(host), inside, writable))
            self.seen[key] = inside
        return self.seen[key]

    def file(self, host: str | Path) -> str:
        path = Path(host)
        return self.place(path, f"{sandbox.FILES}/{len(self.mounts)}/{path.name}")


def inside_job(job: Job, work: Path) -> tuple[Job, list[sandbox.Mount]]:
    """The job as the sandboxed process sees it, and the mounts that make it so: every
    path the run may read or write, and nothing else of the host."""
    paths = _Inside()
    moved = job.with_paths(paths.place, paths.file)
    package = Path(__file__).resolve().parent
    paths.place(package, f"{sandbox.LIB}/{package.name}")
    for mount in sandbox.etc_files(work / "etc"):
        paths.place(mount.host, mount.inside)
    return moved, paths.mounts


def launch_for(job: Job, work: Path, module: str, event_fd: int) -> Launch:
    """The command that runs `module` on `job`, isolated as the job's sandbox says."""
    spec_file = work / "job.json"
    platform = numerics.here(job.platform)  # exit 2 when this machine cannot run it
    if job.sandbox.kind == sandbox.NONE:
        for sub in ("home", "tmp"):
            (work / sub).mkdir(exist_ok=True)
        package_parent = str(Path(__file__).resolve().parent.parent)
        spec_file.write_text(json.dumps(job.to_json()))
        return Launch([sys.executable, "-m", module, str(spec_file)],
                      child_env(str(work / "home"), str(work / "tmp"), package_parent,
                                job.threads, event_fd, platform)
                      | cluster.auth_env(job.cluster if job.mode == "build" else None))
    moved, mounts = inside_job(job, work)
    spec_file.write_text(json.dumps(moved.to_json()))
    mounts.append(sandbox.Mount(spec_file, sandbox.SPEC))
    program_fd = _seccomp_fd()
    reach = job.cluster if job.mode == "build" else None  # ctx.map's Ray cluster
    return Launch([*sandbox.bwrap_args(mounts, program_fd, reach is not None), sys.executable,
                   "-m", module, sandbox.SPEC],
                  child_env(sandbox.HOME, "/tmp", sandbox.import_path(), job.threads, event_fd,
                            platform) | cluster.auth_env(reach),
                  (program_fd,))


def _seccomp_fd() -> int:
    """A pipe holding the compiled filter, for `bwrap --seccomp` to read once."""
    read, write = os.pipe()
    with os.fdopen(write, "wb") as handle:
        handle.write(sandbox.seccomp_program())
    return read


def run_child(job: Job, work: Path, log: Path, reporter: Reporter, *,
              isolation: str | None = None, hidden: tuple[str, ...] = (),
              watch: Callable[[dict[str, Any]], bool] | None = None,
              stop_after_seconds: float | None = None,
              module: str = "reweigh.runtime", checkpoints: int | None = None) -> ChildResult:
    """Run the runtime on `job` in the sandbox `isolation` asks for (None: the default,
    see `sandbox.choose`; one that cannot be made here is refused); stream its events;
    its stdout and stderr go to `log`. `hidden` are host paths (the store, the home
    folder) the run must not see: it measures that they are out of sight. This is the
    one way recipe code is started: build, check, evaluation, replay, audit, estimate.

    `watch` sees every event and may return True to stop the child; `stop_after_seconds`
    kills it after that long whatever it is doing; either sets `stopped`. `module` runs
    in place of the runtime (the estimate's probe wraps it). Builds use none of them.
    `checkpoints`: the write end of a pipe the runtime sends its checkpoints down instead
    of writing them (`keeper.Keeper.stream`); the child gets it, and it is closed here.
    """
    read_fd = write_fd = -1
    try:
        job = replace(job, sandbox=Sandbox(sandbox.choose(isolation), hidden))
        read_fd, write_fd = os.pipe()
        started = launch_for(job, work, module, write_fd)
    except BaseException:
        for fd in (read_fd, write_fd, -1 if checkpoints is None else checkpoints):
            if fd >= 0:
                os.close(fd)
        raise
    if checkpoints is not None:
        started = Launch(started.command, {**started.env, CHECKPOINT_FD: str(checkpoints)},
                         (*started.fds, checkpoints))
    result = ChildResult(started=time.time())
    with open(log, "ab") as log_handle:
        try:
            process = subprocess.Popen(
                started.command, cwd=work, env=started.env, stdin=subprocess.DEVNULL,
                stdout=log_handle, stderr=subprocess.STDOUT,
                pass_fds=(write_fd, *started.fds), preexec_fn=_die_with_parent)
        finally:
            os.close(write_fd)
            for fd in started.fds:
                os.close(fd)
        timer = _stop_timer(process, result, stop_after_seconds)
        try:
            with os.fdopen(read_fd, "r", encoding="utf-8", errors="replace") as events:
                _follow(events, process, result, reporter, watch)
            result.returncode = process.wait()
        finally:
            if timer is not None:
                timer.cancel()
            if process.poll() is None:
                process.kill()
                process.wait()
            reporter.finish()
    result.finished = time.time()
    return result


def _stop_timer(process: subprocess.Popen[bytes], result: ChildResult,
                seconds: float | None) -> threading.Timer | None:
    if seconds is None:
        return None

    def stop() -> None:
        if process.poll() is None:
            result.stopped = True
            process.kill()

    timer = threading.Timer(seconds, stop)
    timer.daemon = True
    timer.start()
    return timer


def _follow(events: IO[str], process: subprocess.Popen[bytes], result: ChildResult,
            reporter: Reporter, watch: Callable[[dict[str, Any]], bool] | None) -> None:
    """Dispatch each event line; stop the child as soon as `watch` asks."""
    for line in events:
        _dispatch(line, result, reporter)
        if watch is not None and _watched(watch, line):
            result.stopped = True
            process.kill()
            _drain(events)
            return


# How long a stopped child's processes get to end before their folder is removed anyway.
DRAIN_SECONDS = 30.0


def _drain(events: IO[str], seconds: float = DRAIN_SECONDS) -> None:
    """Wait until every process that holds the event pipe (the runtime and what it
    started: the sandbox's processes die after bubblewrap, not with it) has ended, for
    `seconds` at most: the caller removes the folder they write into next, and a
    process still writing there made that fail ("Directory not empty")."""
    fd = events.fileno()
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0 and select.select([fd], [], [], left)[0]:
        if not os.read(fd, 1 << 16):
            return


def _watched(watch: Callable[[dict[str, Any]], bool], line: str) -> bool:
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return False
    return isinstance(event, dict) and bool(watch(event))


def _die_with_parent() -> None:
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)


def _dispatch(line: str, result: ChildResult, reporter: Reporter) -> None:
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return
    kind = event.get("type") if isinstance(event, dict) else None
    if kind == "progress":
        reporter.progress(int(event["done"]), int(event["total"]), str(event.get("label", "")))
    elif kind in _RECORD:
        _RECORD[kind](result, event)


def _record_evaluation(result: ChildResult, event: dict[str, Any]) -> None:
    result.evaluations[int(event["index"])] = {
        "metrics": event.get("metrics", {}), "predictions": event.get("predictions", [])}


def _record_error(result: ChildResult, event: dict[str, Any]) -> None:
    result.error = str(event["message"])
    result.bad_result = bool(event.get("bad_result"))
    result.plain = bool(event.get("plain"))
    result.frames = list(event.get("frames") or [])


def _record_done(result: ChildResult, event: dict[str, Any]) -> None:
    result.done = True
    seconds = event.get("cpu_seconds")
    if isinstance(seconds, int | float) and not isinstance(seconds, bool) and (
            0 <= seconds < math.inf):
        result.cpu_seconds = float(seconds)


# How each event of the build process is kept in its ChildResult.
_RECORD: dict[str, Callable[[ChildResult, dict[str, Any]], None]] = {
    "metric": lambda r, e: r.metrics.append({k: e.get(k) for k in ("name", "value", "step")}),
    "checkpoint": lambda r, e: r.checkpoints.append(
        {**{k: e[k] for k in ("step", "file")}, "at": time.monotonic()}),
    "segment": lambda r, e: r.segments_began.append(time.monotonic()),
    "evaluation": _record_evaluation,
    "audit": lambda r, e: setattr(r, "audit", e.get("data")),
    "environment": lambda r, e: setattr(r, "environment", e["record"]),
    "violation": lambda r, e: r.violations.append(str(e["message"])),
    "error": _record_error,
    "done": _record_done,
}


def log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def raise_for_failure(result: ChildResult, log: Path, what: str,
                      folder: Path | None = None) -> None:
    """Turn a failed or misbehaving child into a BuildError (exit 1: the recipe's code
    failed). When the recipe's code raised, its details are the recipe's own frames with
    `folder`'s paths; otherwise the log's tail."""
    if result.violations:
        reason = result.violations[0]
    elif result.returncode != 0:
        reason = result.error or f"the build process exited with status {result.returncode}"
    elif not result.done:  # its checks and its environment record were skipped
        reason = ("the build process ended before reweigh's runtime had finished (the "
                  "recipe's code ended it: os._exit, exec, a signal to itself)")
    else:
        return
    details = (render_traceback(result.frames, reason, folder) if result.frames and
               not result.violations else log_tail(log))
    if result.plain and not result.violations:
        raise BuildError(f"{what} failed: {reason}", hint=f"log: {log}")
    if result.bad_result and not result.violations:  # the recipe's mistake, in one line
        raise EntryResultError(f"{what} failed: {reason}", hint=f"log: {log}")
    raise BuildError(f"{what} failed: {reason}", hint=f"log: {log}", details=details)
