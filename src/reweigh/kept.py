"""The checkpoint files a transcript names: found beside it, or kept in the store; checked.

A published transcript comes with its checkpoint files in its folder (`reweigh export
transcript` writes one so). A store item's transcript names the same files, but the
store keeps them as chunks (`store_checkpoints`), so a file not beside the transcript is
looked up in the store by its digest and written out into a scratch folder. Either way
a file is only handed out when it has its recorded digest. An entry without a file
(format /2: the recipe's retention did not keep it) is no problem here: its digest is
chained all the same, and `transcript.replay_plan` replays through it.

A checkpoint the transcript says was kept but that is neither beside it nor whole in the
store (an item pulled from a binary cache that lacked its chunks; a publisher left a file
out) is `absent`: the replay runs through it as through one not kept, which costs time but
lets no forgery pass, since every segment it runs must give its recorded digest. A file
that is there and does not have its digest, or a chunk that is there and damaged, is a
problem: evidence, not a gap. Given caches (`verify --from`), the chunks of absent
checkpoints whose manifests the store holds are fetched from them first (`cache.chunks`:
only the chunks missing here, each checked against its digest before the store takes
it), so an item pulled without them can be replayed from where it was kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import transcript as tr
from .digest import file_digest
from .errors import WeightsError
from .store import Store
from .store_checkpoints import materialise


@dataclass
class Found:
    files: dict[int, Path] = field(default_factory=dict)  # checkpoint index -> checked file
    problems: list[str] = field(default_factory=list)
    absent: list[int] = field(default_factory=list)  # steps said kept, not at hand here
    from_store: int = 0  # how many were written out of the store's chunks
    fetched: dict[str, int] = field(default_factory=dict)  # chunks fetched from caches


def find(parsed: tr.Transcript, folder: Path, store: Store, scratch: Path,
         sources: tuple[str, ...] = ()) -> Found:
    """Every kept checkpoint's file, checked against its digest, and what is wrong: a
    file that leads out of the folder, is missing or does not have its digest, and a
    chain link that does not follow. The chunks the store lacks are asked of `sources`
    first."""
    found = Found()
    if sources:
        found.fetched = fetch_chunks(missing_chunks(parsed, folder, store), sources, store,
                                     scratch)
    root = folder.resolve()
    for index, c in enumerate(parsed.checkpoints):
        if c.file is None:
            continue
        path = folder / c.file
        try:
            if not path.resolve().is_relative_to(root):
                found.problems.append(f"step {c.step}: {c.file} leads out of the "
                                      "transcript's folder")
            elif path.is_file():
                if file_digest(path) == c.digest:
                    found.files[index] = path
                else:
                    found.problems.append(f"step {c.step}: {c.file} does not have its "
                                          "recorded digest")
            elif (problem := _from_store(c, index, store, scratch, found)) is not None:
                found.problems.append(f"step {c.step}: {problem}")
        except (OSError, ValueError) as e:  # a name too long, a NUL byte, no permission
            found.problems.append(f"step {c.step}: {c.file} cannot be read ({e})")
    found.problems += [f"step {step}: the chain link does not follow from the entries "
                       "before it" for step in tr.broken_links(parsed)]
    return found


def _from_store(c: tr.Checkpoint, index: int, store: Store, scratch: Path,
                found: Found) -> str | None:
    """Write the checkpoint out of the store's chunks; what went wrong, or None."""
    manifest = store.kept_checkpoint(c.digest)
    if manifest is None or not all(store.chunks.has(d) for d, _ in manifest.chunks):
        found.absent.append(c.step)
        return None
    try:
        found.files[index] = materialise(manifest, store.chunks,
                                         scratch / f"{index:06d}-{Path(c.file or '').name}")
    except WeightsError as e:
        return f"{c.file}: kept in the store, but damaged ({e.message})"
    found.from_store += 1
    return None


def missing_chunks(parsed: tr.Transcript, folder: Path, store: Store) -> dict[str, int]:
    """Chunk digest -> length of the chunks that checkpoints named as kept, and not beside
    the transcript, lack in the store (their manifests are the store's)."""
    missing: dict[str, int] = {}
    for c in parsed.checkpoints:
        if c.file is None or _beside(folder, c.file):
            continue
        manifest = store.kept_checkpoint(c.digest)
        if manifest is not None:
            missing.update((d, n) for d, n in manifest.chunks if not store.chunks.has(d))
    return missing


def _beside(folder: Path, file: str) -> bool:
    try:
        return (folder / file).is_file()
    except (OSError, ValueError):
        return False


def fetch_chunks(missing: dict[str, int], sources: tuple[str, ...], store: Store,
                 scratch: Path) -> dict[str, int]:
    """Fetch `missing` chunks from the caches into the store (each checked against its
    digest first); what came: chunks fetched, bytes received, still absent."""
    if not missing:
        return {"fetched": 0, "received": 0, "absent": 0}
    from .cache.chunks import fetch  # httpx: only a fetch needs it
    from .cache.client import Source, new_client

    with new_client(list(sources)) as client:
        fetched = fetch([Source(s, client) for s in sources], missing, scratch / "chunks")
    for digest, path in fetched.files.items():
        store.chunks.adopt(digest, path)
    return {"fetched": len(fetched.files), "received": fetched.received,
            "absent": len(fetched.absent)}
