"""Where a build's data-parallel workers on a cluster meet: a key-value store on worker 0
that answers only those who know the build's token.

torch's TCPStore answers anyone who reaches its port, and lists its keys to them
(`list_keys`), so a random prefix hid nothing: a stranger on the cluster's network could
read the token from the key names, overwrite a worker's address before gloo read it and
join the group as that worker, sending the gradients worker 0 averages. This store
serves the same operations (a `torch.distributed.Store`, so gloo's rendezvous runs on
it), to connections that prove they know the token, a secret that travels to the
workers inside their Ray tasks only: each side sends a fresh random challenge and
answers the other's with an HMAC-SHA256 under the token, before any key is read.

It also carries what the workers need before they can train (`put_parcel`): the
recipe's source, its inputs and a replayed segment's start checkpoint, each file under
its own key, checked against the derivation's digests by whoever takes it. Through
Ray's object store, a worker could not fetch an object that the build's node had put
there (OwnerDiedError, every time on a one-machine test cluster).

Not covered: the workers' gloo connections themselves (gloo has no authentication), so
a machine that can alter the traffic between the cluster's nodes can alter the training;
a build records that it ran outside its sandbox on the cluster it names.

Frames: a request is an operation byte and its fields, a reply a status byte and its
fields; a field is its length (8 bytes, little-endian) and its bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
import socket
import struct
import threading
import time
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import torch.distributed as dist

HELLO = b"RWMEET1\n"
NONCE_BYTES = 32
HANDSHAKE_SECONDS = 10  # how long a connection may take to prove it knows the token
LENGTH = struct.Struct("<Q")
SET, GET, ADD, CHECK, WAIT, COMPARE_SET, DELETE, NUM_KEYS = range(1, 9)
OK, TIMEOUT, FAILED = 0, 1, 2


class MeetingError(ConnectionError):
    """The meeting point could not be reached, or did not prove it knows the token."""


def _proof(token: bytes, side: bytes, mine: bytes, theirs: bytes) -> bytes:
    return hmac.new(token, side + mine + theirs, hashlib.sha256).digest()


def _read_exactly(connection: socket.socket, size: int, deadline: float | None = None) -> bytes:
    """`size` bytes; by `deadline` (time.monotonic()) when given, else TimeoutError."""
    data = bytearray(size)
    view, got = memoryview(data), 0
    while got < size:
        if deadline is not None:
            connection.settimeout(max(deadline - time.monotonic(), 0.001))
        count = connection.recv_into(view[got:], min(size - got, 1 << 20))
        if not count:
            raise ConnectionError("the other side closed the connection")
        got += count
    return bytes(data)


def _send_fields(connection: socket.socket, head: int, fields: Iterable[bytes]) -> None:
    """The head and each field, a large field sent from where it lies (never copied)."""
    small = bytearray([head])
    for field in fields:
        small += LENGTH.pack(len(field))
        if len(field) < 1 << 16:
            small += field
            continue
        connection.sendall(small)
        connection.sendall(field)
        small = bytearray()
    if small:
        connection.sendall(small)


def _read_fields(connection: socket.socket, count: int) -> list[bytes]:
    return [_read_exactly(connection, LENGTH.unpack(_read_exactly(connection, 8))[0])
            for _ in range(count)]


# How many fields each operation's request holds after its head (WAIT and CHECK: a count
# of keys, then the keys; GET and WAIT end with a timeout in milliseconds)
FIELDS = {SET: 2, GET: 2, ADD: 2, COMPARE_SET: 3, DELETE: 1, NUM_KEYS: 0}


class Server:
    """Worker 0's meeting point: a thread that accepts connections on (ip, any port),
    and one thread per connection that has proven it knows `token`."""

    def __init__(self, ip: str, token: str) -> None:
        self.token = token.encode()
        self._values: dict[bytes, bytes] = {}
        self._changed = threading.Condition()
        self._listener = socket.create_server((ip, 0))
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        self._open: set[socket.socket] = set()  # every connection, to close with the server
        threading.Thread(target=self._accept, daemon=True, name="reweigh-meeting").start()

    def put(self, key: str, value: bytes) -> None:
        """A value set here, by worker 0, without a connection."""
        with self._changed:
            self._values[key.encode()] = value
            self._changed.notify_all()

    def delete(self, prefix: str) -> None:
        """Forget every key that starts with `prefix` (parcels every worker has taken)."""
        with self._changed:
            for key in [k for k in self._values if k.startswith(prefix.encode())]:
                del self._values[key]

    def close(self) -> None:
        """Stop answering: no new connection, and those open are closed."""
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self._listener.close()
        with self._changed:
            for connection in list(self._open):
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        """Take connections until closed; no stranger's doing ends this loop (out of file
        descriptors or threads while strangers hold connections: wait, then go on)."""
        while not self._closed:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                if self._closed:
                    return
                time.sleep(0.05)
                continue
            try:
                threading.Thread(target=self._serve, args=(connection,), daemon=True,
                                 name="reweigh-meeting-peer").start()
            except RuntimeError:  # no thread to be had now
                connection.close()

    def _serve(self, connection: socket.socket) -> None:
        with self._changed:
            self._open.add(connection)
        try:
            # a stranger gets HANDSHAKE_SECONDS in all to prove it knows the token
            if not self._admitted(connection, time.monotonic() + HANDSHAKE_SECONDS):
                return
            connection.settimeout(None)
            while not self._closed:
                head = connection.recv(1)
                if not head:
                    return
                self._answer(connection, head[0])
        except (OSError, ValueError):
            return
        finally:
            with self._changed:
                self._open.discard(connection)
            connection.close()

    def _admitted(self, connection: socket.socket, deadline: float) -> bool:
        """The challenge: theirs answered only once they have answered ours."""
        ours = secrets.token_bytes(NONCE_BYTES)
        connection.settimeout(HANDSHAKE_SECONDS)
        connection.sendall(HELLO + ours)
        theirs = _read_exactly(connection, NONCE_BYTES, deadline)
        answer = _read_exactly(connection, hashlib.sha256().digest_size, deadline)
        if not hmac.compare_digest(answer, _proof(self.token, b"worker", ours, theirs)):
            return False
        connection.sendall(_proof(self.token, b"meeting", theirs, ours))
        return True

    def _answer(self, connection: socket.socket, op: int) -> None:
        if op in (CHECK, WAIT):
            (count,) = _read_fields(connection, 1)
            keys = _read_fields(connection, int(count))
            timeout = _read_fields(connection, 1)[0] if op == WAIT else b"0"
            fields = [*keys, timeout]
        elif op in FIELDS:
            fields = _read_fields(connection, FIELDS[op])
        else:
            raise ValueError(f"no operation {op}")
        status, reply = self._apply(op, fields)
        _send_fields(connection, status, reply)

    def _apply(self, op: int, fields: list[bytes]) -> tuple[int, list[bytes]]:
        with self._changed:
            if op in (GET, WAIT):
                return self._await(fields[:1] if op == GET else fields[:-1],
                                   int(fields[-1]) / 1000, op == GET)
            values = self._values
            if op == DELETE:
                return OK, [b"1" if values.pop(fields[0], None) is not None else b"0"]
            if op == NUM_KEYS:
                return OK, [str(len(values)).encode()]
            if op == CHECK:
                return OK, [b"1" if all(k in values for k in fields[:-1]) else b"0"]
            reply = self._change(op, *fields)
            self._changed.notify_all()
            return OK, reply

    def _change(self, op: int, key: bytes, *rest: bytes) -> list[bytes]:
        values = self._values
        if op == SET:
            values[key] = rest[0]
            return []
        if op == ADD:
            values[key] = str(int(values.get(key, b"0")) + int(rest[0])).encode()
            return [values[key]]
        expected, desired = rest  # COMPARE_SET, as TCPStore's: "" expects no value
        if values.get(key) == expected or (key not in values and expected == b""):
            values[key] = desired
        return [values.get(key, expected)]

    def _await(self, keys: list[bytes], seconds: float, one: bool) -> tuple[int, list[bytes]]:
        """Wait (the condition held) until every key has a value: GET's value, or WAIT's
        nothing; TIMEOUT naming those still missing."""
        deadline = time.monotonic() + seconds
        while not all(k in self._values for k in keys):
            left = deadline - time.monotonic()
            if left <= 0:
                return TIMEOUT, [b", ".join(k for k in keys if k not in self._values)]
            self._changed.wait(left)
        return OK, [self._values[keys[0]]] if one else []


class Client(dist.Store):
    """A worker's connection to the meeting point, as a torch.distributed Store (what
    gloo's rendezvous and `init_process_group` ask of one). MeetingError when it cannot
    be reached or does not prove that it knows the token."""

    def __init__(self, host: str, port: int, token: str, timeout: timedelta) -> None:
        super().__init__()
        self.set_timeout(timeout)
        self._lock = threading.Lock()
        try:
            self._connection = socket.create_connection((host, port), timeout=60)
            self._prove(token.encode())
        except (OSError, ConnectionError) as e:
            raise MeetingError(f"cannot meet worker 0 at {host}:{port}: {e}") from e
        self._connection.settimeout(None)

    def _prove(self, token: bytes) -> None:
        hello = _read_exactly(self._connection, len(HELLO) + NONCE_BYTES)
        if not hello.startswith(HELLO):
            raise MeetingError("what answered is not a reweigh build's meeting point")
        theirs, ours = hello[len(HELLO):], secrets.token_bytes(NONCE_BYTES)
        self._connection.sendall(ours + _proof(token, b"worker", theirs, ours))
        try:
            answer = _read_exactly(self._connection, hashlib.sha256().digest_size)
        except ConnectionError:
            raise MeetingError("it refused this worker's proof of the build's token") from None
        if not hmac.compare_digest(answer, _proof(token, b"meeting", ours, theirs)):
            raise MeetingError("the meeting point does not know the build's token")

    def _call(self, op: int, fields: list[bytes], replies: int) -> list[bytes]:
        with self._lock:
            try:
                _send_fields(self._connection, op, fields)
                status = _read_exactly(self._connection, 1)[0]
                answer = _read_fields(self._connection, replies if status == OK else 1)
            except BaseException:  # a request cut short leaves the stream out of step
                self._connection.close()
                raise
        if status == TIMEOUT:
            waited = timedelta(milliseconds=int(fields[-1]))
            raise dist.DistStoreError(f"waited {waited} for {answer[0].decode()}")
        if status != OK:
            raise dist.DistStoreError(answer[0].decode())
        return answer

    def _millis(self, timeout: timedelta | None = None) -> bytes:
        return str(int((timeout or self._timeout).total_seconds() * 1000)).encode()

    # --- torch.distributed.Store ---------------------------------------------------------
    def set(self, key: str, value: Any) -> None:
        self._call(SET, [key.encode(), _bytes(value)], 0)

    def get(self, key: str) -> bytes:
        return self._call(GET, [key.encode(), self._millis()], 1)[0]

    def add(self, key: str, value: int) -> int:
        return int(self._call(ADD, [key.encode(), str(int(value)).encode()], 1)[0])

    def compare_set(self, key: str, expected: Any, desired: Any) -> bytes:
        return self._call(COMPARE_SET, [key.encode(), _bytes(expected), _bytes(desired)], 1)[0]

    def delete_key(self, key: str) -> bool:
        return self._call(DELETE, [key.encode()], 1)[0] == b"1"

    def num_keys(self) -> int:
        return int(self._call(NUM_KEYS, [], 1)[0])

    def check(self, keys: list[str]) -> bool:
        return self._call(CHECK, [str(len(keys)).encode(), *(k.encode() for k in keys)],
                          1)[0] == b"1"

    def wait(self, keys: list[str], timeout: timedelta | None = None) -> None:
        self._call(WAIT, [str(len(keys)).encode(), *(k.encode() for k in keys),
                          self._millis(timeout)], 0)

    def set_timeout(self, timeout: timedelta) -> None:
        self._timeout = timeout
        super().set_timeout(timeout)  # what `timeout` says, through a PrefixStore too

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _bytes(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


# --- parcels: files for the workers, before they train ----------------------------------------

PARCELS = "parcel/"


def put_parcel(server: Server, what: str, packed: dict[str, Any]) -> None:
    """A file or folder as `cluster._pack` made it, under `what`: its names and sizes in
    one key, each file's bytes in its own."""
    files = [("", packed["file"])] if "file" in packed else list(packed["tree"])
    index = {"name": packed["name"], "folder": "file" not in packed,
             "files": [rel for rel, _ in files]}
    for number, (_, data) in enumerate(files):
        server.put(f"{PARCELS}{what}/{number}", data)
    server.put(f"{PARCELS}{what}", json.dumps(index).encode())


def take_parcel(client: Client, what: str) -> dict[str, Any]:
    """What `put_parcel` put under `what`, as `cluster._pack` made it (the caller checks
    it against the derivation's digests: until then it is only what the store said)."""
    try:
        index = json.loads(client.get(f"{PARCELS}{what}"))
        name, folder, files = index["name"], index["folder"], index["files"]
        if not (isinstance(name, str) and isinstance(folder, bool) and isinstance(files, list)
                and all(isinstance(rel, str) for rel in files)
                and (folder or files == [""])):
            raise ValueError("not a parcel's index")
    except (ValueError, KeyError, TypeError) as e:
        raise MeetingError(f"the meeting point's {what}: {e}") from e
    data = [client.get(f"{PARCELS}{what}/{number}") for number in range(len(files))]
    if not folder:
        return {"name": name, "file": data[0]}
    return {"name": name, "tree": list(zip(files, data, strict=True))}
