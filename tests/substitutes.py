"""Helpers for the substitute tests: parties with their own key rings, a published item,
cache folders served on 127.0.0.1, and the tampering a hostile server would do."""

from __future__ import annotations

import contextlib
import http.server
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from reweigh.cache import layout
from reweigh.cache.archive import write_archive
from reweigh.cache.server import serve
from reweigh.keys import KeyRing
from reweigh.signing import FileEntry


@dataclass(frozen=True)
class Party:
    """Someone with a signing key of their own (a publisher, a rebuilder, an attacker)."""

    name: str
    ring: KeyRing

    @property
    def line(self) -> str:
        own = self.ring.own()[0]
        return own.key.line(self.name)

    @property
    def keyid(self) -> str:
        return self.ring.own()[0].key.keyid


def party(root: Path, name: str, algorithm: str = "ed25519") -> Party:
    ring = KeyRing(root / f"keys-{name}")
    ring.generate(name, algorithm)
    return Party(name, ring)


def puller(root: Path, *trusted: Party) -> KeyRing:
    """A user who trusts exactly `trusted`."""
    ring = KeyRing(root / "keys-puller")
    for someone in trusted:
        ring.trust(ring_key(someone), someone.name)
    return ring


def ring_key(someone: Party):
    return someone.ring.own()[0].key


@contextlib.contextmanager
def served(folder: Path) -> Iterator[str]:
    """`reweigh serve`'s server on a free port of 127.0.0.1, stopped at the end."""
    running = serve(folder)
    try:
        yield running.url
    finally:
        running.close()


def item_dir(cache: Path, item: str) -> Path:
    return cache / "items" / item


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1))


def repack(cache: Path, item: str, source: Path, files: tuple[FileEntry, ...]) -> None:
    """Replace the cache's archive of `item` with one of `files` from `source`, and make
    its info record agree (a consistent, lying server)."""
    target = cache / layout.archive_path(item)
    written = write_archive(source, files, target)
    info_file = cache / layout.info_path(item)
    info = read_json(info_file)
    info["archive"].update(digest=written.digest, size=written.size)
    info["files"] = [{"path": f.path, "digest": f.digest, "size": f.size,
                      "pieces": [list(p) for p in pieces]}
                     for f, pieces in zip(files, written.pieces, strict=True)]
    write_json(info_file, info)


def copy_item(item_path: Path, target: Path) -> Path:
    shutil.copytree(item_path, target)
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


class _Archives(http.server.SimpleHTTPRequestHandler):
    """Serves a folder quietly, every file as it is but the archives, which `archive`
    sends (a hostile or broken server's part)."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def copyfile(self, source, outputfile) -> None:
        if self.path.endswith("/archive.rwc"):
            self.archive(source.read(), outputfile)
        else:
            super().copyfile(source, outputfile)

    def archive(self, data: bytes, outputfile) -> None:
        raise NotImplementedError

    def drop(self, outputfile, sent: bytes) -> None:
        """Send `sent`, then drop the connection, as a server killed there does."""
        outputfile.write(sent)
        outputfile.flush()
        self.connection.shutdown(2)
        self.close_connection = True


class _Dying(_Archives):
    """Sends only the first half of any archive and then drops the connection, as a
    server killed mid-transfer does."""

    def archive(self, data: bytes, outputfile) -> None:
        self.drop(outputfile, data[: len(data) // 2])


@contextlib.contextmanager
def _serving(handler_class: type[_Archives],
             folder: Path) -> Iterator[str]:
    """`folder` served on 127.0.0.1 by a thread of this process with `handler_class`;
    its URL."""
    handler = lambda *a, **k: handler_class(*a, directory=str(folder), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def dying_server(folder: Path) -> contextlib.AbstractContextManager[str]:
    return _serving(_Dying, folder)


class _Stalling(_Archives):
    """Sends the first half of any archive, then waits for the test's `release` before
    it sends the rest: a pull that is running, mid-transfer."""

    release: threading.Event
    halfway: threading.Event

    def archive(self, data: bytes, outputfile) -> None:
        outputfile.write(data[: len(data) // 2])
        outputfile.flush()
        self.halfway.set()
        self.release.wait(20)
        outputfile.write(data[len(data) // 2:])


@contextlib.contextmanager
def stalling_server(folder: Path, halfway: threading.Event,
                    release: threading.Event) -> Iterator[str]:
    """A server that stops half way through an archive (`halfway` is set then) until
    `release` is set."""
    handler_class = type("Stalling", (_Stalling,), {"halfway": halfway, "release": release})
    with _serving(handler_class, folder) as url:
        try:
            yield url
        finally:
            release.set()  # a handler still waiting ends, so that the server can stop


class _Poisoning(_Archives):
    """Sends any archive only up to `cut` bytes, the byte at `flip` changed, and then
    drops the connection: a hostile server that leaves a wrong piece where a resume
    would go on from it."""

    cut: int
    flip: int

    def archive(self, data: bytes, outputfile) -> None:
        poisoned = bytearray(data[: self.cut])
        poisoned[self.flip] ^= 0x01
        self.drop(outputfile, bytes(poisoned))


def poisoning_server(folder: Path, cut: int, flip: int) -> contextlib.AbstractContextManager[str]:
    return _serving(type("Poisoning", (_Poisoning,), {"cut": cut, "flip": flip}), folder)


@contextlib.contextmanager
def killed_mid_transfer(folder: Path, after: int) -> Iterator[str]:
    """`reweigh serve FOLDER`, the real command in a process of its own, behind a relay on
    127.0.0.1 that passes everything through until `after` bytes have followed the first
    archive reply's headers, then SIGKILLs the server and drops the client: a server
    that dies mid-transfer. Yields the relay's URL."""
    server = subprocess.Popen([sys.executable, "-m", "reweigh.cli.main", "serve", str(folder),
                               "--port", "0"], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    port = int(server.stdout.readline().rsplit(":", 1)[1])
    listener = socket.create_server(("127.0.0.1", 0))
    sent = [0, False]  # archive bytes passed on; seen the archive's reply

    def pump(source: socket.socket, sink: socket.socket, watch: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if watch and not sent[1] and b"application/octet-stream" in data:
                    sent[1] = True
                    data_after = data.split(b"\r\n\r\n", 1)[-1]
                    sent[0] = len(data_after)
                elif watch and sent[1]:
                    sent[0] += len(data)
                if watch and sent[1] and sent[0] >= after:
                    sink.sendall(data[: len(data) - (sent[0] - after)])
                    server.send_signal(signal.SIGKILL)
                    break
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def relay() -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = listener.accept()
                upstream = socket.create_connection(("127.0.0.1", port))
                threading.Thread(target=pump, args=(client, upstream, False), daemon=True).start()
                threading.Thread(target=pump, args=(upstream, client, True), daemon=True).start()

    threading.Thread(target=relay, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        server.kill()
        server.wait()
