"""ctx.map's tasks on Ray: a local cluster inside the build's sandbox, or an existing one.

With `--workers N`, `ctx.map` hands its items to Ray as tasks instead of the build's own
process pool: to a one-node Ray cluster that this module starts inside the sandbox at the
first map (N CPUs, a small object store, no dashboard, no usage report, its files in the
build's private /tmp) and stops when the training ends; with `--cluster ADDRESS`, to an
existing cluster, which the build joins through a Ray node of its own with no CPUs,
started in its sandbox, and leaves. A recipe that never maps starts nothing.

A task's result must not depend on where it runs, so each one runs as a call of the
build's own pool does: on one intra-op thread, with the build's pinned numerics, under
the runtime's audit guard, the recipe's folder importable, on a worker whose platform
(the settings and versions that decide the bits) is the build's. A worker on another
platform refuses its task, naming what differs, rather than give other bits. Results
come back in item order. A worker that dies (killed, out of memory) has its task run
again by Ray, up to `MAX_RETRIES` times; an exception of the recipe's own code is not
retried: the same code on the same item raises again.

What this module does not do: isolate tasks on an existing cluster. They run in that
cluster's worker processes, outside reweigh's sandbox, and the build process shares the
host's network to reach it; the environment record says exactly that (`isolation`).
Ray is an optional dependency (`pip install 'reweigh[distributed]'`): without it, only a
map with `--workers` or `--cluster` fails, with one line saying how to install it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .job import Job

INSTALL = "pip install 'reweigh[distributed]'"
MAX_RETRIES = 3  # runs of a task whose worker died, after the first
OBJECT_STORE_BYTES = 96 * 2**20  # Ray's floor is 75 MiB; self-play shards need a few MiB
# Ray's own settings for the processes it starts: no usage report, no metrics agent work
# that a build never reads, and a driver that gives up on a lost cluster within a minute.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
           "RAY_COLOR_PREFIX": "0", "RAY_DEDUP_LOGS": "0",
           # the build's node of a cluster leaves at once: it runs no tasks to drain
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
           "RAY_enable_metrics_collection": "0",
           # Ray's memory monitor kills tasks when the whole machine's memory is nearly
           # full, whoever fills it; a build leaves that to the kernel
           "RAY_memory_monitor_refresh_ms": "0",
           # Ray ends a driver that lost its cluster after this long, with a line of its
           # own; reweigh's watch (below) says it first, in reweigh's terms
           "RAY_gcs_rpc_server_reconnect_timeout_s": "60"}
PROBE_SECONDS = 2.0  # how often a build on an existing cluster checks that its head answers
PROBE_MISSES = 5  # unanswered checks in a row that end the build


class RayMissing(RuntimeError):
    """--workers or --cluster asked for Ray, and it is not installed: a usage mistake."""


class ClusterLost(RuntimeError):
    """The cluster went away (or could not be reached) during the build: the build fails."""


class PlatformMismatch(RuntimeError):
    """A worker that runs on another platform than the build's: its bits could differ."""


@dataclass(frozen=True)
class Tasks:
    """How ctx.map's tasks are spread: `workers` CPUs of a local cluster, or the existing
    cluster at `address`; the recipe's source, its inputs and its numerics platform."""

    workers: int
    address: str | None
    src: str
    input_roots: tuple[str, ...]
    platform: str

    @staticmethod
    def of(job: Job) -> Tasks | None:
        """The job's tasks setting; None when ctx.map keeps the build's own pool."""
        if job.workers <= 1 and job.cluster is None:
            return None
        return Tasks(job.workers, job.cluster, job.src, tuple(job.inputs.values()),
                     job.platform)


def parse_address(text: str) -> tuple[str, int]:
    """A cluster's `HOST:PORT` (an IPv6 host in brackets), checked: the host, the port.
    Raises ValueError saying what is wrong."""
    if "://" in text:
        raise ValueError(f"{text!r}: give the head's HOST:PORT (its GCS address, what "
                         "`ray start --head` prints), not a URL")
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT (say 10.0.0.5:6379)")
    return host, int(port)


def resolve_address(text: str) -> str:
    """`HOST:PORT` with the host resolved to an IP address, here, before the build starts:
    the sandbox has no name service (its /etc/hosts knows localhost only)."""
    host, port = parse_address(text)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:
            ip = ipaddress.ip_address(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                                      [0][4][0])
        except (OSError, IndexError) as e:
            raise ValueError(f"{text!r}: cannot resolve {host!r} ({e})") from None
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def cluster_host(address: str | None) -> str | None:
    """The IP address of a resolved cluster address (what the guard lets through)."""
    return None if address is None else parse_address(address)[0]


def isolation(address: str | None) -> dict[str, Any]:
    """What the environment record adds about a cluster: where ctx.map's tasks ran, and
    that the build process shares the host's network to reach it (nothing without one)."""
    if address is None:
        return {}
    return {"cluster": address,
            "cluster_tasks": "ctx.map's tasks ran in the Ray cluster's own worker processes, "
                             "outside this sandbox, unisolated by reweigh",
            "network_shared": "the build process shares the host's network, to reach the "
                              "cluster; the rest of the sandbox holds"}


def auth_env(address: str | None) -> dict[str, str]:
    """The Ray token the build needs to join a cluster that asks for one, from where Ray
    itself looks ($RAY_AUTH_TOKEN, the file $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token): the
    sandbox has another home. Never written to a file of the build, nor recorded."""
    if address is None:
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if not token and os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token} if token else {}


class Engine:
    """The Ray side of one build's ctx.map: started at the first map, stopped by `close`."""

    def __init__(self, tasks: Tasks, emit: Callable[..., None]) -> None:
        self.tasks = tasks
        self.emit = emit  # the runtime's event line to the builder (a lost cluster's error)
        self._ray: Any = None
        self._remote: Any = None
        self._platform: dict[str, Any] = {}  # the build's platform, every worker's too
        self._temp: str | None = None
        self._node: subprocess.Popen[bytes] | None = None  # this build's node of a cluster
        self._watch: threading.Event | None = None  # set: stop watching the cluster's head

    def map(self, function: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        """`function(item)` for each item as a Ray task; the results in item order."""
        ray = self._start()
        setup = self._setup()
        # Pickled here, unpickled in the worker after its guard is in place: unpickling
        # imports the recipe's modules, whose top-level code is recipe code too.
        refs = [self._remote.remote(ray.cloudpickle.dumps((function, item)), setup)
                for item in items]
        try:
            return list(ray.get(refs))
        except ray.exceptions.RayTaskError as e:  # the recipe's own code raised
            cause = e.cause if isinstance(e.cause, BaseException) else RuntimeError(str(e))
            raise cause from e
        except ray.exceptions.RayError as e:
            raise ClusterLost(self._lost(e)) from e

    def close(self) -> None:
        """Leave the cluster; a local one is stopped, with every process it started."""
        if self._watch is not None:
            self._watch.set()
            self._watch = None
        if self._ray is not None:
            with contextlib.suppress(Exception):
                self._ray.shutdown()
            self._ray = None
        if self._node is not None:  # `ray start --block` stops its node on SIGTERM
            self._node.terminate()
            try:
                self._node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._node.kill()
                self._node.wait()
            self._node = None
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True)
            self._temp = None

    def _lost(self, error: Exception) -> str:
        where = (f"the Ray cluster at {self.tasks.address}" if self.tasks.address
                 else "the local Ray cluster")
        first = " ".join(str(error).split())[:300]
        return (f"ctx.map's tasks failed on {where} ({type(error).__name__}: {first}); "
                "the build stops, and nothing of it is kept")

    def _setup(self) -> dict[str, Any]:
        return {"src": self.tasks.src, "inputs": list(self.tasks.input_roots),
                "platform": self._platform, "platform_name": self.tasks.platform}

    def _start(self) -> Any:
        if self._ray is not None:
            return self._ray
        os.environ.update(RAY_ENV)  # before Ray loads: it reads them once
        if self.tasks.address is None:  # a token of this build's own, held in memory
            os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)})
        try:
            import ray
        except ImportError:
            raise RayMissing(f"ctx.map with --workers or --cluster runs on Ray, which is not "
                             f"installed: {INSTALL} (or build without --workers)") from None
        from . import environment

        self._platform = environment.capture(1, {}, self.tasks.platform)["platform"]
        try:
            if self.tasks.address is None:
                self._start_local(ray)
            else:
                self._join(ray, self.tasks.address)
        except Exception as e:
            self.close()
            what = (f"join the Ray cluster at {self.tasks.address}" if self.tasks.address
                    else "start the local Ray cluster")
            raise ClusterLost(f"cannot {what}: {' '.join(str(e).split())[:300]}") from e
        self._ray = ray
        self._remote = ray.remote(run_task).options(
            num_cpus=1, max_retries=MAX_RETRIES, retry_exceptions=False)
        return ray

    def _start_local(self, ray: Any) -> None:
        """A one-node cluster of `workers` CPUs, its processes children of this one (in
        the sandbox: its pid namespace ends them all with the build)."""
        self._temp = tempfile.mkdtemp(prefix="ray-", dir=_short_tmp())
        ray.init(num_cpus=self.tasks.workers, num_gpus=0, include_dashboard=False,
                 object_store_memory=OBJECT_STORE_BYTES, _node_ip_address="127.0.0.1",
                 _temp_dir=self._temp, log_to_driver=True, configure_logging=False,
                 runtime_env={"env_vars": _task_env(self.tasks.platform)})

    def _join(self, ray: Any, address: str) -> None:
        """Join an existing cluster. A Ray driver talks to the cluster through a node on its
        own machine, so this starts one in the sandbox (`ray start --address`, no CPUs: no
        task runs on it) and connects to that node; the recipe's source travels with the
        job (Ray's working_dir), since the cluster's machines do not have it."""
        host, port = parse_address(address)
        try:  # Ray itself would wait for a head that is not there, for minutes
            socket.create_connection((host, port), timeout=10).close()
        except OSError as e:
            raise ConnectionError(f"nothing answers there ({e.strerror or e})") from None
        ip = _facing_ip(host, port)
        self._temp = tempfile.mkdtemp(prefix="ray-", dir=_short_tmp())
        log = open(os.path.join(self._temp, "node.log"), "wb")  # noqa: SIM115
        self._node = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", f"--address={address}",
             f"--node-ip-address={ip}", "--num-cpus=0", "--num-gpus=0",
             f"--object-store-memory={OBJECT_STORE_BYTES}", f"--temp-dir={self._temp}",
             "--disable-usage-stats", "--block"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        ray.init(address=address, _node_ip_address=ip, _temp_dir=self._temp,
                 log_to_driver=True, configure_logging=False,
                 runtime_env={"working_dir": self.tasks.src,
                              "env_vars": _task_env(self.tasks.platform)})
        self._watch = threading.Event()
        threading.Thread(target=_watch_head, args=(address, self._watch, self.emit),
                         daemon=True, name="reweigh-cluster-watch").start()


def _short_tmp() -> str:
    """Where the local cluster keeps its files: the build's private /tmp in the sandbox;
    unisolated, /tmp, as Ray's sockets need a short path (108 bytes at most)."""
    base = tempfile.gettempdir()
    return base if len(base) <= 40 else "/tmp"


def _watch_head(address: str, stop: threading.Event, emit: Callable[..., None]) -> None:
    """End the build when the cluster's head stops answering (PROBE_MISSES checks in a row):
    the build fails with one line saying so, and the builder keeps nothing of it. Without
    this, Ray's core ends the process itself a minute later, with a line of its own."""
    host, port = parse_address(address)
    misses = 0
    while not stop.wait(PROBE_SECONDS):
        try:
            socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
            misses = 0
        except OSError:
            misses += 1
        if misses >= PROBE_MISSES and not stop.is_set():
            emit("error", message=f"the Ray cluster at {address} stopped answering (no "
                 f"connection for {PROBE_MISSES * PROBE_SECONDS:g} s) while ctx.map's tasks "
                 "ran on it; the build stops, and nothing of it is kept", frames=[],
                 bad_result=False, plain=True)
            sys.stderr.write(f"reweigh: lost the Ray cluster at {address}\n")
            sys.stderr.flush()
            os._exit(1)


def _facing_ip(host: str, port: int) -> str:
    """This machine's address on the way to `host` (no packet is sent): what the
    build's node of the cluster is reached at."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((host, port))
        return str(probe.getsockname()[0])


def _task_env(platform_name: str) -> dict[str, str]:
    """The environment a task's worker process starts with: the build's pinned numerics
    (read by the libraries when they load, before any task runs) on one thread."""
    from . import environment, numerics

    return {**environment.build_env(1, numerics.here(platform_name)), "PYTHONHASHSEED": "0"}


# --- inside a Ray worker -------------------------------------------------------------------
_prepared: dict[str, Any] = {}  # this worker's platform record, once taken


def run_task(call: bytes, setup: dict[str, Any]) -> Any:
    """One ctx.map call in a Ray worker: the worker is made a build's worker (numerics,
    guard, the recipe's folder importable) at its first task, then `function(item)` runs
    on one intra-op thread."""
    if not _prepared:
        _prepare(setup)
    if _prepared["platform"]["digest"] != setup["platform"]["digest"]:
        raise PlatformMismatch(_mismatch(_prepared["platform"], setup["platform"]))
    import pickle

    from .runtime import _on_one_thread

    function, item = pickle.loads(call)  # the build's own driver pickled it, for this run
    return _on_one_thread(function, item)


def _mismatch(mine: dict[str, Any], build: dict[str, Any]) -> str:
    """Why this worker refuses its tasks: the platform fields that differ from the build's."""
    here, there = _leaves(mine), _leaves(build)
    differ = [k for k in sorted(set(here) | set(there))
              if k != "digest" and here.get(k) != there.get(k)]
    said = "; ".join(f"{k}: {here.get(k)!r} here, {there.get(k)!r} in the build"
                     for k in differ[:3])
    return (f"a Ray worker on {socket.gethostname()} runs on another platform than the build "
            f"({said or 'another digest'}{'; ...' if len(differ) > 3 else ''}): its results "
            "could differ, so it refuses the task; give the cluster's workers the build's "
            "Python packages, settings and CPU level")


def _leaves(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested record as dotted keys and their values."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat |= _leaves(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _prepare(setup: dict[str, Any]) -> None:
    from . import environment
    from .runtime import Guard

    environment.apply_torch_numerics(1)
    _prepared["platform"] = environment.capture(1, {}, setup["platform_name"])["platform"]
    if os.path.isdir(setup["src"]) and setup["src"] not in sys.path:
        sys.path.insert(0, setup["src"])
    sys.addaudithook(Guard(list(setup["inputs"])))
