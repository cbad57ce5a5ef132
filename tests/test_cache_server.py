"""`reweigh serve`'s HTTP server: ranges, HEAD, many clients at once, nothing but the
cache folder's regular files."""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .substitutes import served


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "cache"
    (root / "items" / "x").mkdir(parents=True)
    (root / "items" / "x" / "blob").write_bytes(os.urandom(100_000))
    (root / "index.json").write_text("{}")
    (tmp_path / "secret").write_text("outside the cache")
    (root / ".lock").write_text("")
    (root / "items" / "link").symlink_to(tmp_path / "secret")
    return root


def _raw(url: str, path: str, method: str = "GET") -> int:
    """The status of a request sent with exactly this path (no client normalisation)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.putrequest(method, path, skip_accept_encoding=True)
    connection.endheaders()
    status = connection.getresponse().status
    connection.close()
    return status


def test_ranges_and_head_are_answered_as_http_says(folder: Path) -> None:
    blob = (folder / "items" / "x" / "blob").read_bytes()
    with served(folder) as url, httpx.Client() as client:
        whole = client.get(f"{url}/items/x/blob")
        assert whole.status_code == 200 and whole.content == blob
        assert whole.headers["accept-ranges"] == "bytes"
        part = client.get(f"{url}/items/x/blob", headers={"Range": "bytes=1000-"})
        assert part.status_code == 206 and part.content == blob[1000:]
        assert part.headers["content-range"] == f"bytes 1000-{len(blob) - 1}/{len(blob)}"
        span = client.get(f"{url}/items/x/blob", headers={"Range": "bytes=10-19"})
        assert span.content == blob[10:20]
        tail = client.get(f"{url}/items/x/blob", headers={"Range": "bytes=-5"})
        assert tail.content == blob[-5:]
        past = client.get(f"{url}/items/x/blob", headers={"Range": f"bytes={len(blob)}-"})
        assert past.status_code == 416
        assert past.headers["content-range"] == f"bytes */{len(blob)}"
        stale = client.get(f"{url}/items/x/blob",
                           headers={"Range": "bytes=1000-", "If-Range": '"other"'})
        assert stale.status_code == 200 and stale.content == blob
        head = client.head(f"{url}/items/x/blob")
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["content-length"]) == len(blob)


@pytest.mark.parametrize("path", ["/../secret", "/items/../../secret", "/%2e%2e/secret",
                                  "/items%2f..%2f..%2fsecret", "/items/link", "/.lock",
                                  "/items/x", "/items/x/", "/", "//etc/passwd",
                                  "/items/x/blob%00", "/items/%ff"])
def test_nothing_but_the_folders_regular_files_is_served(folder: Path, path: str) -> None:
    with served(folder) as url:
        assert _raw(url, path) == 404
        assert _raw(url, path, "HEAD") == 404


def test_fifty_clients_download_at_once_and_each_gets_every_byte(folder: Path) -> None:
    blob = (folder / "items" / "x" / "blob").read_bytes()
    expected = hashlib.sha256(blob).hexdigest()

    def fetch(_: int) -> str:
        with httpx.Client(timeout=30) as client:
            return hashlib.sha256(client.get(f"{url}/items/x/blob").content).hexdigest()

    with served(folder) as url, concurrent.futures.ThreadPoolExecutor(50) as pool:
        digests = list(pool.map(fetch, range(50)))
    assert digests == [expected] * 50


@pytest.mark.parametrize(("stop", "ignored"), [
    (signal.SIGINT, False), (signal.SIGTERM, False),
    # a shell script's background job starts with SIGINT ignored, and the server inherits it
    (signal.SIGINT, True)], ids=["interrupt", "terminate", "interrupt-once-ignored"])
def test_the_serve_command_listens_on_loopback_and_stops_when_told(
        folder: Path, stop: signal.Signals, ignored: bool) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def start() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN if ignored else signal.SIG_DFL)

    process = subprocess.Popen([sys.executable, "-m", "reweigh.cli.main", "serve", folder,
                                "--port", str(port)], stdout=subprocess.PIPE, text=True,
                               preexec_fn=start)
    try:
        line = process.stdout.readline()
        assert f"http://127.0.0.1:{port}" in line
        deadline = time.monotonic() + 10
        while True:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/index.json").text == "{}"
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        process.send_signal(stop)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        assert code == 0
