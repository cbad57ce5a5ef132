"""The tests' `reweigh` commands, forked from an interpreter that has loaded reweigh once.

A test suite runs the command line some 450 times; a fresh interpreter spends most of a
short command's time loading Python, reweigh and numpy (0.1-0.3 s of CPU each time). So
each test process starts one server (`python -m tests.forkserver`) that imports every
command's modules and waits on a Unix socket; a command is a fork of it with the test's
arguments, environment, working directory, umask and pipes for its standard streams,
running `reweigh.cli.main.main` as `python -m reweigh.cli.main` would, down to the exit:
non-daemon threads are waited for, `atexit` runs, and output that cannot be flushed
is exit status 120, as the interpreter does. Each request is one connection, so tests
may run commands side by side.

What a fork cannot give is what an interpreter reads as it starts: a change to a PYTHON*,
LD_*, locale or time zone variable gets a fresh `python -m reweigh.cli.main`
(`helpers.run_reweigh` picks), and so does every command while REWEIGH_TEST_FRESH_CLI=1
(the whole suite passes that way too, in about a fifth more time). The server loads neither torch
nor Ray (torch reads its thread settings as it loads, and threads do not survive a
fork): a command that needs them loads them in its own process, as a fresh one would.
What else differs: every fork has the server's hash seed (a fresh interpreter draws its
own), its standard input is /dev/null, and it ends with `os._exit` after the steps above
(an object left to the garbage collector at exit is not finalized). Tests of what a
command imports, or of a command's handling of its input or signals, start it themselves.

Protocol: the client sends one JSON line (`argv`, `env`, `cwd`, `umask`) with the write
ends of its stdout and stderr pipes (SCM_RIGHTS); the server forks a monitor, which
forks the command, answers `pid N` at once and `status S` (a wait status) when the
command ends.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import locale
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

# what an interpreter (or the C library under it) reads as it starts, which a fork of
# one cannot change: Python's own settings, the dynamic linker's, the locale, the zone,
# and the thread settings numpy's BLAS reads as it loads
STARTUP_PREFIXES = ("PYTHON", "LD_", "LC_", "LANG", "TZ", "OMP_", "OPENBLAS_", "MKL_")
FRESH = "REWEIGH_TEST_FRESH_CLI"


def startup_environment(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(STARTUP_PREFIXES)}


# --- the server ------------------------------------------------------------------------------

def _load_everything() -> Any:
    """Import what any command may import, except torch and Ray."""
    import importlib
    import pkgutil

    import reweigh
    from reweigh.cli import main

    main.make_parser(None)  # every command's module
    for package in ("reweigh.verbs", "reweigh.cache", "reweigh.policy"):
        for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
            importlib.import_module(f"{package}.{module.name}")
    for module in pkgutil.iter_modules(reweigh.__path__):
        if module.name not in ("runtime", "dynamo", "cluster", "meeting", "audit",
                               "adapt_template"):
            importlib.import_module(f"reweigh.{module.name}")
    import safetensors.numpy  # noqa: F401

    loaded = {"torch", "ray"} & sys.modules.keys()
    assert not loaded, f"tests.forkserver: importing reweigh loaded {loaded}"
    return main


def serve(path: str) -> None:
    main = _load_everything()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stderr.flush()
    # the client holds our stdin open: its end means the tests are over
    watch = selectors.DefaultSelector()
    watch.register(listener, selectors.EVENT_READ)
    watch.register(sys.stdin, selectors.EVENT_READ)
    while True:
        ready = [key.fileobj for key, _ in watch.select()]
        if sys.stdin in ready:
            return
        connection, _ = listener.accept()
        request, fds = _receive(connection)
        if os.fork() == 0:
            listener.close()
            _monitor(connection, request, fds, main)
        connection.close()
        for fd in fds:
            os.close(fd)
        _reap()


def _receive(connection: socket.socket) -> tuple[dict[str, Any], list[int]]:
    data, fds, _, _ = socket.recv_fds(connection, 1 << 20, 2)
    while not data.endswith(b"\n"):
        more = connection.recv(1 << 20)
        if not more:
            break
        data += more
    return json.loads(data), list(fds)


def _reap() -> None:
    """Collect the monitors that have ended."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def _monitor(connection: socket.socket, request: dict[str, Any], fds: list[int],
             main: Any) -> None:
    """Fork the command, say its pid, wait for it, say its wait status."""
    status = 255 << 8
    try:
        pid = os.fork()
        if pid == 0:
            connection.close()
            _command(request, fds, main)
        for fd in fds:
            os.close(fd)
        connection.sendall(f"pid {pid}\n".encode())
        _, status = os.waitpid(pid, 0)
        connection.sendall(f"status {status}\n".encode())
    finally:
        os._exit(0)


def _command(request: dict[str, Any], fds: list[int], main: Any) -> None:
    """Become `python -m reweigh.cli.main ARGV` in the client's place and exit with its
    status."""
    code: Any = 1
    try:
        null = os.open(os.devnull, os.O_RDONLY)  # in place of the server's stdin pipe
        for fd, standard in ((null, 0), (fds[0], 1), (fds[1], 2)):
            os.dup2(fd, standard)
            os.close(fd)
        os.chdir(request["cwd"])
        os.umask(request["umask"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = [main.__file__, *request["argv"]]
        sys.path[0] = request["cwd"]
        code = main.main(request["argv"])
    except SystemExit as e:
        code = e.code
    except BaseException:  # what the interpreter would print for an uncaught one
        traceback.print_exc()
        code = 1
    os._exit(_finish(code))


def _finish(code: Any) -> int:
    """What the interpreter does at exit: SystemExit's code, non-daemon threads, atexit,
    the last flush (120 when standard output cannot take it)."""
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream, failed in ((sys.stdout, 120), (sys.stderr, code)):
        try:
            stream.flush()
        except Exception:
            code = failed
    return code & 0xFF


# --- the client ------------------------------------------------------------------------------

class Server:
    """One test process's fork server, started on first use and stopped at exit."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="reweigh-fork-")
        self.path = str(Path(self.folder) / "socket")
        self.startup = startup_environment(dict(os.environ))
        root = Path(__file__).resolve().parents[1]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.forkserver", self.path], cwd=root,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        ready = self.process.stdout.readline()
        assert ready == b"ready\n", f"tests.forkserver did not start: {ready!r}"
        atexit.register(self.stop)

    def stop(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            self.process.wait(timeout=30)
        for name in os.listdir(self.folder):
            os.unlink(Path(self.folder) / name)
        os.rmdir(self.folder)

    def takes(self, env: dict[str, str]) -> bool:
        """Whether a fork of this server is the command a fresh interpreter with `env`
        would be."""
        return startup_environment(env) == self.startup and env.get(FRESH) != "1"

    def run(self, command: list[str], argv: list[str], env: dict[str, str],
            timeout: float) -> subprocess.CompletedProcess[str]:
        mask = os.umask(0)
        os.umask(mask)
        request = {"argv": argv, "env": env, "cwd": os.getcwd(), "umask": mask}
        (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.connect(self.path)
            socket.send_fds(connection, [json.dumps(request).encode() + b"\n"],
                            [out_w, err_w])
            os.close(out_w)
            os.close(err_w)
            connection.settimeout(timeout)
            replies = connection.makefile("rb")
            pid = int(replies.readline().split()[1])
            try:
                out, err = _read_both(out_r, err_r, time.monotonic() + timeout)
                status = int(replies.readline().split()[1])
            except (subprocess.TimeoutExpired, TimeoutError):
                with contextlib.suppress(ProcessLookupError):  # ended just now
                    os.kill(pid, signal.SIGKILL)
                raise subprocess.TimeoutExpired(command, timeout) from None
        return subprocess.CompletedProcess(command, os.waitstatus_to_exitcode(status),
                                           _text(out), _text(err))


def _read_both(out: int, err: int, deadline: float) -> tuple[bytes, bytes]:
    """Everything written to both pipes until the command (and whatever it left running
    with them) closes them, as `subprocess.run(capture_output=True)` reads them."""
    chunks: dict[int, list[bytes]] = {out: [], err: []}
    with selectors.DefaultSelector() as watch:
        for fd in chunks:
            watch.register(fd, selectors.EVENT_READ)
        while watch.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                for fd in chunks:
                    os.close(fd)
                raise subprocess.TimeoutExpired([], 0)
            for key, _ in watch.select(left):
                data = os.read(key.fd, 1 << 16)
                if data:
                    chunks[key.fd].append(data)
                else:
                    watch.unregister(key.fd)
    for fd in chunks:
        os.close(fd)
    return b"".join(chunks[out]), b"".join(chunks[err])


def _text(data: bytes) -> str:
    """The bytes as `subprocess.run(text=True)` gives them (universal newlines)."""
    return io.TextIOWrapper(io.BytesIO(data), encoding=locale.getpreferredencoding(False)).read()


_server: list[Server] = []
_starting = threading.Lock()


def server() -> Server:
    """This test process's server (started at first use, again if it died)."""
    with _starting:
        if not _server or _server[0].process.poll() is not None:
            _server[:] = [Server()]
        return _server[0]


if __name__ == "__main__":
    serve(sys.argv[1])
