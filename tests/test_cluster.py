"""ctx.map on Ray (issue 14): a local cluster the build starts and stops in its sandbox
(--workers N), an existing cluster it joins (--cluster ADDRESS), a worker killed under a
task, a cluster that is not there, and Ray not installed. Every build here gives the
weights of the plain path, bit for bit, and leaves no Ray process behind.

Ray costs seconds and memory at each start, so the builds are few: connect4-zero's smoke
variant once through a local cluster (a --check against the run's shared plain build),
and one small recipe, whose second task kills its own worker the first time it runs,
built plainly, through a local cluster and through a head the test starts on 127.0.0.1.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from reweigh.cluster import _mismatch, parse_address
from reweigh.digest import file_digest
from reweigh.store import Store

from .conftest import Examples
from .helpers import EXAMPLES, run_json, run_reweigh, store_is_empty, write_recipe

pytest.importorskip("ray", reason="Ray is the 'distributed' extra; ./dev installs it")

SMOKE = EXAMPLES / "connect4-zero" / "smoke.toml"

TRAIN = """
import os
import secrets

import torch

import tasks


def train(ctx):
    driver, mark = os.getpid(), secrets.token_hex(8)  # neither reaches the weights
    results = ctx.map(tasks.work, [{"seed": s, "driver": driver, "mark": mark}
                                   for s in range(ctx.params["tasks"])])
    ctx.log_metric("retried", sum(r["retried"] for r in results))
    ctx.log_metric("workers_seen", len({r["pid"] for r in results}))
    ctx.save_weights({"w": torch.stack([r["value"] for r in results])})
"""

# Task 1 kills the process it runs in, the first time it runs anywhere but in the build
# process itself (the plain path maps in-process): Ray must run it again elsewhere.
TASKS = """
import os
import signal
import tempfile

import torch


def work(task):
    retried = 0
    if task["seed"] == 1 and os.getpid() != task["driver"]:
        marker = os.path.join(tempfile.gettempdir(), "killed-" + task["mark"])
        if os.path.exists(marker):
            retried = 1
        else:
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
    g = torch.Generator().manual_seed(task["seed"])
    a = torch.randn(48, 48, generator=g)
    for _ in range(4):
        a = torch.tanh(a @ a / 7)  # matmuls: their bits depend on the kernels and threads
    return {"value": a.sum(0), "retried": retried, "pid": os.getpid()}
"""


def _recipe(where: Path) -> Path:
    return write_recipe(where, TRAIN, params="tasks = 4", files={"tasks.py": TASKS})


# --- no Ray process outlives a build ---------------------------------------------------------

PR_SET_CHILD_SUBREAPER = 36


@pytest.fixture
def adopted() -> Iterator[None]:
    """Processes orphaned during the test become this process's children (a subreaper), so
    a Ray process that outlived its build is found, and known to be of this test."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        _reap()


HEADS: set[int] = set()  # the module's Ray head, while it runs (`head`): not a leftover


def _ray_children() -> list[str]:
    """This process's children that are Ray's, but for the module's head: `pid cmdline`
    of each."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in HEADS:
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == os.getpid() and "ray" in command:
            found.append(f"{entry} {command[:120]}")
    return found


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _no_ray_left() -> None:
    _reap()
    assert _ray_children() == [], "Ray processes outlived the build"


# --- the pure part --------------------------------------------------------------------------

@given(st.text(max_size=40))
@example("0:²")  # a digit to str.isdigit, not to int(): found by this test
@example("h:٣")  # a decimal digit int() reads: still not a port
def test_a_cluster_address_is_host_and_port_or_refused(text: str) -> None:
    try:
        host, port = parse_address(text)
    except ValueError as e:
        assert repr(text) in str(e) or "not a URL" in str(e)
        return
    assert host and 0 < port < 65536
    assert int(text.rpartition(":")[2]) == port and host in text


def test_a_remote_workers_copies_must_be_what_the_derivation_says(tmp_path: Path) -> None:
    """What a data-parallel worker on a cluster is sent is checked before it trains: a
    file whose bytes differ from the derivation's digest, and a name that would leave
    the worker's folder, are refused; a faithful copy comes back with the same digest."""
    from reweigh.cluster import CopyMismatch, _pack, _verified
    from reweigh.digest import path_digest

    source = tmp_path / "data"
    (source / "sub").mkdir(parents=True)
    (source / "a.bin").write_bytes(b"weights of the data")
    (source / "sub" / "b.txt").write_text("labels")
    digest = path_digest(source)
    packed = _pack(str(source))
    (tmp_path / "ok").mkdir()
    copy = _verified(packed, tmp_path / "ok", digest, "input 'data'")
    assert path_digest(copy) == digest and (copy / "sub" / "b.txt").read_text() == "labels"
    tampered = {**packed, "tree": [(rel, data + b"!" if rel == "a.bin" else data)
                                   for rel, data in packed["tree"]]}
    (tmp_path / "bad").mkdir()
    with pytest.raises(CopyMismatch, match="input 'data' as sent has digest"):
        _verified(tampered, tmp_path / "bad", digest, "input 'data'")
    for rel in ("../escape", "/etc/passwd", "sub/../../escape"):
        where = tmp_path / f"out-{abs(hash(rel))}"
        where.mkdir()
        with pytest.raises(CopyMismatch, match="outside its folder"):
            _verified({"name": "data", "tree": [(rel, b"x")]}, where, digest, "input")
    assert not (tmp_path / "escape").exists()


def test_a_worker_on_another_platform_names_what_differs() -> None:
    build = {"name": "portable", "packages": {"torch": "2.13.0+cpu", "numpy": "2.1"},
             "settings": {"env": {"ATEN_CPU_CAPABILITY": "avx2"}}, "digest": "sha256:aa"}
    worker = {**build, "packages": {"torch": "2.12.1+cpu", "numpy": "2.1"},
              "settings": {"env": {"ATEN_CPU_CAPABILITY": None}}, "digest": "sha256:bb"}
    said = _mismatch(worker, build)
    assert "packages.torch: '2.12.1+cpu' here, '2.13.0+cpu' in the build" in said
    assert "settings.env.ATEN_CPU_CAPABILITY: None here, 'avx2' in the build" in said
    assert "numpy" not in said and "refuses the task" in said


@pytest.mark.parametrize(("address", "says"), [
    ("nonsense", "is not HOST:PORT"), ("ray://10.0.0.5:10001", "not a URL"),
    ("10.0.0.5:99999", "is not HOST:PORT"), ("no-such-host.invalid:6379", "cannot resolve")])
def test_a_bad_cluster_address_is_exit_2_in_one_line(tmp_path: Path, address: str,
                                                      says: str) -> None:
    result = run_reweigh("build", _recipe(tmp_path / "r"), "--cluster", address,
                         store=tmp_path / "store")
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "--cluster" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert store_is_empty(tmp_path / "store")


# --- builds ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_self_play_through_ray_gives_the_plain_builds_weights(
        examples: Examples, tmp_path: Path, adopted: None) -> None:
    """connect4-zero smoke: its self-play shards as Ray tasks on a local cluster of two
    workers rebuild the plain build's item bit for bit (test_connect4: and so does the
    local pool of --threads 2)."""
    copy = examples.copy("connect4-zero-smoke", tmp_path)
    again = run_json("build", SMOKE, "--check", "--workers", "2", store=copy.store)
    assert again["reused"] and again["check"]["identical"] is True, again["check"]
    assert again["weights_digest"] == file_digest(copy.item / "weights.safetensors")
    _no_ray_left()


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The small recipe built on the plain path (every task in the build process)."""
    where = tmp_path_factory.mktemp("plain")
    return run_json("build", _recipe(where / "r"), store=where / "store")


def _item(built: dict) -> tuple[dict, dict]:
    item = Path(built["path"])
    return (json.loads((item / "provenance.json").read_text()),
            json.loads((item / "metrics.json").read_text()))


@pytest.mark.slow
def test_a_killed_ray_worker_is_replaced_and_the_bits_stay(
        plain: dict, tmp_path: Path, adopted: None) -> None:
    built = run_json("build", _recipe(tmp_path / "r"), "--workers", "2",
                     store=tmp_path / "store")
    assert built["weights_digest"] == plain["weights_digest"]
    provenance, metrics = _item(built)
    assert metrics["training"]["retried"] == 1  # task 1 did die once, and ran again
    assert provenance["predicate"]["buildDefinition"]["internalParameters"]["workers"] == 2
    isolation = _isolation(provenance)  # the local cluster ran inside the sandbox
    assert isolation["network"] == "loopback only" and "cluster" not in isolation
    _no_ray_left()


def _isolation(provenance: dict) -> dict:
    from reweigh.provenance import environment_of

    env = environment_of(provenance)
    assert env is not None
    return env["isolation"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def head() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A one-CPU Ray head on 127.0.0.1, started (`ray start --head --block`) and stopped by
    this module's tests, which share it (it takes seconds to start); its own home and
    temporary folder (a short path: Ray's sockets live there)."""
    port = _free_port()
    home = Path(tempfile.mkdtemp(prefix="head-", dir="/tmp"))
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(home), "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    process = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={port}",
         "--num-cpus=1", "--include-dashboard=false", "--node-ip-address=127.0.0.1",
         f"--temp-dir={home / 'ray'}", "--disable-usage-stats", "--block"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    HEADS.add(process.pid)
    try:
        _wait_for(port, process)
        yield f"127.0.0.1:{port}", process
    finally:
        process.send_signal(signal.SIGTERM)  # --block stops the head's processes with it
        process.wait(timeout=60)
        HEADS.discard(process.pid)
        shutil.rmtree(home, ignore_errors=True)


def _wait_for(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the Ray head did not come up on port {port}")


@pytest.mark.slow
def test_a_build_on_an_existing_cluster_says_so_in_its_provenance(
        plain: dict, tmp_path: Path, head: tuple[str, subprocess.Popen[bytes]],
        adopted: None) -> None:
    address, _ = head
    built = run_json("build", _recipe(tmp_path / "r"), "--cluster", address,
                     store=tmp_path / "store")
    assert built["weights_digest"] == plain["weights_digest"]
    provenance, metrics = _item(built)
    assert metrics["training"]["retried"] == 1  # killed on the head's worker, run again
    internal = provenance["predicate"]["buildDefinition"]["internalParameters"]
    assert internal["cluster"] == address and internal["workers"] == 1
    isolation = _isolation(provenance)
    assert isolation["cluster"] == address and isolation["network"].startswith("host")
    assert isolation["seccomp"] == "filter" and isolation["pid_namespace"] is True
    shown = run_reweigh("show", built["path"], store=tmp_path / "store")
    assert f"Ray cluster at {address}" in shown.stdout and "outside" in shown.stdout
    judged = run_json("challenge", tmp_path / "r", "--published",
                      Path(built["path"]) / "weights.safetensors", store=tmp_path / "store")
    assert judged["verdict"] == "identical"
    assert any(f"Ray cluster at {address}" in reason for reason in judged["reasons"])
    _no_ray_left()
    # the derivation is the plain build's: --cluster and --workers are not part of it
    assert built["derivation"] == plain["derivation"]


@pytest.mark.slow
def test_a_cluster_that_is_not_there_fails_in_one_line_and_keeps_nothing(
        tmp_path: Path, adopted: None) -> None:
    result = run_reweigh("build", _recipe(tmp_path / "r"), "--cluster",
                         f"127.0.0.1:{_free_port()}", store=tmp_path / "store")
    assert result.returncode == 1, result.stderr
    assert "cannot join the Ray cluster" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert store_is_empty(tmp_path / "store")
    _no_ray_left()


@pytest.mark.slow
def test_without_ray_a_map_with_workers_says_how_to_install_it(tmp_path: Path) -> None:
    """An environment without Ray (a `ray` that cannot be imported comes first on the
    path): --workers on a recipe that maps is exit 2, one line naming the extra."""
    shadow = tmp_path / "no-ray" / "ray"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    result = run_reweigh("build", _recipe(tmp_path / "r"), "--workers", "2",
                         store=tmp_path / "store",
                         env={"PYTHONPATH": os.pathsep.join(
                             [str(tmp_path / "no-ray"), os.environ.get("PYTHONPATH", "")])})
    assert result.returncode == 2, result.stderr
    assert "pip install 'reweigh[distributed]'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert store_is_empty(tmp_path / "store")


# --- data-parallel workers on a cluster (--cluster ADDRESS --workers N) ----------------------

@pytest.mark.slow
def test_data_parallel_workers_on_a_cluster_give_the_plain_bits_and_a_lost_one_fails(
        examples: Examples, tmp_path: Path, head: tuple[str, subprocess.Popen[bytes]],
        adopted: None) -> None:
    """Sharded digits-cnn with worker 1 of 2 as a Ray task on a head the test started:
    the weights of the run's plain build of it, bit for bit, the provenance saying
    where the worker ran; a verifier's replay of its last segment with worker 1 there too.
    Then a recipe whose worker 1 kills its own Ray worker process
    mid-training, after taking its 300 KB source from worker 0: one line naming it,
    nothing kept. One head for both: Ray is slow to start."""
    from .test_workers import bn_recipe

    address, _ = head
    recipe = EXAMPLES / "digits-cnn" / "sharded.toml"
    (plain,) = Store(examples.built("digits-cnn-sharded").store).items()
    rebuilt = run_json("build", recipe, "--cluster", address, "--workers", "2",
                       store=tmp_path / "store2")
    assert rebuilt["weights_digest"] == plain.weights_digest
    assert rebuilt["derivation"] == plain.derivation  # where it ran is not built
    provenance, _ = _item(rebuilt)
    internal = provenance["predicate"]["buildDefinition"]["internalParameters"]
    assert internal["cluster"] == address and internal["cluster_ranks"] == 1
    assert internal["workers"] == 2
    isolation = _isolation(provenance)
    assert "workers 1..1 of 2 ran in the Ray cluster" in isolation["cluster_ranks"]
    shown = run_reweigh("show", rebuilt["path"], store=tmp_path / "store2")
    assert "cluster workers" in shown.stdout and "outside this sandbox" in shown.stdout
    # a verifier's replay of the last segment there: worker 1 takes the checkpoint it
    # starts from (485 KB, more than a Ray task carries inline) at worker 0's meeting point
    item = Path(rebuilt["path"])
    replayed = run_reweigh("verify", item, "--transcript", item / "transcript.json", "--spot",
                           "0", "--largest", "0", "--json", store=tmp_path / "store2",
                           env={"REWEIGH_CLUSTER": address, "REWEIGH_WORKERS": "2"})
    assert replayed.returncode == 0, replayed.stderr
    report = json.loads(replayed.stdout)
    assert report["holds"] and [s["start_step"] for s in report["segments"]] == [60], report

    # its source is larger than a Ray task carries inline (100 KiB): worker 1 takes it from
    # worker 0's meeting point (through Ray's object store it could not: OwnerDiedError)
    lost = tmp_path / "lost"
    recipe = bn_recipe(tmp_path / "bn", die_at=10)
    (recipe / "ballast.py").write_text(f"# {'x' * 300_000}\n")
    result = run_reweigh("build", recipe, "--cluster", address, "--workers", "2", store=lost)
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    said = f"data-parallel worker 1 of 2, a Ray task on the cluster at {address}, died"
    assert said in result.stderr, result.stderr
    assert store_is_empty(lost)
    assert not any((lost / "tmp").iterdir())
    # more workers than the head has CPUs would wait for ever: refused, in one line
    result = run_reweigh("build", bn_recipe(tmp_path / "bn3"), "--cluster", address,
                         "--workers", "3", store=lost)
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "has 1 CPUs; data-parallel workers 1..2 need one each" in result.stderr
    assert store_is_empty(lost)
    _no_ray_left()
