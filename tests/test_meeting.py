"""Worker 0's meeting point (reweigh.meeting): a store that answers only those who know
the build's token, and the parcels the workers take from it before they train."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import torch.distributed as dist

from reweigh.meeting import Client, MeetingError, Server, put_parcel, take_parcel

TOKEN = "a1" * 32
WAIT = timedelta(seconds=5)


@pytest.fixture
def server() -> Iterator[Server]:
    meeting = Server("127.0.0.1", TOKEN)
    yield meeting
    meeting.close()


def test_a_stranger_can_neither_read_nor_change_what_is_there(server: Server) -> None:
    """Without the token: a wrong one is refused before any key is read, and so are
    bytes that are no proof and torch's own TCPStore client (which could list a
    TCPStore's keys, and with them a token hidden in their names)."""
    server.put("rank/1", b"10.0.0.1:4000")
    with pytest.raises(MeetingError, match="refused this worker's proof"):
        Client("127.0.0.1", server.port, "b2" * 32, WAIT)
    with socket.create_connection(("127.0.0.1", server.port)) as stranger:
        stranger.recv(40)
        stranger.sendall(b"\x01" * 64 + b"\x01rank/1")
        stranger.settimeout(5)
        try:
            answer = stranger.recv(100)
        except ConnectionResetError:  # closed with our bytes unread
            answer = b""
        assert answer == b""  # closed, nothing answered
    with pytest.raises(RuntimeError):  # torch.distributed.DistError, in its own words
        dist.TCPStore("127.0.0.1", server.port, 2, is_master=False,
                      timeout=timedelta(seconds=1)).list_keys()
    with Client("127.0.0.1", server.port, TOKEN, WAIT) as worker:
        assert worker.get("rank/1") == b"10.0.0.1:4000" and worker.num_keys() == 1


def test_it_answers_as_torch_distributed_asks_a_store_to(server: Server) -> None:
    first = Client("127.0.0.1", server.port, TOKEN, WAIT)
    second = Client("127.0.0.1", server.port, TOKEN, WAIT)
    first.set("a", b"1")
    assert second.get("a") == b"1" and second.check(["a"]) and not second.check(["a", "b"])
    assert first.add("n", 2) == 2 and second.add("n", 3) == 5
    assert first.compare_set("c", "", "new") == b"new"  # "" expects no value: set
    assert first.compare_set("c", "old", "other") == b"new"  # not the expected: kept
    assert first.compare_set("c", "new", "third") == b"third"
    assert first.compare_set("missing", "x", "y") == b"x" and not first.check(["missing"])
    late = threading.Timer(0.2, lambda: second.set("late", "here"))
    late.start()
    assert first.get("late") == b"here"  # waits for another's set
    first.wait(["a", "late"])
    with pytest.raises(dist.DistStoreError, match="never"):
        first.wait(["never"], timedelta(milliseconds=100))
    first.set_timeout(timedelta(milliseconds=100))
    started = time.monotonic()
    with pytest.raises(dist.DistStoreError, match="never"):
        first.get("never")
    assert time.monotonic() - started < 4
    assert first.num_keys() == 4 and first.delete_key("a") and not first.delete_key("a")
    server.delete("c")
    assert second.num_keys() == 2  # "n" and "late"
    first.close()
    second.close()


def test_parcels_come_back_as_they_were_put_and_a_forged_index_is_refused(
        server: Server) -> None:
    tree = {"name": "src", "tree": [("train.py", b"def train(ctx): ..."),
                                    ("sub/data.bin", bytes(range(256)) * 1000), ("e", b"")]}
    put_parcel(server, "src", tree)
    put_parcel(server, "input/digits", {"name": "digits.csv", "file": b"0,1\n" * 50_000})
    with Client("127.0.0.1", server.port, TOKEN, WAIT) as worker:
        assert take_parcel(worker, "src") == tree
        assert take_parcel(worker, "input/digits") == {"name": "digits.csv",
                                                       "file": b"0,1\n" * 50_000}
        for index in (b"not json", b'{"name": 3, "folder": true, "files": []}', b"[]"):
            server.put("parcel/src", index)
            with pytest.raises(MeetingError, match="the meeting point's src"):
                take_parcel(worker, "src")


def test_the_guard_lets_a_worker_reach_the_meeting_point_and_nothing_else(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A data-parallel worker runs under the build's guard (no network); `runtime.meet`
    opens the meeting point's address and port to it, and not another port there."""
    from reweigh import runtime

    monkeypatch.setattr(runtime, "MEETING_POINTS", set())
    guard = runtime.Guard([])
    with socket.socket() as probe:
        for event, args in (("socket.getaddrinfo", ("127.0.0.1", server.port, 0, 1, 0, 0)),
                            ("socket.connect", (probe, ("127.0.0.1", server.port)))):
            with pytest.raises(runtime.NetworkBlocked):
                guard(event, args)
        runtime.meet(("127.0.0.1", server.port, TOKEN)).close()
        guard("socket.getaddrinfo", ("127.0.0.1", server.port, 0, 1, 0, 0))
        guard("socket.connect", (probe, ("127.0.0.1", server.port)))
        with pytest.raises(runtime.NetworkBlocked):
            guard("socket.connect", (probe, ("127.0.0.1", server.port + 1)))


SERVE_WITH_FEW_FILES = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))
from reweigh.meeting import Server
server = Server("127.0.0.1", sys.argv[1])
server.put("k", b"v")
print(server.port, flush=True)
time.sleep(60)
"""


def test_strangers_who_use_up_its_files_do_not_stop_it_for_good(tmp_path: Path) -> None:
    """Worker 0 with 48 file descriptors; 100 strangers connect at once and say nothing
    (it runs out of descriptors), then go: a worker that comes later is still answered."""
    script = tmp_path / "serve.py"
    script.write_text(SERVE_WITH_FEW_FILES)
    with subprocess.Popen([sys.executable, str(script), TOKEN], stdout=subprocess.PIPE,
                          text=True) as process:
        try:
            assert process.stdout is not None
            port = int(process.stdout.readline())
            strangers = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
            time.sleep(0.5)
            for stranger in strangers:
                stranger.close()
            with Client("127.0.0.1", port, TOKEN, WAIT) as worker:
                assert worker.get("k") == b"v"
        finally:
            process.kill()


def test_a_stranger_gets_a_few_seconds_in_all_and_close_ends_every_connection(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A byte now and then does not keep a stranger's connection open past the
    handshake's time; closing the meeting point closes a worker's connection too."""
    from reweigh import meeting

    monkeypatch.setattr(meeting, "HANDSHAKE_SECONDS", 0.5)
    slow = Server("127.0.0.1", TOKEN)
    with socket.create_connection(("127.0.0.1", slow.port)) as stranger:
        stranger.recv(40)
        started = time.monotonic()
        with pytest.raises(OSError):
            for _ in range(50):  # 10 s of trickling, were it allowed
                stranger.sendall(b"x")
                time.sleep(0.2)
                if stranger.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b"":
                    raise ConnectionResetError("closed")
        assert time.monotonic() - started < 3
    worker = Client("127.0.0.1", slow.port, TOKEN, WAIT)
    slow.close()
    with pytest.raises((OSError, ConnectionError)):
        worker.get("anything")
    with pytest.raises(MeetingError):
        Client("127.0.0.1", slow.port, TOKEN, WAIT)
