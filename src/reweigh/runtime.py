"""What runs inside the build process: guards, seeding, the context, the entry point.

The builder starts `python -m reweigh.runtime SPEC.json` with a scrubbed
environment. This module pins the numerics, seeds every generator, installs the
guards (no network, no writes to inputs), then calls the recipe's entry point
with a `BuildContext`, or its evaluation entry point with an `EvalContext`.
It talks to the builder only through JSON lines on a private pipe, so the
training code's own output can go to the log untouched.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import gc
import importlib.util
import json
import numbers
import os
import random
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from . import cluster, dynamo, environment, numerics, onload, sandbox, shards
from .entries import recipe_frames
from .job import Job, Replay, Sandbox
from .shards import Workers, shard_count, worker_count

_events: Any = None


def emit(kind: str, **fields: Any) -> None:
    """Send one event line to the builder."""
    if _events is not None:
        _events.write(json.dumps({"type": kind, **fields}) + "\n")
        _events.flush()


CHANGING_EVENTS = frozenset({"os.remove", "os.rename", "os.rmdir", "os.truncate", "os.chmod",
                             "shutil.rmtree", "shutil.move"})


class ReplayDone(BaseException):
    """Raised at the end of a replayed segment; a BaseException so that training code's
    `except Exception` cannot swallow it."""


class BadEntryResult(TypeError):
    """An entry point returned what reweigh cannot use; the builder makes it exit 2 (a
    mistake in the recipe), not exit 1 (a failed build)."""


class NetworkBlocked(PermissionError):
    pass


class InputWriteBlocked(PermissionError):
    pass


class Guard:
    """An audit hook that refuses network connections and changes to inputs.

    It complements the network namespace (where the platform allows one): the
    namespace makes connections impossible, the hook makes the failure say why.
    Each refusal is also reported to the builder, which then fails the build even
    if the training code swallowed the exception.
    """

    WRITES = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

    def __init__(self, input_roots: list[str], cluster_host: str | None = None) -> None:
        self.roots = tuple(os.path.realpath(r) for r in input_roots)
        self.cluster_host = cluster_host  # the Ray cluster a build was given (--cluster)

    def inside_inputs(self, path: Any) -> bool:
        if isinstance(path, int) or path is None:
            return False
        real = os.path.realpath(os.fsdecode(path))
        return any(real == r or real.startswith(r + os.sep) for r in self.roots)

    def to_cluster(self, address: Any) -> bool:
        """Whether a connection goes to the cluster's host (Ray's driver reaches it) or
        to worker 0's meeting point (`meet`)."""
        host = address[0] if isinstance(address, tuple) and address else None
        return (self.cluster_host is not None and host == self.cluster_host) or (
            isinstance(address, tuple) and tuple(address[:2]) in MEETING_POINTS)

    def write_target(self, event: str, args: tuple[Any, ...]) -> Any:
        """The path an event would change, or None when it changes nothing."""
        if event == "open" and len(args) >= 3:
            mode, flags = args[1], args[2] or 0
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or flags & self.WRITES:
                return args[0]
        elif event in CHANGING_EVENTS and args:
            return args[0]
        return None

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
            if getattr(args[0], "family", None) in (socket.AF_INET, socket.AF_INET6) and \
                    not self.to_cluster(args[-1]):
                _refuse(NetworkBlocked, f"the build tried to open a network connection "
                        f"({event} to {args[-1]!r}); builds run without network")
        elif event in ("socket.getaddrinfo", "socket.gethostbyname") and args[0] and \
                args[0] != self.cluster_host and not self.to_cluster(args[:2]):
            _refuse(NetworkBlocked, f"the build tried to open a network connection "
                    f"(looking up {args[0]!r}); builds run without network")
        elif self.inside_inputs(target := self.write_target(event, args)):
            _refuse(InputWriteBlocked, f"the build tried to change input {target}; "
                    "inputs are read-only")


# Worker 0's meeting point (host, port), once this process must reach it: a data-parallel
# worker on a cluster connects there through Python's sockets, which the guard sees
MEETING_POINTS: set[tuple[str, int]] = set()


def meet(place: tuple[str, int, str], timeout_minutes: float = 30) -> Any:
    """A connection to worker 0's meeting point at (host, port), proven with its token
    (`reweigh.meeting.Client`); the guard lets this process reach it, and only it."""
    import datetime

    from .meeting import Client

    host, port, token = place
    MEETING_POINTS.add((host, port))
    return Client(host, port, token, datetime.timedelta(minutes=timeout_minutes))


def _refuse(error: type[PermissionError], message: str) -> None:
    emit("violation", message=message)
    raise error(message)


def die_with_parent() -> None:
    """Ask Linux to kill this process when the builder dies (PR_SET_PDEATHSIG)."""
    parent = os.getppid()  # in the sandbox's pid namespace, bubblewrap's init: pid 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before we asked
        os._exit(1)


_seed: int | None = None  # the running segment's seed: torch takes it when it loads


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators; torch's when it loads, if it has not."""
    global _seed
    import numpy

    random.seed(seed)
    numpy.random.seed(seed % 2**32)
    _seed = seed
    if (torch := sys.modules.get("torch")) is not None:
        torch.manual_seed(seed)


class TorchPins:
    """Pins torch's numerics the moment torch is first imported, before any code can call
    it: the build's thread count and switches (`environment.apply_torch_numerics`), the
    kernel level its platform needs (checked, or the import fails), the running segment's
    seed. So torch loads only for recipes that use it: its start-up (1.5 s of CPU, the
    most of a small recipe's run) is not paid by one that trains with numpy alone.
    The collector is off while torch loads (its 300k objects made some 0.3 s of passes),
    and what it loaded is then frozen out of later passes."""

    def __init__(self, threads: int, platform_name: str) -> None:
        self.threads = threads
        self.platform_name = platform_name
        self.pinned = False  # whether torch, loaded in this process, was pinned here
        # the settings the builder gave this process, before any recipe code ran: torch's
        # libraries read them as they load, and recipe code runs before that now
        self.settings = environment.settings_env()

    def install(self) -> None:
        """Pin torch when it loads; now, if something loaded it already."""
        onload.after_load("torch", lambda _: self.pin(), collect=False)

    def pin(self) -> None:
        self.check_settings("before torch loaded")
        environment.apply_torch_numerics(self.threads)
        dynamo.install()  # its compiler front end loads when something compiles
        if problem := numerics.measured_problem(self.platform_name,
                                                environment.torch_capability()):
            raise RuntimeError(problem)
        if _seed is not None:
            sys.modules["torch"].manual_seed(_seed)
        self.pinned = True
        gc.freeze()

    def check_settings(self, when: str) -> None:
        """Fail when recipe code changed a setting of the platform (MKL_CBWR, the ISA
        caps...) in this process's environment: the libraries would read its value."""
        if changed := environment.changed_settings(self.settings):
            raise RuntimeError(f"the recipe's code changed {', '.join(changed)} {when}: the "
                               "numerics platform sets these (README, Numerics platforms)")


@dataclass
class BuildContext:
    """What the training entry point receives."""

    inputs: Mapping[str, Path]
    params: Mapping[str, Any]
    seed: int
    out: Path
    threads: int
    checkpoint_every: int = 0
    replay: Replay | None = None  # a segment to replay, from a checkpoint to a step
    _resumed: bool = False  # whether the training code asked for the replay's start state
    _metrics: dict[str, int | float] = field(default_factory=dict)
    _steps: dict[str, int] = field(default_factory=dict)  # each metric's last step
    _pool: Any = None
    workers: Workers = field(default_factory=Workers)  # this process's place among them
    tasks: cluster.Tasks | None = None  # ctx.map on Ray (--workers N, --cluster ADDRESS)
    _engine: cluster.Engine | None = None

    @property
    def shards(self) -> int:
        """How many shards each step's batch is split into: the recipe's `batch_shards`
        parameter (part of the derivation), 1 when it has none."""
        return shard_count(self.params)

    @property
    def rank(self) -> int:
        """This worker's number among the data-parallel workers (0 writes the outputs)."""
        return self.workers.rank

    def backward_shards(self, model: Any, loss_of: Callable[[Any], Any],
                        batches: Sequence[Any]) -> float:
        """Set `model`'s gradients as if `loss_of(batch)` were backpropagated for each of
        `batches` (one per shard, `ctx.shards` of them) and added in a fixed order, and
        return the sum of their losses. Gradients add up, so each shard's loss is its
        share of the step's loss (a summed loss divided by the whole batch's size).
        Every shard starts from the same parameters and buffers, with its own seeded
        random draws; floating-point buffers (batch-norm statistics) become the shards'
        mean. With `--workers N` the shards are spread over N processes; the bits are
        the same for every N. Call `optimizer.step()` after it, as after `backward()`."""
        if len(batches) != self.shards:
            raise ValueError(f"ctx.backward_shards: {len(batches)} batches for "
                             f"{self.shards} shards (the recipe's `batch_shards` parameter)")
        return shards.backward(model, loss_of, batches, self.workers)

    def map(self, function: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        """`function(item)` for every item, spread over up to `threads` worker processes
        (with --workers N, Ray tasks on a local cluster of N workers; with --cluster, on
        that cluster), results in item order. Each call runs on one intra-op thread
        wherever it runs, so the number of workers cannot change a result. `function` must
        be defined in a recipe module imported by name (not in the entry point's file), so
        that workers can import it; items and results travel between processes of this
        build (and, with --cluster, that cluster's workers) only."""
        items = list(items)
        if len(items) <= 1 or not self.workers.lead:
            return [_on_one_thread(function, item) for item in items]
        import torch  # noqa: F401 (the workers' numerics are torch's: this record names them)

        if self.tasks is not None:
            self._engine = self._engine or cluster.Engine(self.tasks, emit)
            return self._engine.map(function, items)
        if self.threads <= 1:
            return [_on_one_thread(function, item) for item in items]
        if self._pool is None:
            import multiprocessing

            roots = [str(p) for p in self.inputs.values()]
            self._pool = multiprocessing.get_context("spawn").Pool(
                self.threads, initializer=_start_worker, initargs=(roots,))
        return self._pool.map(functools.partial(_on_one_thread, function), items, chunksize=1)

    def close(self) -> None:
        if self._pool is not None:  # close, not terminate: workers' output reaches the log
            self._pool.close()
            self._pool.join()
            self._pool = None
        if self._engine is not None:  # a local Ray cluster stops with every process of it
            self._engine.close()
            self._engine = None

    def save_weights(self, tensors: Mapping[str, Any],
                     metadata: Mapping[str, str] | None = None) -> Path:
        """Write the build's weights (torch tensors or numpy arrays) as safetensors."""
        from .weights import save_tensors

        path = self.out / "weights.safetensors"
        if not self.workers.lead:  # the lead worker writes; the others hold the same bits
            return path
        save_tensors(tensors, path, metadata)
        emit("weights", file=path.name)
        return path

    def log_metric(self, name: str, value: float, step: int | None = None) -> None:
        """Add `value` to metrics.json's history (and make it `name`'s last value). An
        integer stays one (53, not 53.0). Without `step`, the entry takes the step after
        this metric's previous one: 0, 1, 2... for a metric logged once per epoch."""
        number = metric_number(value)
        if step is None:
            step = self._steps.get(name, -1) + 1
        elif isinstance(step, bool) or not isinstance(step, numbers.Integral):
            raise TypeError(f"log_metric({name!r}): step must be an integer, not {step!r}")
        self._steps[name] = int(step)
        self._metrics[name] = number
        if self.workers.lead:
            emit("metric", name=name, value=number, step=int(step))

    def progress(self, done: int, total: int, label: str = "") -> None:
        if self.workers.lead:
            emit("progress", done=done, total=total, label=label)

    def checkpoint(self, step: int, state: Mapping[str, Any], final: bool = False) -> bool:
        """Record the training state at `step` (every `checkpoint_every` steps, and the
        final one); returns whether it was recorded. When replaying a segment, the
        checkpoint at the segment's last step ends the run."""
        if not final and (self.checkpoint_every <= 0 or step % self.checkpoint_every):
            return False
        if self.replay is not None:
            self._check_replay(step, final)
        from .state_bytes import checkpoint

        path = self.out / "checkpoints" / f"step-{step:09d}.safetensors"
        if self.workers.lead:
            path.parent.mkdir(exist_ok=True)
            checkpoint(state, path, step)  # to the builder's pipe in a build, else a file
            emit("checkpoint", step=step, file=path.relative_to(self.out).as_posix())
        stop = self.replay.stop if self.replay else None
        if stop is not None and step >= stop:
            raise ReplayDone(step)
        return True

    def _check_replay(self, step: int, final: bool) -> None:
        """A replayed segment records one checkpoint, the one that ends it, and when it
        starts from a checkpoint, it starts from that checkpoint's state: training that
        ignores `resume()` would replay from step 0 and could still match, having spent
        the whole training, not the segment."""
        assert self.replay is not None
        start, stop = self.replay.start, self.replay.stop
        if start is not None and not self._resumed:
            raise RuntimeError(f"the replay from {start} reached step {step} without calling "
                               "ctx.resume(): a replayed segment must start from the state "
                               "of its first checkpoint")
        if not (final if stop is None else step == stop):
            end = f"step {stop}" if stop is not None else "the final step"
            raise RuntimeError(f"the replay from {start or 'scratch'} recorded a checkpoint at "
                               f"step {step}, not at the segment's end ({end}): training "
                               "did not continue from the given checkpoint")

    def resume(self, framework: str = "pt") -> Any:
        """The training state to start from: None in a build from scratch, the state of a
        checkpoint when a verifier replays the segment that starts there. Its tensors
        come back as torch tensors, or as numpy arrays with framework "numpy" (so a
        numpy recipe never loads torch)."""
        from .weights import FRAMEWORKS, load_state

        if framework not in FRAMEWORKS:
            raise ValueError(f"ctx.resume: framework must be one of {', '.join(FRAMEWORKS)}, "
                             f"not {framework!r}")
        if self.replay is None or self.replay.start is None:
            return None
        self._resumed = True
        return load_state(Path(self.replay.start), framework)

    def training_state(self, model: Any, optimizer: Any, generator: Any = None, *,
                       scheduler: Any = None, **more: Any) -> dict[str, Any]:
        """The state a checkpoint should hold for `resume_into` to restore: the model's
        and the optimizer's state dicts, torch's global generator, `generator`'s state
        (the torch.Generator that draws the data order) and `scheduler`'s when given,
        and `more` (the step, and whatever else the loop carries between steps)."""
        import torch

        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "torch_rng": torch.get_rng_state(), **more}
        if generator is not None:
            state["generator"] = generator.get_state()
        if scheduler is not None:
            state["scheduler"] = scheduler.state_dict()
        return state

    def resume_into(self, model: Any, optimizer: Any, generator: Any = None, *,
                    scheduler: Any = None) -> dict[str, Any]:
        """Restore the checkpoint a replayed segment starts from (written with
        `training_state`) into the training's own objects: the model, the optimizer,
        `generator`, `scheduler` and torch's global generator. Returns the checkpoint's
        state for the rest (`state.get("step", 0) + 1` is the first step to run); in a
        build from scratch, an empty dict, and nothing is touched."""
        state = self.resume()
        if state is None:
            return {}
        wanted = {"model": model, "optimizer": optimizer, "torch_rng": True,
                  "generator": generator, "scheduler": scheduler}
        missing = [key for key, given in wanted.items() if given is not None and key not in state]
        if missing:
            raise ValueError(f"ctx.resume_into: the checkpoint holds no {', '.join(missing)}; "
                           "write it with ctx.checkpoint(step, ctx.training_state(...))")
        import torch

        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if generator is not None:
            generator.set_state(state["generator"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        return state

    def load_weights(self, input_name: str) -> dict[str, Any]:
        """The weights of a store item given as an input (a base model to fine-tune)."""
        from safetensors.torch import load_file

        return load_file(str(self.inputs[input_name] / "weights.safetensors"))


def metric_number(value: Any) -> int | float:
    """A metric as JSON keeps it: integers (numpy's and 0-d tensors' too) as integers,
    anything else as a float."""
    value = value.item() if hasattr(value, "item") else value  # numpy scalar, 0-d tensor
    if isinstance(value, numbers.Integral):
        return int(value)
    return float(value)


def _on_one_thread(function: Callable[[Any], Any], item: Any) -> Any:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return function(item)
    finally:
        torch.set_num_threads(before)


def _start_worker(input_roots: list[str]) -> None:
    """A `ctx.map` worker: the build process's numerics and guards, and it dies with it."""
    die_with_parent()
    environment.apply_torch_numerics(1)
    sys.addaudithook(Guard(input_roots))


@dataclass
class EvalContext:
    """What the evaluation entry point receives: the weights to judge, and the inputs."""

    inputs: Mapping[str, Path]
    params: Mapping[str, Any]
    seed: int
    threads: int
    weights: Mapping[str, Any]


def load_entry(src: Path, entry: str) -> Callable[..., Any]:
    file, function = entry.split(":")
    path = src / file
    name = "reweigh_recipe_" + Path(file).with_suffix("").as_posix().replace("/", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {file}")
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return getattr(module, function)


def evaluate(job: Job, inputs: dict[str, Path], weights_file: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    assert job.evaluate is not None
    function = load_entry(Path(job.src), job.evaluate)
    seed_everything(job.seed)
    ctx = EvalContext(inputs, job.params, job.seed, job.threads, load_file(str(weights_file)))
    result = function(ctx)
    where = f"{job.evaluate} returned"
    if not isinstance(result, dict) or not isinstance(result.get("metrics"), dict):
        got = "no 'metrics' dict" if isinstance(result, dict) else type(result).__name__
        raise BadEntryResult(f"{where} {got}; an evaluation returns "
                             "{'metrics': {...}, 'predictions': [...]}")
    predictions: Any = result.get("predictions")
    predictions = predictions.tolist() if hasattr(predictions, "tolist") else predictions
    if not isinstance(predictions, list | tuple):
        raise BadEntryResult(f"{where} no 'predictions' list: one class index per evaluated "
                             "input, what challenge compares ([] when nothing is held out)")
    predictions = [int(p) for p in predictions]
    metrics = {str(k): metric_number(v) for k, v in result["metrics"].items()}
    return {"metrics": metrics, "predictions": predictions}


def run(job: Job) -> None:
    inputs = {name: Path(path) for name, path in job.inputs.items()}
    isolation = isolation_held(job.sandbox, job.cluster if job.mode == "build" else None,
                               cluster.cluster_ranks(job))
    pins = TorchPins(job.threads, job.platform)
    pins.install()
    if job.mode == "platform":  # what a build that uses torch records
        import torch  # noqa: F401 (pinned as it loads)

        emit_environment(job, isolation, pins)
        return
    # reweigh's modules, and torch's 300k objects when it loads (TorchPins), live until
    # the end: out of the collector's sight, its passes over the recipe's objects (during
    # training and the one at the end, `_finish`) are short.
    gc.freeze()
    sys.path.insert(0, job.src)
    if job.mode == "build":
        train = load_entry(Path(job.src), job.entry)
        out = Path(job.out)
        for replay in job.replays or (None,):
            _train(job, train, inputs, out, replay)
        emit_environment(job, isolation, pins)  # where the weights were computed, not evaluated
        if job.evaluate and not job.replays:
            result = evaluate(job, inputs, out / "weights.safetensors")
            emit("evaluation", index=0, metrics=result["metrics"])
    elif job.mode == "audit":  # `diff`: both networks through the recipe's audit entry
        from .audit.child import audit

        emit("audit", data=audit(job, inputs))
        emit_environment(job, isolation, pins)
    else:
        for index, weights in enumerate(job.weights):
            result = evaluate(job, inputs, Path(weights))
            emit("evaluation", index=index, **result)
        emit_environment(job, isolation, pins)


def emit_environment(job: Job, isolation: dict[str, Any], pins: TorchPins) -> None:
    """Send the environment record, taken after the work it describes: whether torch
    computed any of it is known only then. A torch whose kernel level is not the
    platform's (its pins undone since it loaded), or one loaded around the pins, fails the
    run here."""
    pins.check_settings("while it ran")
    if "torch" in sys.modules and not pins.pinned:
        raise RuntimeError("torch was loaded around reweigh's import hook, without the "
                           "build's numerics pins: import it with a plain `import torch`")
    record = environment.capture(job.threads, isolation, job.platform)
    capability = record["cpu_capability"]
    if capability != environment.TORCH_NOT_LOADED and (
            problem := numerics.measured_problem(job.platform, capability)):
        raise RuntimeError(problem)
    emit("environment", record=record)


def isolation_held(asked: Sandbox, cluster_address: str | None = None,
                   cluster_ranks: int = 0) -> dict[str, Any]:
    """What isolation this process has, measured; a sandbox that was asked for and does
    not hold is a violation: the build fails rather than claim what it did not have.
    With a Ray cluster (--cluster), the network is the host's on purpose, and the record
    says where ctx.map's tasks ran, and the data-parallel workers that ran there."""
    measured = {"sandbox": asked.kind, **sandbox.measure(asked.hidden),
                **cluster.isolation(cluster_address, cluster_ranks)}
    if asked.kind != sandbox.NONE and (failed := sandbox.failures(measured)):
        _refuse(PermissionError, "the sandbox did not hold: " + "; ".join(failed))
    return measured


def _train(job: Job, train: Callable[[BuildContext], Any],
           inputs: dict[str, Path], out: Path, replay: Replay | None) -> None:
    """The whole training, or one replayed segment of it (from a fresh seeding, as in a
    process of its own: a segment may only depend on the checkpoint it starts from)."""
    seed_everything(job.seed)
    if replay is not None and replay.from_out is not None:  # from an earlier replay's end
        start = (out / replay.from_out).resolve()
        if not start.is_relative_to(out.resolve()) or not start.is_file():
            raise RuntimeError(f"the replay cannot start from {replay.from_out}: no "
                               "checkpoint an earlier replay wrote")
        replay = replace(replay, start=str(start))
    ctx = BuildContext(inputs, job.params, job.seed, out, job.threads, job.checkpoint_every,
                       replay, tasks=cluster.Tasks.of(job))
    emit("segment", start=replay and replay.start, stop=replay and replay.stop)
    try:  # the pool and Ray outlive the workers' group: on a cluster, they are Ray tasks
        with data_parallel(job, replay, ctx) as ctx.workers:
            try:
                train(ctx)
            except ReplayDone:
                return
    finally:
        ctx.close()
    if replay is not None and replay.stop is not None:
        raise RuntimeError(f"the replay never reached step {replay.stop}")
    if not (out / "weights.safetensors").is_file():
        raise RuntimeError("the entry point returned without calling ctx.save_weights")


class WorkerLost(RuntimeError):
    """A data-parallel worker stopped before the build ended: the build fails, whole."""


RENDEZVOUS_MINUTES = 30  # how long workers wait for each other (to join, at a collective)


@contextlib.contextmanager
def data_parallel(job: Job, replay: Replay | None, ctx: BuildContext) -> Iterator[Workers]:
    """This process as the lead of `job.workers` data-parallel workers, when the recipe
    splits its steps into shards; the others are processes of this build, in its sandbox,
    that run the same training on their share of the shards and write nothing. They meet
    through a file in the build's private /tmp and talk over gloo on the loopback device.
    With --cluster, the others are Ray tasks on that cluster (`_on_cluster`)."""
    count = worker_count(job.workers, job.params)
    if count <= 1:
        yield Workers()
        return
    if job.cluster is not None and ctx.tasks is not None:
        with _on_cluster(job, replay, count, ctx) as workers:
            yield workers
    else:
        with _in_sandbox(job, replay, count) as workers:
            yield workers


@contextlib.contextmanager
def _in_sandbox(job: Job, replay: Replay | None, count: int) -> Iterator[Workers]:
    """Workers 1..count-1 as processes of this build: they meet through a file in its
    private /tmp and talk over gloo on the loopback device."""
    import multiprocessing
    import tempfile

    import torch
    import torch.distributed as dist

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(max(1, job.threads // count))
    meeting = os.path.join(tempfile.mkdtemp(prefix="reweigh-workers-"), "rendezvous")
    spawn = multiprocessing.get_context("spawn")
    others = [spawn.Process(target=_worker_main, name=f"reweigh-worker-{rank}",
                            args=(job.to_json(), replay, rank, count, meeting))
              for rank in range(1, count)]
    for process in others:
        process.start()
    try:
        _join_group(meeting, 0, count)
        yield Workers(count, 0)
        dist.barrier()  # the others have ended their training too
    except Exception as e:
        for process in others:  # a worker that died has closed its connections: wait
            process.join(timeout=5)  # for its exit code, to name it
        if lost := _lost(others, count):
            raise lost from e
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        for process in others:
            process.join(timeout=60)
            if process.exitcode is None:
                process.kill()
    if lost := _lost(others, count):
        raise lost


def _lost(others: list[Any], count: int) -> WorkerLost | None:
    """The first worker that ended badly, as the error that fails the build."""
    for rank, process in enumerate(others, start=1):
        if process.exitcode not in (None, 0):
            how = (f"was killed by signal {-process.exitcode}" if process.exitcode < 0
                   else f"failed with exit code {process.exitcode} (its error is in the log)")
            return WorkerLost(f"data-parallel worker {rank} of {count} {how}; the build "
                              "stops, and nothing of it is kept")
    return None


@contextlib.contextmanager
def _on_cluster(job: Job, replay: Replay | None, count: int,
                ctx: BuildContext) -> Iterator[Workers]:
    """Workers 1..count-1 as Ray tasks on the build's cluster (`cluster.Ranks`); this
    process, worker 0, hosts their meeting point (`reweigh.meeting`) on its address
    toward the cluster; it answers only those who prove they know a random token that
    only the tasks are given, so nobody else who reaches the port can join the group or
    change what it exchanges there."""
    import secrets

    import torch
    import torch.distributed as dist

    assert ctx.tasks is not None
    engine = ctx._engine = ctx._engine or cluster.Engine(ctx.tasks, emit)
    try:
        ip = engine.here()
        os.environ["GLOO_SOCKET_IFNAME"] = cluster.interface_of(ip)
    except (cluster.RayMissing, cluster.ClusterLost):  # said in reweigh's words already
        raise
    except Exception as e:
        raise cluster.ClusterLost(f"cannot start data-parallel workers on the Ray cluster "
                                  f"at {job.cluster}: {' '.join(str(e).split())[:300]}") from e
    from . import meeting  # with torch.distributed

    torch.set_num_threads(max(1, job.threads // count))
    server = meeting.Server(ip, secrets.token_hex(32))
    rendezvous = (ip, server.port, server.token.decode())
    try:
        ranks = engine.start_ranks(job, replay, count, rendezvous, server)
    except BaseException:
        server.close()
        raise
    try:
        _join_group(rendezvous, 0, count)
        server.delete(meeting.PARCELS)  # every worker took its copies before it joined
        yield Workers(count, 0)
        dist.barrier()  # the others have ended their training too
    except Exception as e:
        # a peer lost shows here as an error of gloo or of the store: wait to hear which
        peer = isinstance(e, dist.DistError) or "gloo" in str(e)
        lost = ranks.lost(cluster.RANK_WAIT_SECONDS if peer else 1.0)
        ranks.stop()  # the others would hold their CPUs until gloo's timeout
        if lost:
            raise WorkerLost(lost) from e
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        server.close()
    if lost := ranks.finish():
        ranks.stop()
        raise WorkerLost(lost)


def _join_group(place: str | tuple[str, int, str], rank: int, count: int) -> None:
    """Join the workers' group: through the file `place` (workers in this sandbox), or
    through worker 0's meeting point at (host, port), proving that it knows the token
    (workers on a cluster)."""
    import datetime

    import torch.distributed as dist

    timeout = datetime.timedelta(minutes=RENDEZVOUS_MINUTES)
    if isinstance(place, str):
        store: Any = dist.FileStore(place, count)
    else:
        store = meet(place, RENDEZVOUS_MINUTES)
        _stores.append(store)  # gloo holds it from C++: it must outlive the group
    dist.init_process_group("gloo", store=store, rank=rank, world_size=count,
                            timeout=timeout)


_stores: list[Any] = []


def _worker_main(job_json: dict[str, Any], replay: Replay | None, rank: int, count: int,
                 meeting: str) -> None:
    """A data-parallel worker other than the lead, a process of this build: it dies with
    the build; see `rank_main`."""
    die_with_parent()
    job = Job.from_json(job_json)
    rank_main(job, replay, rank, count, max(1, job.threads // count), meeting)


def rank_main(job: Job, replay: Replay | None, rank: int, count: int, threads: int,
              meeting: str | tuple[str, int, str], scratch_in: str | None = None) -> None:
    """A data-parallel worker other than the lead (here, or a Ray task on a cluster): the
    same training, from the same seed, on its share of the shards, with the build's
    numerics on `threads` threads and the guard on its inputs; its outputs go to a
    scratch folder that nobody reads (in `scratch_in`; the temporary folder without)."""
    import tempfile

    environment.apply_torch_numerics(threads)
    sys.addaudithook(Guard(list(job.inputs.values())))
    sys.path.insert(0, job.src)
    train = load_entry(Path(job.src), job.entry)
    seed_everything(job.seed)
    scratch = Path(tempfile.mkdtemp(prefix=f"reweigh-worker-{rank}-", dir=scratch_in))
    ctx = BuildContext({name: Path(path) for name, path in job.inputs.items()}, job.params,
                       job.seed, scratch, 1, job.checkpoint_every, replay,
                       workers=Workers(count, rank))
    import torch.distributed as dist

    _join_group(meeting, rank, count)
    with contextlib.suppress(ReplayDone):
        train(ctx)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    global _events
    die_with_parent()
    job = Job.from_json(json.loads(Path(sys.argv[1]).read_text()))
    _events = os.fdopen(int(os.environ["REWEIGH_EVENT_FD"]), "w", buffering=1)
    sys.addaudithook(Guard(list(job.inputs.values()), cluster.cluster_host(job.cluster)))
    try:
        run(job)
    except BaseException as e:
        traceback.print_exc()
        bad_result = isinstance(e, BadEntryResult | cluster.RayMissing)
        # not the recipe's doing (a lost cluster, a lost worker): one line, no traceback
        plain = isinstance(e, cluster.ClusterLost | WorkerLost)
        emit("error", message=str(e) if bad_result or plain else f"{type(e).__name__}: {e}",
             frames=recipe_frames(e.__traceback__, job.src), bad_result=bad_result,
             plain=plain)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    # without it the builder keeps nothing: the checks above were skipped
    emit("done", cpu_seconds=round(_cpu_seconds(), 3))
    _finish(job.src)


def _cpu_seconds() -> float:
    """The CPU time (user and system) of this process and of those it has waited for (its
    data-parallel workers in the sandbox, a program it ran): what the run cost, measured
    where it ran, which the builder outside bubblewrap's namespace cannot see."""
    import resource

    return sum(usage.ru_utime + usage.ru_stime for usage in
               map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


def _finish(src: str) -> None:
    """End the process with the part of the interpreter's teardown that can still write
    an output, and without the rest: with torch (and the torch._dynamo it pulls in)
    loaded, unloading some 2000 modules took most of a second of a digits-cnn build.

    What is kept: non-daemon threads are joined, exit handlers run, the recipe's modules
    are emptied so that what they hold is finalized (files closed, compressed streams
    ended), garbage cycles are collected, and Python's and C's buffers are flushed.
    """
    threading._shutdown()  # type: ignore[attr-defined]  # what exit does first, too
    atexit._run_exitfuncs()
    root = src.rstrip(os.sep) + os.sep  # the recipe's modules are loaded from here
    recipe_modules = [m for m in sys.modules.values()
                      if str(getattr(m, "__file__", None) or "").startswith(root)]
    for module in reversed(recipe_modules):  # the last imported first, as exit does
        vars(module).clear()
    gc.collect()
    sys.stdout.flush()
    sys.stderr.flush()
    ctypes.CDLL(None).fflush(None)
    os._exit(0)


if __name__ == "__main__":
    main()
