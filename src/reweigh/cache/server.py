"""`reweigh serve`: a small HTTP server for a cache folder.

For small setups and tests; a cache is a static folder, so nginx or an object store
serves it as well. It answers GET and HEAD with the folder's regular files, one thread
per connection (so many clients download at once), keeps connections alive (HTTP/1.1),
and answers a single byte range (`Range: bytes=a-b`, `a-`, `-n`) with 206, which is how
a client resumes an interrupted download; `If-Range` with another ETag gets the whole
file. It sends file bodies with `sendfile`, so the kernel copies them.

It serves nothing but regular files under its folder: a path with `..`, a backslash, a
NUL or an encoded slash, a symbolic link anywhere on the way, a folder (no listings) or
a hidden file is 404. It does not authenticate, encrypt or limit clients: put a real
server in front of it for anything public.
"""

from __future__ import annotations

import email.utils
import http.server
import os
import re
import stat
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
TYPES = {".json": "application/json", ".sig": "application/json"}


# How often a background server checks whether `close` asked it to stop: `close` waits
# for that check (socketserver's default, half a second, was most of the cache tests' time).
STOP_POLL_SECONDS = 0.02


@dataclass
class CacheServer:
    """A running server: its URL, and how to stop it."""

    server: http.server.ThreadingHTTPServer
    thread: threading.Thread | None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else host
        return f"http://{name}:{port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self.thread is not None:
            self.thread.join()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # many clients connect at once; the default 5 drops them
    root: Path


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "reweigh-cache"
    sys_version = ""
    timeout = 60  # a client that stops reading or writing frees its thread
    # TCP_NODELAY: a reply's headers and the last, short segment of its body go out at
    # once; with Nagle's algorithm they waited for the client's delayed ACK, 40 ms a
    # request on a kept-alive connection (a pull asks four or five things of one server)
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: a cache server's access log is not the command's output."""

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        path = _local_path(self.server.root, self.path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW) if path else -1
        except OSError:
            fd = -1
        st = os.fstat(fd) if fd >= 0 else None
        if st is None or not stat.S_ISREG(st.st_mode):
            if fd >= 0:
                os.close(fd)
            self._status(404, "not found")
            return
        with os.fdopen(fd, "rb") as handle:
            self._send_file(handle, st, path or Path(), body)

    def _send_file(self, handle: object, st: os.stat_result, path: Path, body: bool) -> None:
        size = st.st_size
        etag = f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'
        span = _range(self.headers.get("Range"), size)
        if_range = self.headers.get("If-Range")
        if if_range is not None and if_range != etag:
            span = None  # the file changed since the client's first part: send it whole
        if span == "unsatisfiable":
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, end = span if isinstance(span, tuple) else (0, size)
        self.send_response(206 if isinstance(span, tuple) else 200)
        if isinstance(span, tuple):
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.send_header("Content-Type", TYPES.get(path.suffix, "application/octet-stream"))
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
        self.end_headers()
        if body and end > start:
            try:
                self.connection.sendfile(handle, start, end - start)  # type: ignore[arg-type]
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    def _status(self, code: int, text: str) -> None:
        data = f"{text}\n".encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def _local_path(root: Path, request: str) -> Path | None:
    """The file under root a request path names, or None when it names nothing we serve:
    every component plain and not hidden, and no link on the way (the folders are
    checked with lstat here, the file itself is opened with O_NOFOLLOW)."""
    raw = urllib.parse.urlsplit(request).path
    if "%2f" in raw.lower() or "%5c" in raw.lower():
        return None
    try:
        parts = urllib.parse.unquote(raw, errors="strict").split("/")[1:]
    except UnicodeDecodeError:
        return None
    if not parts or any(p in ("", ".", "..") or p.startswith(".") or "\\" in p or "\0" in p
                        for p in parts):
        return None
    current = root
    for part in parts[:-1]:
        current = current / part
        try:
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                return None
        except OSError:
            return None
    return current / parts[-1]


def _range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """(start, end) of a single satisfiable range, "unsatisfiable", or None (no range, or
    one we do not serve, such as several ranges: the whole file then, as RFC 9110
    allows)."""
    if header is None:
        return None
    match = _RANGE_RE.match(header.strip())
    if not match or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if first == "":  # the last n bytes
        count = int(last)
        if count == 0:
            return "unsatisfiable"
        return max(0, size - count), size
    start = int(first)
    end = size if last == "" else min(int(last) + 1, size)
    if start >= size or end <= start:
        return "unsatisfiable"
    return start, end


def serve(root: Path, host: str = "127.0.0.1", port: int = 0,
          background: bool = True) -> CacheServer:
    """Serve `root` on host:port (0: any free port); in a background thread unless told
    otherwise (then call `.server.serve_forever()`)."""
    server = _Server((host, port), _Handler)
    server.root = root.resolve()
    thread = None
    if background:
        thread = threading.Thread(target=server.serve_forever, args=(STOP_POLL_SECONDS,),
                                  daemon=True)
        thread.start()
    return CacheServer(server, thread)
