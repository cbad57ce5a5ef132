"""Keeping a build's checkpoints: each one read once, as the build sends it, beside training.

A 1 GB model trained with Adam makes a 3.2 GB checkpoint each time. Written to a file by
the training process and then read back, hashed, cut and written again by the builder,
each byte crossed the page cache twice, and the file went to disk only to be deleted.
So a build does not write its checkpoints: the training process sends each one down a
pipe (`state_bytes.checkpoint`: a frame holding the step, the size and the bytes of the
safetensors file), and a thread of the builder reads it once, into a few page-aligned
buffers of a chunk each:

- every byte goes through the checkpoint's SHA-256 (its digest in the transcript);
- a checkpoint the recipe's retention keeps is cut as `store_checkpoints.cut` says, and
  each piece, hashed for its own name on a worker thread, is written once into the
  store's chunks/, from the buffer and past the page cache (`store_checkpoints.write_new`).
  Small checkpoints (up to COMPRESS_UP_TO) are compressed first (byte planes, zstd:
  about 0.83 of their bytes at some 2.5 s of CPU per GB, which is a lot at the size of a
  real model and nothing for digits-cnn); larger ones are stored as they are;
- one that may be among the last m (`keep_last`) waits in a scratch file outside the
  build's output, written the same way, until a later one pushes it out (it is deleted)
  or the build ends (it is kept); any other is only hashed.

What the build process sent is what is hashed and stored: nothing it can still change is
read twice. The frames must be the checkpoints the build's events report, in order;
anything else fails the build. A build given no pipe (or whose runtime wrote files
instead) is kept from its files once it has ended, the same way.

Deciding what the retention keeps is `retention`; the chunks' form is `store_checkpoints`.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import queue
import select
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .digest import ALGORITHM
from .direct import PAGE, write_new
from .errors import BuildError, WeightsError
from .state_bytes import FRAME, MAGIC
from .store_checkpoints import CHUNK, RAW, Chunks, Manifest, chunk_digest, cut

COMPRESS_UP_TO = 64 << 20  # bytes: a checkpoint this small has its chunks compressed
TOGETHER = 64 << 10  # tensors smaller than this that follow one another share a chunk
# Hashing runs at about 2 GB/s a core, faster than a pipe delivers: more threads would only
# hold more buffers (2 per thread and one, of 8 MiB each: 72 MiB at most).
MOST_THREADS = 4
PIPE_SIZE = 1 << 20  # what an unprivileged process may ask a pipe to hold
POLL_MS = 200  # how often a reader waiting on the pipe looks whether the build has ended


@dataclass(frozen=True)
class Kept:
    """What became of one checkpoint of a build: its digest, and its manifest's path
    relative to the output folder when its file is kept (None when only its digest is)."""

    step: int
    file: str  # where the checkpoint file would lie, relative to the output folder
    digest: str
    manifest: str | None


def retention(index: int, every: int, last: int) -> str:
    """What happens to the `index`-th checkpoint (from 1) when it arrives: "keep" (every
    n-th, or all when the recipe says nothing), "wait" (it may be among the last m), or
    "hash" (only its digest is kept)."""
    if (every == 0 and last == 0) or (every and index % every == 0):
        return "keep"
    return "wait" if last else "hash"


class Buffers:
    """A fixed number of page-aligned buffers of a chunk each (and room for a stored
    chunk's prefix before it), lent and given back: what a keeper holds in memory is
    bounded, and direct I/O writes from them."""

    def __init__(self, count: int) -> None:
        self.free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        for _ in range(count):
            self.free.put(mmap.mmap(-1, CHUNK + PAGE))

    def take(self) -> mmap.mmap:
        return self.free.get()

    def give(self, buffer: mmap.mmap) -> None:
        self.free.put(buffer)


class Source:
    """Reads exactly the bytes asked for from a pipe or a file. On a pipe it looks every
    POLL_MS whether the build has ended (`ended`): the build's process tree may not be all
    that holds the write end, and a reader must not wait for ever."""

    def __init__(self, fd: int, label: str, ended: threading.Event | None = None) -> None:
        self.fd, self.label, self.ended = fd, label, ended

    def ready(self) -> bool:
        """Whether bytes (or the end) can be read now; False once the build has ended and
        none come."""
        if self.ended is None:
            return True
        poll = select.poll()
        poll.register(self.fd, select.POLLIN)
        while not poll.poll(POLL_MS):
            if self.ended.is_set():
                return False
        return True

    def into(self, view: memoryview) -> int:
        """Fill `view`; the bytes read (fewer only at the end)."""
        got = 0
        while got < len(view):
            if not self.ready():
                break
            n = os.readv(self.fd, [view[got:]])
            if not n:
                break
            got += n
        return got

    def exactly(self, view: memoryview) -> None:
        if self.into(view) != len(view):
            raise WeightsError(f"{self.label}: cut short (the build ended while sending it)")


@dataclass
class _Taken:
    step: int
    size: int
    digest: str
    manifest: Manifest | None = None
    waiting: Path | None = None  # the scratch file of one that may be among the last m


class Keeper:
    """Takes a build's checkpoints as the build sends them (`stream`: the pipe's write
    end for the build process) and its reports of them (`add`, from its events); at
    `finish` (after the build process has ended) says what became of each."""

    def __init__(self, out: Path, chunks: Chunks | None, every: int, last: int,
                 threads: int) -> None:
        self.out, self.chunks, self.every, self.last = out, chunks, every, last
        self.scratch = out.parent / "checkpoints-waiting"  # out of the build's sight
        self.threads = min(max(1, threads), MOST_THREADS)
        self.workers = ThreadPoolExecutor(self.threads, thread_name_prefix="chunks")
        self.buffers = Buffers(2 * self.threads + 1)
        self.reported: list[tuple[int, str]] = []
        self.taken: list[_Taken] = []
        self.window: deque[tuple[int, _Taken]] = deque()  # (index, one that waits)
        self.ended = threading.Event()
        self.failure: BaseException | None = None
        self.reader: threading.Thread | None = None
        self.read_fd: int | None = None

    def stream(self) -> int:
        """The write end of the pipe the build process sends its checkpoints down (the
        caller hands it to the child and closes it); a thread reads the other end."""
        read, write = os.pipe()
        try:
            import fcntl

            fcntl.fcntl(read, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # a smaller pipe only means more reads
        self.read_fd = read
        self.reader = threading.Thread(target=self._follow, name="checkpoints", daemon=True)
        self.reader.start()
        return write

    def add(self, step: Any, file: Any) -> None:
        """A checkpoint the build reports (its file relative to the output folder). The
        build's own event says so, and the recipe's code could forge one: only the name
        the runtime gives a checkpoint is taken, and each step once."""
        if not (isinstance(step, int) and isinstance(file, str)
                and file == f"checkpoints/step-{step:09d}.safetensors"
                and all(s != step for s, _ in self.reported)):
            raise BuildError(f"the build reported a checkpoint {file!r} at step {step!r} "
                             "that is not one the runtime writes")
        if (failed := self.failed()) is not None:
            raise failed
        self.reported.append((step, file))

    def failed(self) -> BuildError | None:
        """Why a checkpoint could not be kept, if one could not: the reader stopped and
        closed its end, so the build process failed too (a broken pipe), and this is
        the reason to give."""
        if self.failure is None:
            return None
        return BuildError(f"a checkpoint could not be kept: {self.failure}")

    def finish(self) -> list[Kept]:
        """After the build process has ended: every checkpoint it reported, in order,
        with its digest and (for those kept) its manifest written beside where its file
        would lie (`checkpoints/step-N.json`)."""
        self.ended.set()
        if self.reader is not None:
            self.reader.join()
        if (failed := self.failed()) is not None:
            raise failed from self.failure
        if not self.taken and self.reported:
            self._from_files()
        self._end_window()
        if [t.step for t in self.taken] != [s for s, _ in self.reported]:
            raise BuildError("the checkpoints the build sent are not those it reported "
                             f"(sent steps {[t.step for t in self.taken][:10]}, reported "
                             f"{[s for s, _ in self.reported][:10]})")
        return [self._kept(t, file) for t, (_, file) in zip(self.taken, self.reported,
                                                             strict=True)]

    def close(self) -> None:
        self.ended.set()
        if self.read_fd is not None and self.reader is not None:
            self.reader.join()
        self.workers.shutdown(wait=True, cancel_futures=True)
        if self.scratch.exists():
            for path in self.scratch.iterdir():
                path.unlink()
            self.scratch.rmdir()

    # --- reading ---------------------------------------------------------------------
    def _follow(self) -> None:
        """The reader thread: frame after frame until the build ends."""
        assert self.read_fd is not None
        source = Source(self.read_fd, "the build's checkpoint pipe", self.ended)
        try:
            head = memoryview(bytearray(FRAME.size))
            while (got := source.into(head)) == FRAME.size:
                magic, step, size = FRAME.unpack(head)
                if magic != MAGIC:
                    raise WeightsError("the build's checkpoint pipe: not a checkpoint frame")
                self._arrived(source, step, size)
            if got:
                raise WeightsError("the build's checkpoint pipe: a frame cut short")
        except BaseException as e:  # the build process gets EPIPE and stops
            self.failure = e
        finally:
            os.close(self.read_fd)

    def _arrived(self, source: Source, step: int, size: int) -> None:
        index = len(self.taken) + 1
        while self.window and self.window[0][0] <= index - self.last:
            _, gone = self.window.popleft()  # no longer among the last m: only its digest
            assert gone.waiting is not None
            gone.waiting.unlink()
            gone.waiting = None
        label = f"checkpoint at step {step}"
        what = retention(index, self.every, self.last) if self.chunks else "hash"
        taken = _Taken(step, size, "")
        if what == "keep":
            taken.manifest = self._keep(source, size, label)
            taken.digest = taken.manifest.digest
        elif what == "wait":
            self.scratch.mkdir(exist_ok=True)
            taken.waiting = self.scratch / f"step-{step:09d}"
            taken.digest = read_through(source, size, self.buffers, taken.waiting)
            self.window.append((index, taken))
        else:
            taken.digest = read_through(source, size, self.buffers)
        self.taken.append(taken)

    def _keep(self, source: Source, size: int, label: str) -> Manifest:
        assert self.chunks is not None
        return take(source, size, self.chunks, self.workers, self.buffers, label)

    # --- the end -----------------------------------------------------------------------
    def _end_window(self) -> None:
        """Keep those still among the last m: each read back from its scratch file."""
        while self.window:
            _, taken = self.window.popleft()
            assert taken.waiting is not None and self.chunks is not None
            fd = os.open(taken.waiting, os.O_RDONLY | os.O_CLOEXEC)
            try:
                manifest = take(Source(fd, str(taken.waiting)), taken.size, self.chunks,
                                self.workers, self.buffers, f"checkpoint at {taken.step}")
            finally:
                os.close(fd)
            if manifest.digest != taken.digest:
                raise BuildError(f"{taken.waiting}: changed while it waited to be kept")
            taken.waiting.unlink()
            taken.manifest, taken.waiting = manifest, None

    def _from_files(self) -> None:
        """A build that wrote its checkpoints as files (its runtime had no pipe): each
        read once now that the build has ended, in the order reported."""
        for step, file in self.reported:
            path = self.out / file
            if not path.is_file() or path.is_symlink():
                raise BuildError(f"the build reported a checkpoint {file!r} at step {step} "
                                 "that it neither sent nor wrote")
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                self._arrived(Source(fd, file), step, os.fstat(fd).st_size)
            finally:
                os.close(fd)
            path.unlink()

    def _kept(self, taken: _Taken, file: str) -> Kept:
        written = None
        if taken.manifest is not None:
            target = self.out / Path(file).with_suffix(".json")
            target.parent.mkdir(exist_ok=True)
            target.write_text(json.dumps(taken.manifest.to_json()) + "\n")
            written = target.relative_to(self.out).as_posix()
        return Kept(taken.step, file, taken.digest, written)


def take(source: Source, size: int, chunks: Chunks, workers: ThreadPoolExecutor,
         buffers: Buffers, label: str) -> Manifest:
    """Read one checkpoint of `size` bytes from `source` once: its digest, and its
    pieces (`cut` from its header, read and checked first) stored in `chunks`, each
    hashed and written on `workers` while the next is read."""
    from .weights import MAX_HEADER, parse_header

    head = bytearray(min(8, size))
    source.exactly(memoryview(head))
    length = int.from_bytes(head, "little") if len(head) == 8 else -1
    if 0 <= length <= MAX_HEADER and 8 + length <= size:
        rest = bytearray(length)
        source.exactly(memoryview(rest))
        head += rest
    try:
        header = parse_header(Path(label), bytes(head[8:]), size) if len(head) > 8 else None
    except WeightsError:
        header = None  # never one the runtime wrote: cut into plain pieces
    small = size <= COMPRESS_UP_TO
    whole, listed = hashlib.sha256(), []
    try:
        for piece in cut(header, size, TOGETHER):
            buffer = buffers.take()
            try:
                with memoryview(buffer) as view:
                    data = view[RAW.size:RAW.size + piece.length]
                    known = max(0, min(len(head) - piece.start, piece.length))
                    data[:known] = head[piece.start:piece.start + known]
                    source.exactly(data[known:])
                    whole.update(data)
            except BaseException:
                buffers.give(buffer)
                raise
            listed.append(workers.submit(_store, chunks, buffers, buffer, piece.length,
                                         piece.itemsize if small else 0))
        return Manifest(f"{ALGORITHM}:{whole.hexdigest()}", size,
                        tuple(future.result() for future in listed))
    finally:
        for future in listed:  # none left holding a buffer when this one failed
            future.exception()


def _store(chunks: Chunks, buffers: Buffers, buffer: mmap.mmap, length: int,
           itemsize: int) -> tuple[str, int]:
    """One piece, lying in `buffer` after RAW.size bytes: named by its SHA-256 and stored
    (compressed when `itemsize` is given, as it is when 0); the buffer is given back."""
    try:
        with memoryview(buffer) as view:
            data = view[RAW.size:RAW.size + length]
            digest = chunk_digest(data)
            if itemsize:
                chunks.put(digest, data, itemsize)
        if not itemsize:
            chunks.put_raw(digest, buffer, length)
        return digest, length
    finally:
        buffers.give(buffer)


def read_through(source: Source, size: int, buffers: Buffers, path: Path | None = None) -> str:
    """The digest of a checkpoint read from `source`, written as it is to `path` on the
    way when given (past the cache: one that may yet be kept)."""
    whole = hashlib.sha256()
    buffer = buffers.take()
    try:
        with memoryview(buffer) as view:
            for start in range(0, size, CHUNK):
                block = view[:min(CHUNK, size - start)]
                source.exactly(block)
                whole.update(block)
                if path is not None:
                    write_new(path, buffer, len(block), start)
    finally:
        buffers.give(buffer)
    return f"{ALGORITHM}:{whole.hexdigest()}"


def pack(path: Path, chunks: Chunks | None, threads: int = 1) -> Manifest:
    """Keep one checkpoint file (its digest, and with `chunks` its pieces) as a build
    keeps what it is sent: for tools and benchmarks that hold a file."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    buffers = Buffers(2 * max(1, threads) + 1)
    try:
        size = os.fstat(fd).st_size
        if chunks is None:
            return Manifest(read_through(Source(fd, str(path)), size, buffers), size, ())
        with ThreadPoolExecutor(max(1, threads)) as workers:
            return take(Source(fd, str(path)), size, chunks, workers, buffers, str(path))
    finally:
        os.close(fd)
