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

With `--cluster ADDRESS --workers N` on a recipe that splits its steps into shards, the
build's data-parallel workers 1..N-1 run on that cluster too (`Ranks`), as Ray tasks of
one CPU each, started through the build's node; worker 0 stays in the build and writes
the outputs. Each one is sent the job in its task, takes the recipe's source and the
build's inputs from worker 0's meeting point (`reweigh.meeting`, where only those who
know the build's token are answered), checks every file against the derivation's
digests before anything runs, refuses a worker of another platform as a task does, and
meets the others there (runtime.py's `data_parallel`).

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
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
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
NODE_START_SECONDS = 300  # how long the build's node of a cluster may take to start
PROBE_SECONDS = 2.0  # how often a build on an existing cluster checks that its head answers
PROBE_MISSES = 5  # unanswered checks in a row that end the build


class RayMissing(RuntimeError):
    """--workers or --cluster asked for Ray, and it is not installed: a usage mistake."""


class ClusterLost(RuntimeError):
    """The cluster went away (or could not be reached) during the build: the build fails."""


class PlatformMismatch(RuntimeError):
    """A worker that runs on another platform than the build's: its bits could differ."""


class CopyMismatch(RuntimeError):
    """A file a data-parallel worker on the cluster was sent is not what the derivation
    says it is: the worker refuses to train on it."""


RANK_WAIT_SECONDS = 10.0  # how long a failing build waits to hear which remote worker died


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
    # ASCII digits only: "²".isdigit() holds, and int("²") raises
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
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


def cluster_ranks(job: Job) -> int:
    """How many of the build's data-parallel workers run on its cluster: workers 1..N-1
    with --cluster and --workers N on a sharded recipe (N is at most its shards), else 0."""
    from .shards import worker_count

    if job.cluster is None or job.mode != "build":
        return 0
    return max(0, worker_count(job.workers, job.params) - 1)


def isolation(address: str | None, ranks: int = 0) -> dict[str, Any]:
    """What the environment record adds about a cluster: where ctx.map's tasks ran (and
    the data-parallel workers that ran there), and that the build process shares the
    host's network to reach it (nothing without one)."""
    if address is None:
        return {}
    on_cluster = {"cluster_ranks": f"data-parallel workers 1..{ranks} of {ranks + 1} ran in "
                                   "the Ray cluster's own worker processes, outside this "
                                   "sandbox, unisolated by reweigh, on copies of the recipe's "
                                   "source and inputs that each checked against the "
                                   "derivation's digests; worker 0 ran here and wrote the "
                                   "outputs"} if ranks else {}
    return {"cluster": address, **on_cluster,
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
        self.ip: str | None = None  # this machine's address toward the cluster (--cluster)

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

    def here(self) -> str:
        """This machine's address toward the existing cluster, the cluster joined: where
        its data-parallel workers reach the build's worker 0."""
        self._start()
        assert self.ip is not None, "data-parallel workers on a cluster need --cluster"
        return self.ip

    def start_ranks(self, job: Job, replay: Any, count: int,
                    rendezvous: tuple[str, int, str], meeting: Any) -> Ranks:
        """Data-parallel workers 1..count-1 of `job` as Ray tasks on the cluster (one CPU
        each, never retried: a worker that died left a group that cannot take it back).
        `rendezvous` is worker 0's meeting point (`reweigh.meeting`: address, port) and
        the token a worker must prove it knows there; the recipe's source, every input
        and a replayed segment's start checkpoint are put there (`meeting`, its server)
        for the workers to take before they train."""
        from . import meeting as meet

        ray = self._start()
        cpus = int(ray.cluster_resources().get("CPU", 0))
        if cpus < count - 1:  # the others would wait for a CPU, and the group for them
            raise ClusterLost(f"the Ray cluster at {self.tasks.address} has {cpus} CPUs; "
                              f"data-parallel workers 1..{count - 1} need one each (build "
                              f"with --workers {cpus + 1} or fewer, or add nodes)")
        meet.put_parcel(meeting, "src", _pack(job.src))
        for name, path in job.inputs.items():
            meet.put_parcel(meeting, f"input/{name}", _pack(path))
        start_digest = None
        if replay is not None and replay.start is not None:  # a verifier's replayed segment
            from .digest import bytes_digest

            start = _pack(replay.start)  # read once: put there, and its digest to check it by
            meet.put_parcel(meeting, "start", start)
            start_digest = bytes_digest(start["file"])
        remote = ray.remote(num_cpus=1, max_retries=0, max_calls=1)(run_rank).options(
            name="reweigh-data-parallel-worker")
        job_json, setup = job.to_json(), self._setup()
        refs = [remote.remote(job_json, replay, rank, count, rendezvous, setup, start_digest)
                for rank in range(1, count)]
        return Ranks(ray, refs, count, str(self.tasks.address), self.emit, self._node)

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
        self.ip = ip = _facing_ip(host, port)
        self._temp = tempfile.mkdtemp(prefix="ray-", dir=_short_tmp())
        log = open(os.path.join(self._temp, "node.log"), "wb")  # noqa: SIM115
        self._node = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", f"--address={address}",
             f"--node-ip-address={ip}", "--num-cpus=0", "--num-gpus=0",
             f"--object-store-memory={OBJECT_STORE_BYTES}", f"--temp-dir={self._temp}",
             "--disable-usage-stats", "--block"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        _wait_for_node(self._node, os.path.join(self._temp, "node.log"))
        ray.init(address=address, _node_ip_address=ip, _temp_dir=self._temp,
                 log_to_driver=True, configure_logging=False,
                 runtime_env={"working_dir": self.tasks.src,
                              "env_vars": _task_env(self.tasks.platform)})
        self._watch = threading.Event()
        threading.Thread(target=_watch_head, args=(address, self._watch, self.emit),
                         daemon=True, name="reweigh-cluster-watch").start()


def _wait_for_node(node: subprocess.Popen[bytes], log: str) -> None:
    """Wait until the build's node says it runs (`ray start` prints it once started): Ray's
    driver gives a node that has not registered yet a minute, which a busy machine can
    take to start one."""
    deadline = time.monotonic() + NODE_START_SECONDS
    while time.monotonic() < deadline:
        with open(log, "rb") as handle:
            said = handle.read()
        if b"Ray runtime started" in said:
            return
        if node.poll() is not None:
            last = said.decode(errors="replace").strip().splitlines()[-1:] or ["nothing"]
            raise ConnectionError(f"the build's Ray node ended as it started (exit status "
                                  f"{node.returncode}; it said: {last[0][:200]})")
        time.sleep(0.2)
    raise ConnectionError(f"the build's Ray node did not start within {NODE_START_SECONDS} s")


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


class Ranks:
    """A build's data-parallel workers 1..count-1 running as Ray tasks on its cluster.

    A watch thread sees each task end; one that fails while worker 0 is still training
    (killed, out of memory, its machine lost, a refused platform or input) ends the build
    with one line naming it, even when worker 0 waits for it to join, which no collective
    error would end. When worker 0 fails or ends first, it claims the outcome (`lost`,
    `finish`) and the watch says nothing: exactly one line names what went wrong."""

    def __init__(self, ray: Any, refs: list[Any], count: int, address: str,
                 emit: Callable[..., None], node: subprocess.Popen[bytes] | None) -> None:
        self._ray, self.refs, self.count, self.address = ray, refs, count, address
        self._emit, self._node = emit, node
        self._claim = threading.Lock()  # held by whoever reports the outcome
        threading.Thread(target=self._watch, daemon=True,
                         name="reweigh-cluster-ranks").start()

    def lost(self, wait: float = RANK_WAIT_SECONDS) -> str | None:
        """Worker 0 failed: which remote worker failed first, within `wait` seconds, as
        the line that fails the build; None when none did (the failure was worker 0's)."""
        self._claim.acquire()
        pending = list(self.refs)
        ready, _ = self._ray.wait(pending, num_returns=len(pending), timeout=wait,
                                  fetch_local=False)
        for ref in [r for r in self.refs if r in ready]:
            if (failure := self._failure(ref)) is not None:
                return failure
        return None

    def finish(self) -> str | None:
        """Worker 0 trained to the end and every worker passed the last barrier: the
        remote tasks' outcomes, the first failure as the line that fails the build."""
        self._claim.acquire()
        for ref in self.refs:
            if (failure := self._failure(ref, timeout=60.0)) is not None:
                return failure
        return None

    def stop(self) -> None:
        """Cancel what still runs (worker 0 failed; its group is gone)."""
        self._claim.acquire(blocking=False)
        for ref in self.refs:
            with contextlib.suppress(Exception):
                self._ray.cancel(ref, force=True)

    def _failure(self, ref: Any, timeout: float | None = None) -> str | None:
        rank = self.refs.index(ref) + 1
        try:
            self._ray.get(ref, timeout=timeout)
        except self._ray.exceptions.RayTaskError as e:  # its own code raised: say what
            cause = e.cause if isinstance(e.cause, BaseException) else e
            return self._line(rank, f"failed: {type(cause).__name__}: {cause}")
        except self._ray.exceptions.GetTimeoutError:
            return self._line(rank, "did not end after the last barrier")
        except self._ray.exceptions.RayError as e:  # its process or machine went away
            return self._line(rank, f"died ({type(e).__name__}: {e})")
        return None

    def _line(self, rank: int, how: str) -> str:
        how = " ".join(how.split())[:400]
        return (f"data-parallel worker {rank} of {self.count}, a Ray task on the cluster at "
                f"{self.address}, {how}; the build stops, and nothing of it is kept")

    def _watch(self) -> None:
        pending = list(self.refs)
        while pending:
            try:
                ready, pending = self._ray.wait(pending, num_returns=1, timeout=1.0,
                                                fetch_local=False)
            except Exception:  # Ray shut down: the build has ended
                return
            for ref in ready:
                failure = self._failure(ref)
                if failure is None or not self._claim.acquire(blocking=False):
                    continue
                self._emit("error", message=failure, frames=[], bad_result=False, plain=True)
                sys.stderr.write(f"reweigh: {failure}\n")
                sys.stderr.flush()
                if self._node is not None:  # unsandboxed, nothing else would stop it
                    self._node.terminate()
                os._exit(1)


def interface_of(ip: str) -> str:
    """The name of this machine's network interface that holds address `ip` (gloo's
    GLOO_SOCKET_IFNAME): gloo then talks over the interface the cluster reaches."""
    import fcntl
    import struct

    if ipaddress.ip_address(ip).is_loopback:
        return "lo"
    siocgifaddr = 0x8915
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            try:
                answer = fcntl.ioctl(probe.fileno(), siocgifaddr,
                                     struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
            if socket.inet_ntoa(answer[20:24]) == ip:
                return name
    raise ConnectionError(f"no network interface here holds {ip}, the address toward the "
                          "cluster (IPv6 is not supported for data-parallel workers)")


def _pack(path: str) -> dict[str, Any]:
    """A file or a folder of the build, for a worker on another machine: its name and
    every regular file's relative path and bytes (symbolic links are refused)."""
    from .digest import tree_files

    root = Path(path)
    if root.is_file():
        return {"name": root.name, "file": root.read_bytes()}
    return {"name": root.name, "tree": [(p.relative_to(root).as_posix(), p.read_bytes())
                                        for p in tree_files(root)]}


def _unpack(packed: dict[str, Any], where: Path) -> Path:
    """Write what `_pack` made under `where`: the file or folder's path there. Every name
    must stay inside `where`."""
    from .signing import safe_relative

    name = str(packed["name"])
    if safe_relative(name) is None or "/" in name:
        raise CopyMismatch(f"a file was sent under the name {name!r}")
    target = where / name
    files = [("", packed["file"])] if "file" in packed else packed["tree"]
    if "file" not in packed:
        target.mkdir(parents=True)
    for rel, data in files:
        if rel and safe_relative(rel) is None:
            raise CopyMismatch(f"a file was sent under the path {rel!r}, outside its folder")
        path = target / rel if rel else target
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "xb") as handle:  # never through a link, never twice
            handle.write(data)
        os.chmod(path, 0o444)
    return target


def _verified(packed: dict[str, Any], where: Path, digest: str, what: str) -> Path:
    """`_unpack`, then the copy's digest checked against the derivation's `digest`."""
    from .digest import path_digest

    target = _unpack(packed, where)
    if (actual := path_digest(target)) != digest:
        raise CopyMismatch(f"{what} as sent has digest {actual}, the derivation says "
                           f"{digest}: refused")
    return target


# --- inside a Ray worker -------------------------------------------------------------------
_prepared: dict[str, Any] = {}  # this worker's platform record, once taken


def run_task(call: bytes, setup: dict[str, Any]) -> Any:
    """One ctx.map call in a Ray worker: the worker is made a build's worker (numerics,
    guard, the recipe's folder importable) at its first task, then `function(item)` runs
    on one intra-op thread."""
    _same_platform(setup)
    import pickle

    from .runtime import _on_one_thread

    function, item = pickle.loads(call)  # the build's own driver pickled it, for this run
    return _on_one_thread(function, item)


def _same_platform(setup: dict[str, Any]) -> None:
    """Make this worker a build's worker at its first task; refuse a task of a build on
    another platform (PlatformMismatch, naming what differs)."""
    if not _prepared:
        _prepare(setup)
    if _prepared["platform"]["digest"] != setup["platform"]["digest"]:
        raise PlatformMismatch(_mismatch(_prepared["platform"], setup["platform"]))


def run_rank(job_json: dict[str, Any], replay: Any, rank: int, count: int,
             rendezvous: tuple[str, int, str], setup: dict[str, Any],
             start_digest: str | None = None) -> None:
    """Data-parallel worker `rank` of `count` in a Ray worker: the recipe's source and
    inputs taken from worker 0's meeting point, each checked against the derivation's
    digests (and a replayed segment's start checkpoint against `start_digest`); the
    worker's platform checked against the build's; then the same training as worker
    0's, from the same seed, on one thread, on its share of the shards. It writes
    nothing that is kept: its copies and scratch output live in a folder removed when it
    ends (and the Ray worker process ends with the task)."""
    from .job import Job
    from .meeting import take_parcel
    from .runtime import RENDEZVOUS_MINUTES, meet, rank_main

    job = Job.from_json(job_json)
    host, port, _ = rendezvous  # gloo's interface: the one toward worker 0 (before the guard)
    os.environ["GLOO_SOCKET_IFNAME"] = interface_of(_facing_ip(host, port))
    _same_platform({**setup, "inputs": []})  # its input copies get the guard in rank_main
    place = Path(tempfile.mkdtemp(prefix=f"reweigh-worker-{rank}-"))
    meeting = None
    try:
        meeting = meet(rendezvous, RENDEZVOUS_MINUTES)
        src = place / "src"
        src.mkdir()
        packed = take_parcel(meeting, "src")
        names = sorted(rel for rel, _ in packed.get("tree", []))
        if names != sorted(job.code_digests):
            raise CopyMismatch(f"the recipe's source as sent holds {names}, the derivation "
                               f"{sorted(job.code_digests)}: refused")
        code = _unpack(packed, src)
        for rel, digest in job.code_digests.items():
            _check_file(code / rel, digest, f"the recipe's {rel}")
        if unchecked := sorted(set(job.inputs) - set(job.input_digests)):
            raise CopyMismatch(f"input {unchecked[0]!r}: the derivation has no digest for it "
                               "to check a copy by: refused")
        inputs = {}
        for name, digest in job.input_digests.items():
            folder = place / "inputs" / name
            folder.mkdir(parents=True)
            inputs[name] = str(_verified(take_parcel(meeting, f"input/{name}"), folder,
                                         digest, f"input {name!r}"))
        if start_digest is not None:  # the checkpoint worker 0 resumes from, and no other
            (place / "start").mkdir()
            start = _verified(take_parcel(meeting, "start"), place / "start", start_digest,
                              "the checkpoint")
            replay = replace(replay, start=str(start), from_out=None)
        meeting.close()
        job = replace(job, src=str(code), inputs=inputs)
        rank_main(job, replay, rank, count, 1, rendezvous, str(place))
    finally:
        if meeting is not None:
            meeting.close()
        shutil.rmtree(place, ignore_errors=True)


def _check_file(path: Path, digest: str, what: str) -> None:
    from .digest import file_digest

    if (actual := file_digest(path)) != digest:
        raise CopyMismatch(f"{what} as sent has digest {actual}, the derivation says "
                           f"{digest}: refused")


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
