"""Fetching from a cache: an HTTP(S) server, or a folder (a path or a `file://` URL).

One `httpx.Client` per command keeps connections to each server alive, so the index,
the records, the signatures and the archive of one server come over one connection.
Every read has a size limit, and the archive comes as a stream of chunks from any
offset, which is how an interrupted transfer resumes (`Range`).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx

from ..errors import SignatureError, UsageError

TIMEOUT = httpx.Timeout(30.0, connect=10.0)
T = TypeVar("T")
_CHUNK = 1 << 20


class Unreachable(SignatureError):
    """A server that cannot be asked (refused, timed out, answered an error)."""


class Source:
    """One cache, by the location the user gave."""

    def __init__(self, location: str, client: httpx.Client) -> None:
        self.label = location.rstrip("/")
        scheme = urllib.parse.urlsplit(location).scheme
        if scheme in ("http", "https"):
            self.folder: Path | None = None
        elif scheme in ("", "file"):
            path = urllib.parse.unquote(urllib.parse.urlsplit(location).path) \
                if scheme == "file" else location
            self.folder = Path(path)
            if not self.folder.is_dir():
                raise UsageError(f"--from: {location}: no such cache folder")
        else:
            raise UsageError(f"--from: {location}: expected an http(s):// URL or a folder")
        self.client = client

    def get(self, rel: str, limit: int) -> bytes | None:
        """The file's bytes, or None when the cache does not have it."""
        if self.folder is not None:
            path = self.folder / rel
            if path.is_symlink() or not path.is_file():
                return None
            with open(path, "rb") as handle:
                data = handle.read(limit + 1)
        else:
            fetched = self._get_http(rel, limit)
            if fetched is None:
                return None
            data = fetched
        if len(data) > limit:
            raise SignatureError(f"{self.label}/{rel}: larger than {limit} bytes")
        return data

    def _get_http(self, rel: str, limit: int) -> bytes | None:
        url = f"{self.label}/{rel}"
        try:
            with self.client.stream("GET", url) as reply:
                if reply.status_code == 404:
                    return None
                if reply.status_code != 200:
                    raise Unreachable(f"{url}: HTTP {reply.status_code}")
                data = bytearray()
                for chunk in reply.iter_raw():
                    data += chunk
                    if len(data) > limit:
                        break
                return bytes(data)
        except httpx.HTTPError as e:
            raise Unreachable(f"{url}: {type(e).__name__}: {e}") from e

    @contextlib.contextmanager
    def stream(self, rel: str, offset: int) -> Iterator[tuple[int, Iterator[bytes]]]:
        """(offset the chunks start at, the chunks): the file from `offset` when the cache
        can send a part (else from 0); an offset at or past the end gives no chunks."""
        if self.folder is not None:
            yield offset, self._read_folder(self.folder / rel, offset)
            return
        url = f"{self.label}/{rel}"
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            with self.client.stream("GET", url, headers=headers) as reply:
                if reply.status_code == 416:
                    yield offset, iter(())
                elif reply.status_code in (200, 206):
                    start = offset if reply.status_code == 206 else 0
                    yield start, _wrapped(reply.iter_raw(), url)
                else:
                    raise Unreachable(f"{url}: HTTP {reply.status_code}")
        except httpx.HTTPError as e:
            raise Unreachable(f"{url}: {type(e).__name__}: {e}") from e

    @staticmethod
    def _read_folder(path: Path, offset: int) -> Iterator[bytes]:
        if path.is_symlink() or not path.is_file():
            raise Unreachable(f"{path}: missing")
        with open(path, "rb") as handle:
            handle.seek(offset)
            while chunk := handle.read(_CHUNK):
                yield chunk


def _wrapped(chunks: Iterator[bytes], url: str) -> Iterator[bytes]:
    """The chunks, with a connection lost midway said as `Unreachable`."""
    try:
        yield from chunks
    except httpx.HTTPError as e:
        raise Unreachable(f"{url}: the connection broke ({type(e).__name__}: {e})") from e


_DONE = object()


def ahead(chunks: Iterator[T], depth: int = 2) -> Iterator[T]:
    """`chunks`, produced on a thread of its own up to `depth` items ahead of the reader
    (receiving on one core while the reader decodes, hashes and writes on another); its
    errors come out here, and a reader that stops early stops it."""
    pending: queue.Queue[Any] = queue.Queue(depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                if not _hand_over(pending, stop, chunk):
                    return
            pending.put(_DONE)
        except BaseException as e:  # handed to the reader, which raises it
            pending.put(e)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    try:
        while (item := pending.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():
            with contextlib.suppress(queue.Empty):
                pending.get(timeout=0.1)
        worker.join()


def _hand_over(pending: queue.Queue[Any], stop: threading.Event, chunk: object) -> bool:
    """Queue `chunk` for the reader; False when the reader stopped meanwhile."""
    while not stop.is_set():
        try:
            pending.put(chunk, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def new_client(locations: list[str] | None = None) -> httpx.Client:
    """One client for a command's requests. Certificates are loaded (0.1 s) only when
    some location is https (with no redirects followed, no other is asked for)."""
    https = locations is None or any(urllib.parse.urlsplit(loc).scheme == "https"
                                     for loc in locations)
    return httpx.Client(timeout=TIMEOUT, follow_redirects=False, verify=https,
                        headers={"Accept-Encoding": "identity"},
                        limits=httpx.Limits(max_connections=32, max_keepalive_connections=16))
