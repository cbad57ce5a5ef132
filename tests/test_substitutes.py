"""Signed substitutes: publish, serve on 127.0.0.1, pull with K of N distinct keys, and
every attack the issue names refused with nothing written."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from reweigh.cache import layout
from reweigh.errors import CheckFailed, ReweighError
from reweigh.keys import KeyRing
from reweigh.signing import FileEntry, bundle_claim, sign
from reweigh.store import Store, file_rows
from reweigh.store_checkpoints import Manifest
from reweigh.verbs.publish import publish
from reweigh.verbs.pull import pull

from .helpers import run_reweigh, store_is_empty, write_recipe
from .substitutes import (
    Party,
    copy_item,
    dying_server,
    item_dir,
    killed_mid_transfer,
    party,
    puller,
    read_json,
    repack,
    served,
    write_json,
)

pytestmark = pytest.mark.slow  # every test here reads one sandboxed build (two rebuild)

# A few steps of numpy "training" that checkpoints every 2 steps and resumes from a
# checkpoint: an item with kept checkpoints whose segments replay in a second or two. The
# frozen table is equal in every checkpoint (one chunk, stored once: it is large enough,
# 80 KB, not to share a chunk with the small tensors beside it).
TRAIN = """
import numpy as np

def train(ctx):
    state = ctx.resume("numpy") or {}
    w = state["w"] if state else np.zeros(256, np.float32)
    frozen = np.arange(20000, dtype=np.float32)
    for step in range(int(state.get("step", 0)) + 1, 7):
        w = w + np.sin(np.arange(256, dtype=np.float32) * step).astype(np.float32)
        ctx.checkpoint(step, {"w": w, "frozen": frozen, "step": step}, final=step == 6)
    ctx.save_weights({"w": w})
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One small built item in the publisher's store, and three parties with keys."""
    from reweigh import build

    root = tmp_path_factory.mktemp("substitutes")
    recipe = write_recipe(root / "recipe")
    store = root / "publisher-store"
    item = build(recipe, store=Store(store), threads=1).path
    return {"root": root, "store": store, "item": item, "recipe": recipe,
            **{name: party(root, name) for name in ("alice", "bob", "carol", "mallory")}}


def _publish(world: dict, cache: Path, *signers: Party, archive: bool = True) -> None:
    """Publish the item into `cache`, signed by each of `signers` (each in a store of
    their own, like independent parties)."""
    for index, someone in enumerate(signers or (None,)):
        store = Store(world["store"]) if index == 0 else _store_with_item(world, someone)
        shutil.rmtree(store.root / "signatures", ignore_errors=True)  # only this signer's
        publish([world["item"].name], cache, store=store, archive=archive and index == 0,
                sign_with=someone.name if someone else None,
                keyring=someone.ring if someone else KeyRing(world["root"] / "nobody"))


def _store_with_item(world: dict, someone: Party) -> Store:
    """A second party's store holding the same item (as after a pull or a rebuild)."""
    root = world["root"] / f"store-{someone.name}"
    store = Store(root)
    if store.find(Store(world["store"]).resolve(world["item"].name).derivation) is None:
        published = world["root"] / f"seed-{someone.name}"
        publish([world["item"].name], published, store=Store(world["store"]),
                sign_with="alice", keyring=world["alice"].ring)
        pull(world["item"].name, [str(published)], store=store,
             keyring=puller(world["root"] / f"seed-ring-{someone.name}", world["alice"]))
    return store


@dataclass
class Result:
    """What the command line makes of a pull: exit code, stdout (JSON), stderr."""

    returncode: int
    stdout: str
    stderr: str


def _pull(world: dict, tmp_path: Path, *sources: str, require: int = 1,
          ring: KeyRing | None = None, cli: bool = False) -> Result:
    """Pull the item through the real command (`cli`), or through the library verb in this
    process (cheaper), its errors turned into what the command line would show."""
    ring = ring or puller(tmp_path, world["alice"], world["bob"], world["carol"])
    if cli:
        args = ["pull", world["item"].name]
        for source in sources:
            args += ["--from", source]
        done = run_reweigh(*args, "--require", require, "--keys", ring.root, "--json",
                           store=tmp_path / "store")
        return Result(done.returncode, done.stdout, done.stderr)
    try:
        report = pull(world["item"].name, list(sources), require=require,
                      store=Store(tmp_path / "store"), keyring=ring)
    except ReweighError as e:
        return Result(e.exit_code, "", f"reweigh: {e.one_line()}\n")
    return Result(0, json.dumps(report.to_json()), "")


def _refused(result, tmp_path: Path, *words: str) -> None:
    assert result.returncode == 1, result.stderr
    line = result.stderr.strip()
    assert line.count("\n") == 0 and line.startswith("reweigh: "), line
    assert "Traceback" not in line
    for word in words:
        assert word in line, line
    assert store_is_empty(tmp_path / "store")


# --- K of N over a real server ------------------------------------------------------

@pytest.mark.parametrize("require", [1, 2, 3])
def test_pull_installs_what_k_distinct_trusted_keys_signed(world: dict, tmp_path: Path,
                                                           require: int) -> None:
    cache = tmp_path / "cache"
    _publish(world, cache, world["alice"], world["bob"], world["carol"])
    with served(cache) as url:
        result = _pull(world, tmp_path, url, require=require, cli=require == 2)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["signers"]) == require  # it stops fetching once K verified
    assert set(report["signers"]) <= {"alice", "bob", "carol"}
    pulled = Path(report["path"])
    assert (pulled / "weights.safetensors").read_bytes() == \
        (world["item"] / "weights.safetensors").read_bytes()
    from reweigh.verbs.store import verify_store

    assert verify_store(Store(tmp_path / "store")) == []
    assert report["requests"] == 2 + require  # one index, one info, one bundle per signer
    store = Store(tmp_path / "store")
    checks = store.checks(store.resolve(world["item"].name))
    assert [(c["kind"], c["result"], sorted(c["detail"]["signers"])) for c in checks] == [
        ("substitute", "pulled", sorted(report["signers"]))]  # indexed with the item


def test_pull_with_four_required_of_three_signers_is_refused(world: dict,
                                                             tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _publish(world, cache, world["alice"], world["bob"], world["carol"])
    with served(cache) as url:
        result = _pull(world, tmp_path, url, require=4)
    _refused(result, tmp_path, "3 of the 4", "nothing was written")


def test_signatures_from_a_rebuilders_cache_count_with_the_publishers(world: dict,
                                                                      tmp_path: Path) -> None:
    publisher, rebuilder = tmp_path / "publisher", tmp_path / "rebuilder"
    _publish(world, publisher, world["alice"])
    _publish(world, rebuilder, world["bob"], archive=False)
    assert not (rebuilder / layout.archive_path(world["item"].name)).exists()
    with served(publisher) as first, served(rebuilder) as second:
        result = _pull(world, tmp_path, first, second, require=2)
    assert result.returncode == 0, result.stderr
    assert sorted(json.loads(result.stdout)["signers"]) == ["alice", "bob"]


def test_pull_stops_at_the_first_server_that_suffices(world: dict, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _publish(world, cache, world["alice"])
    with served(cache) as url:
        # the second server does not exist: it must never be asked
        result = _pull(world, tmp_path, url, "http://127.0.0.1:9", require=1)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["problems"] == []


# --- refusals: each one line, exit 1, nothing written -------------------------------

def test_an_unsigned_item_is_refused(world: dict, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _publish(world, cache)
    with served(cache) as url:
        _refused(_pull(world, tmp_path, url), tmp_path, "0 of the 1", "unsigned")


def test_a_signature_by_an_untrusted_key_is_refused(world: dict, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _publish(world, cache, world["mallory"])
    with served(cache) as url:
        _refused(_pull(world, tmp_path, url), tmp_path, "0 of the 1", "not trusted")


def test_a_signature_by_a_revoked_key_is_refused(world: dict, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _publish(world, cache, world["alice"])
    ring = puller(tmp_path, world["alice"])
    ring.revoke("alice", "key leaked")
    with served(cache) as url:
        _refused(_pull(world, tmp_path, url, ring=ring), tmp_path, "revoked on",
                 "key leaked")
    with pytest.raises(Exception, match="revoked"):  # and it is not trusted again
        ring.trust(world["alice"].ring.own()[0].key, "alice")


def test_a_signature_by_an_expired_key_is_refused(world: dict, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _publish(world, cache, world["alice"])
    ring = KeyRing(tmp_path / "ring")
    trusted = run_reweigh("keys", "trust", world["alice"].line, "--until", "2020-01-01",
                          "--keys", ring.root)
    assert trusted.returncode == 0 and "vouches for nothing now" in trusted.stdout
    with served(cache) as url:
        _refused(_pull(world, tmp_path, url, ring=ring, cli=True), tmp_path,
                 "expired on 2020-01-01T00:00:00Z")


def test_one_key_signing_at_two_servers_counts_once(world: dict, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    _publish(world, first, world["alice"])
    _publish(world, second, world["alice"])
    index = read_json(first / "index.json")  # and an index that lists it twice
    index["items"][world["item"].name]["signers"] *= 2
    write_json(first / "index.json", index)
    with served(first) as a, served(second) as b:
        _refused(_pull(world, tmp_path, a, b, require=2), tmp_path,
                 "1 of the 2 distinct trusted signatures required (alice)")


def test_one_key_trusted_under_two_names_counts_once(world: dict, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _publish(world, cache, world["alice"])
    ring = puller(tmp_path, world["alice"])
    trust = read_json(ring.root / "trust.json")  # edited by hand: the ring refuses it
    twin = dict(trust["keys"][0], name="alias",
                public_key=world["alice"].line.replace("alice:", "alias:"))
    trust["keys"].append(twin)
    write_json(ring.root / "trust.json", trust)
    with served(cache) as url:
        _refused(_pull(world, tmp_path, url, require=2, ring=ring), tmp_path, "1 of the 2")


def test_a_bundle_with_two_signatures_is_refused(world: dict, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _publish(world, cache, world["alice"])
    bundle_file = item_dir(cache, world["item"].name) / "signatures" / \
        f"{world['alice'].keyid}.sig"
    bundle = read_json(bundle_file)
    bundle["dsseEnvelope"]["signatures"] *= 2
    write_json(bundle_file, bundle)
    with served(cache) as url:
        _refused(_pull(world, tmp_path, url, require=1), tmp_path, "exactly one signature")


def test_a_tampered_archive_under_a_good_signature_is_refused(world: dict,
                                                              tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _publish(world, cache, world["alice"])
    forged = copy_item(world["item"], tmp_path / "forged")
    weights = bytearray((forged / "weights.safetensors").read_bytes())
    weights[-1] ^= 0x01  # one bit of one weight
    (forged / "weights.safetensors").write_bytes(bytes(weights))
    info = read_json(cache / layout.info_path(world["item"].name))
    files = tuple(FileEntry(f["path"], f["digest"], f["size"]) for f in info["files"])
    repack(cache, world["item"].name, forged, files)  # the server's records agree with it
    with served(cache) as url:
        _refused(_pull(world, tmp_path, url), tmp_path, "weights.safetensors",
                 "its signatures say")
    assert not list((tmp_path / "store" / "tmp").glob("pull-*"))  # no resume from it


def test_an_info_record_that_lies_about_the_files_is_refused(world: dict,
                                                             tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _publish(world, cache, world["alice"])
    info_file = cache / layout.info_path(world["item"].name)
    info = read_json(info_file)
    for entry in info["files"]:
        if entry["path"] == "MODEL_CARD.md":
            entry["digest"] = "sha256:" + "0" * 64
    write_json(info_file, info)
    with served(cache) as url:
        _refused(_pull(world, tmp_path, url), tmp_path, "list other files than alice signed")


def test_an_info_record_that_lies_about_the_derivation_is_refused(world: dict,
                                                                  tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _publish(world, cache, world["alice"])
    real = world["item"].name
    fake_derivation = "sha256:" + "ab" * 32
    fake = f"{'ab' * 16}-{real.split('-', 1)[1]}"
    shutil.copytree(item_dir(cache, real), item_dir(cache, fake))
    info = read_json(cache / layout.info_path(fake))
    info.update(item=fake, derivation=fake_derivation)
    write_json(cache / layout.info_path(fake), info)
    index = read_json(cache / "index.json")
    index["items"] = {fake: dict(index["items"][real], derivation=fake_derivation)}
    write_json(cache / "index.json", index)
    ring = puller(tmp_path, world["alice"])
    with served(cache) as url:
        result = run_reweigh("pull", fake_derivation, "--from", url, "--keys", ring.root,
                             store=tmp_path / "store")
    _refused(result, tmp_path, "0 of the 1", f"signs {real}")


def test_a_server_that_lies_about_where_the_pieces_lie_is_refused(world: dict,
                                                                  tmp_path: Path) -> None:
    """The record's piece lengths are claims: two files' first pieces swapped (the sizes
    they decode to kept, so the record still adds up) cannot pass."""
    cache = tmp_path / "cache"
    _publish(world, cache, world["alice"])
    info_file = cache / layout.info_path(world["item"].name)
    info = read_json(info_file)
    first, second = [f for f in info["files"] if f["pieces"]][:2]
    first["pieces"][0][0], second["pieces"][0][0] = (second["pieces"][0][0],
                                                     first["pieces"][0][0])
    write_json(info_file, info)
    with served(cache) as url:
        _refused(_pull(world, tmp_path, url), tmp_path, first["path"])
    assert not list((tmp_path / "store" / "tmp").glob("pull-*"))


def test_a_truncated_archive_is_refused(world: dict, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _publish(world, cache, world["alice"])
    archive = cache / layout.archive_path(world["item"].name)
    archive.write_bytes(archive.read_bytes()[:-100])
    with served(cache) as url:
        _refused(_pull(world, tmp_path, url), tmp_path, "truncated: the archive ends")
    assert not list((tmp_path / "store" / "tmp").glob("pull-*"))


def test_a_server_killed_mid_transfer_leaves_nothing_and_the_next_pull_resumes(
        world: dict, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _publish(world, cache, world["alice"])
    size = read_json(cache / layout.info_path(world["item"].name))["archive"]["size"]
    with dying_server(cache) as url:
        _refused(_pull(world, tmp_path, url, cli=True), tmp_path, "stopped after",
                 "pull again to resume")
    parts = list((tmp_path / "store" / "tmp").glob("pull-*"))
    assert len(parts) == 1
    kept = [p for p in (parts[0] / world["item"].name).rglob("*") if p.is_file()]
    assert kept  # the files that came whole before the server died
    with served(cache) as url:
        result = _pull(world, tmp_path, url)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert 0 < report["resumed_from"] < size  # only the rest was asked for
    assert report["received"] == size - report["resumed_from"]
    assert not list((tmp_path / "store" / "tmp").glob("pull-*"))
    from reweigh.verbs.store import verify_store

    assert verify_store(Store(tmp_path / "store")) == []


def test_a_serve_process_killed_mid_transfer_leaves_nothing_and_the_next_pull_resumes(
        world: dict, tmp_path: Path) -> None:
    """The real `reweigh serve` SIGKILLed half way through the archive: the pull is refused
    in one line with nothing in the store, and a pull from a server started again on the
    same folder asks only for the rest."""
    cache = tmp_path / "cache"
    _publish(world, cache, world["alice"])
    size = read_json(cache / layout.info_path(world["item"].name))["archive"]["size"]
    with killed_mid_transfer(cache, after=size // 2) as url:
        _refused(_pull(world, tmp_path, url, cli=True), tmp_path,
                 f"stopped after {size // 2} of {size} bytes", "pull again to resume")
    with served(cache) as url:
        result = _pull(world, tmp_path, url)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert 0 < report["resumed_from"] <= size // 2  # only the rest was asked for
    assert report["received"] == size - report["resumed_from"]
    assert (Path(report["path"]) / "weights.safetensors").read_bytes() == \
        (world["item"] / "weights.safetensors").read_bytes()


def test_a_file_name_that_leaves_the_item_is_refused(world: dict, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _publish(world, cache, world["alice"])
    info = read_json(cache / layout.info_path(world["item"].name))
    files = tuple(FileEntry(f["path"], f["digest"], f["size"]) for f in info["files"])
    evil = tmp_path / "evil"
    copy_item(world["item"], evil)
    (tmp_path / "escape.txt").write_text("owned")
    escape = FileEntry("../escape.txt", "sha256:" + "0" * 64, 5)  # evil/../escape.txt
    repack(cache, world["item"].name, evil, (escape, *files))
    (tmp_path / "escape.txt").unlink()
    with served(cache) as url:
        _refused(_pull(world, tmp_path, url), tmp_path, "'../escape.txt'",
                 "is not a plain relative path")
    assert not (tmp_path / "escape.txt").exists()
    assert not any(p.name == "escape.txt" for p in (tmp_path / "store").rglob("*"))


def test_a_trusted_signer_cannot_sign_a_path_outside_the_item(world: dict,
                                                              tmp_path: Path) -> None:
    from reweigh.verbs.sign import item_claim

    store = Store(world["store"])
    claim = item_claim(store, store.resolve(world["item"].name))
    evil = replace(claim, files=(FileEntry("../../etc/cron.d/x", "sha256:" + "0" * 64, 1),
                                 *claim.files))
    bundle = sign(evil, world["alice"].ring.signer("alice"), 0)
    with pytest.raises(Exception, match="not a plain relative path"):
        bundle_claim(bundle, "forged")


def test_trusted_signers_that_disagree_stop_the_pull_and_weather_says_so(
        world: dict, tmp_path: Path) -> None:
    """carol (trusted) signs other weights for the same derivation, published on a
    signatures-only server asked first: the pull refuses, weather exits 1."""
    from reweigh.cache.folder import CacheFolder
    from reweigh.verbs.sign import item_claim

    honest, other = tmp_path / "honest", tmp_path / "other"
    _publish(world, honest, world["alice"])
    store = Store(world["store"])
    claim = item_claim(store, store.resolve(world["item"].name))
    bad_weights = "sha256:" + "5" * 64
    files = tuple(replace(f, digest=bad_weights) if f.path == "weights.safetensors" else f
                  for f in claim.files)
    disagreeing = replace(claim, weights_digest=bad_weights, files=files, role="rebuilder")
    bundle = sign(disagreeing, world["carol"].ring.signer("carol"), 0)
    folder = CacheFolder(other)
    with folder.locked() as entries:
        folder.put_signature(entries, bundle_claim(bundle, "x"), world["carol"].keyid, bundle)
    ring = puller(tmp_path, world["alice"], world["carol"])
    with served(other) as first, served(honest) as second:
        _refused(_pull(world, tmp_path, first, second, ring=ring), tmp_path,
                 "trusted signers disagree", "alice signed weights", "carol signed weights")
        weather = run_reweigh("weather", "--from", first, "--from", second, "--keys",
                              ring.root, "--json")
    assert weather.returncode == 1, weather.stderr
    report = json.loads(weather.stdout)
    assert report["items"][0]["agreement"] == "disagree"
    assert {s["name"]: s["weights_digest"] for s in report["items"][0]["signatures"]} == {
        "alice": claim.weights_digest, "carol": bad_weights}


def test_weather_reports_coverage_signers_and_agreement(world: dict, tmp_path: Path) -> None:
    publisher, rebuilder = tmp_path / "publisher", tmp_path / "rebuilder"
    _publish(world, publisher, world["alice"], world["mallory"])
    _publish(world, rebuilder, world["bob"], archive=False)
    ring = puller(tmp_path, world["alice"], world["bob"])
    with served(publisher) as first, served(rebuilder) as second:
        result = run_reweigh("weather", "--from", first, "--from", second, "--keys",
                             ring.root, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [(s["items"], s["archives"]) for s in report["servers"]] == [(1, 1), (1, 0)]
    item = report["items"][0]
    assert item["agreement"] == "agree"
    status = {s["name"] or "unknown": s["status"] for s in item["signatures"]}
    assert status == {"alice": "verified", "bob": "verified", "unknown": "not trusted"}
    assert report["requests"] == 4  # two indexes, two trusted bundles; mallory's not fetched


def test_a_pulled_bundle_is_kept_and_passed_on_by_a_mirror(world: dict,
                                                           tmp_path: Path) -> None:
    cache, mirror = tmp_path / "cache", tmp_path / "mirror"
    _publish(world, cache, world["alice"])
    ring = puller(tmp_path, world["alice"])
    store = Store(tmp_path / "store")
    pull(world["item"].name, [str(cache)], store=store, keyring=ring)
    publish([world["item"].name], mirror, store=store, keyring=ring)
    with served(mirror) as url:
        result = _pull(world, tmp_path / "second", url, ring=ring)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["signers"] == ["alice"]


def test_a_pulled_item_can_be_rebuilt_and_its_rebuilder_counts(world: dict,
                                                                tmp_path: Path) -> None:
    publisher, rebuilder_cache = tmp_path / "publisher", tmp_path / "rebuilder"
    _publish(world, publisher, world["alice"])
    mirror = tmp_path / "mirror"  # a mirror asked first, whose archive was tampered with
    _publish(world, mirror, world["alice"])
    _damage(world, tmp_path, mirror, "tampered")
    with served(mirror) as bad, served(publisher) as url:
        result = run_reweigh("rebuild", world["item"].name, "--from", bad, "--from", url,
                             "--to", rebuilder_cache, "--keys", world["bob"].ring.root,
                             "--json", "--threads", 1, store=tmp_path / "bob-store")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["identical"] and report["published_to"]
    [line] = report["fallbacks"]  # the tampered copy refused, the next server's rebuilt
    assert line.startswith(f"refused {world['item'].name} from {bad}: ") and \
        line.endswith(f"; trying {url}") and "weights.safetensors" in line
    assert result.stderr.strip() == f"reweigh: {line}"
    bundle = Path(report["published_to"]).read_bytes()
    claim = bundle_claim(bundle, "rebuilder")
    assert claim.role == "rebuilder" and claim.rebuilt["weights_digest"] == claim.weights_digest
    with served(publisher) as first, served(rebuilder_cache) as second:
        pulled = _pull(world, tmp_path, first, second, require=2,
                       ring=puller(tmp_path, world["alice"], world["bob"]))
    assert pulled.returncode == 0, pulled.stderr
    assert sorted(json.loads(pulled.stdout)["signers"]) == ["alice", "bob"]


def test_a_rebuild_that_gives_other_weights_is_not_signed(world: dict,
                                                          tmp_path: Path) -> None:
    """A publisher ships weights its recipe does not build: the rebuilder says so."""
    store = Store(world["store"])
    item = world["item"]
    forged = copy_item(item, tmp_path / "forged")
    weights = bytearray((forged / "weights.safetensors").read_bytes())
    weights[-1] ^= 0x40
    (forged / "weights.safetensors").write_bytes(bytes(weights))
    provenance = read_json(forged / "provenance.json")
    digest = hashlib.sha256(bytes(weights)).hexdigest()
    provenance["subject"][0]["digest"]["sha256"] = digest
    write_json(forged / "provenance.json", provenance)
    cache = tmp_path / "cache"
    publish([item.name], cache, store=store, keyring=KeyRing(tmp_path / "none"))
    info_file = cache / layout.info_path(item.name)
    info = read_json(info_file)
    rows = file_rows(forged)
    info["files"] = [{"path": p, "digest": d, "size": s} for p, d, s in rows]
    info["weights_digest"] = f"sha256:{digest}"
    write_json(info_file, info)
    index = read_json(cache / "index.json")
    index["items"][item.name]["weights_digest"] = f"sha256:{digest}"
    write_json(cache / "index.json", index)
    repack(cache, item.name, forged, tuple(FileEntry(*row) for row in rows))
    result = run_reweigh("rebuild", item.name, "--from", cache, "--keys",
                         world["bob"].ring.root, "--json", "--threads", 1,
                         store=tmp_path / "bob-store")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert not report["identical"] and report["signature"] is None
    assert report["published_weights_digest"] == f"sha256:{digest}"
    # the rebuilder's store now holds the honest build: a pull never replaces it
    with pytest.raises(CheckFailed, match="already holds"):
        pull(item.name, [str(cache)], store=Store(tmp_path / "bob-store"),
             keyring=world["bob"].ring)


def test_sign_refuses_an_item_changed_in_place(world: dict, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    cache = tmp_path / "cache"
    _publish(world, cache, world["alice"])
    pull(world["item"].name, [str(cache)], store=store, keyring=puller(tmp_path,
                                                                       world["alice"]))
    item = store.resolve(world["item"].name)
    card = item.path / "MODEL_CARD.md"
    item.path.chmod(0o755)
    card.chmod(0o644)
    card.write_text("edited")
    result = run_reweigh("sign", item.path.name, "--keys", world["alice"].ring.root,
                         store=tmp_path / "store")
    assert result.returncode == 1
    assert "not those the store recorded" in result.stderr


def test_sign_writes_a_bundle_binding_derivation_weights_files_and_platform(
        world: dict, tmp_path: Path) -> None:
    output = tmp_path / "item.sig"
    result = run_reweigh("sign", world["item"].name, "--keys", world["alice"].ring.root,
                         "--output", output, "--json", store=world["store"])
    assert result.returncode == 0, result.stderr
    bundle = json.loads(output.read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    ours = statement["predicate"]["reweigh"]
    item = Store(world["store"]).resolve(world["item"].name)
    assert ours["derivation"] == item.derivation
    assert ours["weights_digest"] == item.weights_digest
    provenance = read_json(item.path / "provenance.json")
    environment = provenance["predicate"]["runDetails"]["environment"]
    assert ours["platform"] == environment["platform"]
    listed = {r["name"] for r in statement["predicate"]["resources"]}
    assert listed == {p.relative_to(item.path).as_posix()
                      for p in item.path.rglob("*") if p.is_file()}
    assert bundle["verificationMaterial"]["publicKey"]["hint"] == world["alice"].keyid
    from reweigh.verbs.sign import signed_platform

    ring = puller(tmp_path, world["alice"])  # what challenge would take as signed
    assert signed_platform(output, item.weights_digest, ring) == environment["platform"]


def test_pull_of_an_item_no_cache_has_is_bad_input(world: dict, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _publish(world, cache, world["alice"])
    result = run_reweigh("pull", "no-such-item", "--from", cache, store=tmp_path / "store")
    assert result.returncode == 2 and "no cache has it" in result.stderr


# --- several servers -----------------------------------------------------------------

def test_pull_and_weather_over_three_servers_say_who_had_what(world: dict,
                                                              tmp_path: Path) -> None:
    """A rebuilder's signatures-only cache first, the publisher's second, a dead third:
    the pull takes the archive from the second, counts both signers and never asks the
    third; weather names the third unreachable and still reports the item."""
    rebuilder, publisher = tmp_path / "rebuilder", tmp_path / "publisher"
    _publish(world, rebuilder, world["bob"], archive=False)
    _publish(world, publisher, world["alice"])
    ring = puller(tmp_path, world["alice"], world["bob"])
    with served(rebuilder) as first, served(publisher) as second:
        result = _pull(world, tmp_path, first, second, "http://127.0.0.1:9", require=2,
                       ring=ring)
        weather = run_reweigh("weather", "--from", first, "--from", second, "--from",
                              "http://127.0.0.1:9", "--keys", ring.root, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["source"] == second and sorted(report["signers"]) == ["alice", "bob"]
    assert report["problems"] == []  # the third server was not asked
    assert report["requests"] == 5  # two indexes, one info record, two bundles
    assert weather.returncode == 0, weather.stderr
    seen = json.loads(weather.stdout)
    assert [(s["reachable"], s["items"], s["archives"]) for s in seen["servers"]] == [
        (True, 1, 0), (True, 1, 1), (False, 0, 0)]
    assert "127.0.0.1:9" in seen["servers"][2]["problem"]
    assert seen["items"][0]["agreement"] == "agree"
    assert {s["name"]: s["server"] for s in seen["items"][0]["signatures"]} == {
        "bob": first, "alice": second}


# --- kept checkpoints travel with the item -------------------------------------------

@pytest.fixture(scope="module")
def checkpointed(world: dict) -> dict:
    """An item with kept checkpoints (its build imports torch to write them: built once,
    for these tests only), published by alice into a cache folder with its chunks."""
    from reweigh import build

    root = world["root"] / "checkpointed"
    recipe = write_recipe(root / "recipe", TRAIN, build="checkpoint_every = 2")
    store = Store(root / "store")
    item = build(recipe, store=store, threads=1).path
    cache = root / "cache"
    publish([item.name], cache, store=store, sign_with="alice", keyring=world["alice"].ring)
    return {"store": store, "item": item, "cache": cache,
            "named": _named_chunks(item)}


def _pull_checkpointed(checkpointed: dict, world: dict, tmp_path: Path, source: str,
                       store: Store | None = None) -> Result:
    ring = puller(tmp_path, world["alice"])
    try:
        report = pull(checkpointed["item"].name, [source], keyring=ring,
                      store=store or Store(tmp_path / "store"))
    except ReweighError as e:
        return Result(e.exit_code, "", f"reweigh: {e.one_line()}\n")
    return Result(0, json.dumps(report.to_json()), "")


def _cache_copy(checkpointed: dict, tmp_path: Path, chunks: bool = True) -> Path:
    """A copy of the checkpointed item's cache (to tamper with), with or without chunks."""
    copy = tmp_path / "cache"
    shutil.copytree(checkpointed["cache"], copy,
                    ignore=None if chunks else shutil.ignore_patterns("chunks"))
    return copy

def _named_chunks(item: Path) -> list[str]:
    """Every chunk the item's checkpoint manifests name, with repeats."""
    return [c for path in sorted((item / "checkpoints").glob("*.json"))
            for c, _ in Manifest.read(path).chunks]


def test_kept_checkpoints_travel_with_the_item_once_per_cache(
        world: dict, checkpointed: dict, tmp_path: Path) -> None:
    cache, named = checkpointed["cache"], checkpointed["named"]
    assert len(named) > len(set(named))  # the frozen table: one chunk in every checkpoint
    published = {f"sha256:{p.name}" for p in (cache / "chunks").rglob("*") if p.is_file()}
    assert published == set(named)  # each once, by content
    again = publish([checkpointed["item"].name], cache, store=checkpointed["store"],
                    keyring=world["alice"].ring)
    assert again.items[0].chunks is not None and again.items[0].chunks.added == 0
    with served(cache) as url:
        result = _pull_checkpointed(checkpointed, world, tmp_path, url)
    assert result.returncode == 0, result.stderr
    chunks = json.loads(result.stdout)["checkpoint_chunks"]
    assert (chunks["named"], chunks["fetched"], chunks["absent"]) == (len(set(named)),) * 2 + (0,)
    store = Store(tmp_path / "store")
    from reweigh.verbs.store import verify_store

    assert verify_store(store) == []  # every chunk its manifests name is there, whole
    pulled = store.resolve(checkpointed["item"].name)
    manifest = Manifest.read(sorted((pulled.path / "checkpoints").glob("*.json"))[-1])
    assert store.kept_checkpoint(manifest.digest) == manifest


def test_a_chunk_that_is_not_what_its_name_says_refuses_the_pull(
        world: dict, checkpointed: dict, tmp_path: Path) -> None:
    cache = _cache_copy(checkpointed, tmp_path)
    first, second = sorted(p for p in (cache / "chunks").rglob("*") if p.is_file())[:2]
    first.write_bytes(second.read_bytes())  # a whole chunk, served under another's name
    with served(cache) as url:
        _refused(_pull_checkpointed(checkpointed, world, tmp_path, url), tmp_path,
                 first.name, "not the chunk its digest names", "refused")
    assert not list((tmp_path / "store" / "tmp").glob("pull-*"))
    assert not any((tmp_path / "store" / "chunks").rglob("*"))


def _without_chunks(checkpointed: dict, world: dict, tmp_path: Path) -> Store:
    """A store holding the item pulled from a cache without its chunks (its checkpoints
    absent)."""
    store = Store(tmp_path / "store")
    result = _pull_checkpointed(checkpointed, world, tmp_path,
                                str(_cache_copy(checkpointed, tmp_path / "bare", False)), store)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["checkpoint_chunks"]["absent"] == \
        len(set(checkpointed["named"]))
    return store


def test_verify_fetches_absent_checkpoints_from_a_cache_and_replays_them(
        world: dict, checkpointed: dict, tmp_path: Path) -> None:
    from reweigh.verbs.store import verify_store

    store = _without_chunks(checkpointed, world, tmp_path)
    assert {p.problem for p in verify_store(store)} == {"missing"}
    item = store.resolve(checkpointed["item"].name)
    with served(checkpointed["cache"]) as url:
        result = run_reweigh("verify", item.path.name, "--transcript",
                             item.path / "transcript.json", "--spot", 1, "--seed", 0,
                             "--from", url, "--threads", 1, "--json", store=store.root)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verdict"] == "holds" and report["absent"] == []
    assert report["kept_checkpoints"] == 3
    assert report["fetched_chunks"]["fetched"] == len(set(checkpointed["named"]))
    assert verify_store(store) == []  # the store kept what it fetched, each chunk whole


def test_verify_refuses_a_chunk_a_cache_serves_under_another_name(
        world: dict, checkpointed: dict, tmp_path: Path) -> None:
    from reweigh.verbs.verify import Sampling, verify

    store = _without_chunks(checkpointed, world, tmp_path)
    cache = _cache_copy(checkpointed, tmp_path)
    first, second = sorted(p for p in (cache / "chunks").rglob("*") if p.is_file())[:2]
    first.write_bytes(second.read_bytes())
    item = store.resolve(checkpointed["item"].name)
    with served(cache) as url, pytest.raises(ReweighError) as refused:
        verify(item.path.name, item.path / "transcript.json", Sampling(1, seed=0),
               store=store, threads=1, sources=(url,))
    assert refused.value.exit_code == 1
    assert "not the chunk its digest names" in refused.value.message
    assert not store.chunks.has(f"sha256:{first.name}")  # nothing it refused was kept


def test_a_cache_in_the_earlier_tar_format_is_refused_in_one_line(world: dict,
                                                                  tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _publish(world, cache, world["alice"])
    info_file = cache / layout.info_path(world["item"].name)
    info = read_json(info_file)
    info["format"] = "reweigh.cache-item/1"
    write_json(info_file, info)
    with served(cache) as url:
        _refused(_pull(world, tmp_path, url), tmp_path, "reweigh.cache-item/1",
                 "published again")
    publish([world["item"].name], cache, store=Store(world["store"]),  # which replaces it
            keyring=world["alice"].ring)
    assert read_json(info_file)["format"] == layout.INFO_FORMAT


# --- a refused copy: the next server with the same signed item -----------------------

def _damage(world: dict, tmp_path: Path, cache: Path, how: str) -> None:
    """Spoil `cache`'s copy of the item as a hostile or broken server would."""
    archive = cache / layout.archive_path(world["item"].name)
    if how == "tampered":  # one bit of one weight, the records made to agree
        forged = copy_item(world["item"], tmp_path / f"forged-{cache.name}")
        weights = bytearray((forged / "weights.safetensors").read_bytes())
        weights[-1] ^= 0x01
        (forged / "weights.safetensors").write_bytes(bytes(weights))
        info = read_json(cache / layout.info_path(world["item"].name))
        files = tuple(FileEntry(f["path"], f["digest"], f["size"]) for f in info["files"])
        repack(cache, world["item"].name, forged, files)
    elif how == "truncated":
        archive.write_bytes(archive.read_bytes()[:-100])
    elif how == "missing":  # the index lists an archive the server answers 404 for
        archive.unlink()
    elif how == "no record":
        (cache / layout.info_path(world["item"].name)).unlink()
    elif how == "record":  # a record that lists other files than the signers signed
        info = read_json(cache / layout.info_path(world["item"].name))
        for entry in info["files"]:
            if entry["path"] == "MODEL_CARD.md":
                entry["digest"] = "sha256:" + "0" * 64
        write_json(cache / layout.info_path(world["item"].name), info)


@pytest.mark.parametrize("how, why", [("tampered", "its signatures say"),
                                      ("truncated", "truncated"),
                                      ("missing", "HTTP 404"),
                                      ("killed", "stopped after"),
                                      ("no record", "missing, though the index lists"),
                                      ("record", "list other files than alice signed")])
def test_a_refused_copy_falls_back_to_the_next_server(world: dict, tmp_path: Path, how: str,
                                                      why: str) -> None:
    """The first server's copy is refused (as it streams, or before): the pull says so in
    one line and installs the same signed item from the second server, asked only then."""
    bad, good = tmp_path / "bad", tmp_path / "good"
    _publish(world, bad, world["alice"])
    _publish(world, good, world["alice"])
    _damage(world, tmp_path, bad, how)
    server = dying_server if how == "killed" else served
    with server(bad) as first, served(good) as second:
        result = _pull(world, tmp_path, first, second, cli=how == "tampered")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["source"] == second
    [line] = report["fallbacks"]
    assert line.startswith(f"refused {world['item'].name} from {first}: ") and why in line
    assert line.endswith(f"; trying {second}")
    if how == "tampered":  # the command line says it on stderr, in that one line
        assert result.stderr.strip() == f"reweigh: {line}"
    # the bad server sufficed alone (index, record, signature); the good one's index and
    # record were asked only after its archive was refused
    assert report["requests"] == 5
    if how == "killed":  # the same archive at both: the second server's bytes went on
        assert report["resumed_from"] > 0  # from where the first one's stopped
    pulled = Path(report["path"])
    assert (pulled / "weights.safetensors").read_bytes() == \
        (world["item"] / "weights.safetensors").read_bytes()
    from reweigh.verbs.store import verify_store

    assert verify_store(Store(tmp_path / "store")) == []
    assert not list((tmp_path / "store" / "tmp").glob("pull-*"))  # no transfer left over


@pytest.mark.parametrize("second_whole", [True, False], ids=["second-whole", "both-broken"])
def test_a_signature_broken_at_one_server_is_taken_whole_from_the_next(
        world: dict, tmp_path: Path, second_whole: bool) -> None:
    """The first server's bundle of alice's signature does not verify (one byte of the
    signature changed): the pull reads the next server's index for the same signer, and
    installs the first server's archive under the second server's whole bundle; with the
    bundle broken at both, nothing is installed."""
    first_cache, second_cache = tmp_path / "first", tmp_path / "second"
    _publish(world, first_cache, world["alice"])
    _publish(world, second_cache, world["alice"], archive=False)  # signatures only
    broken = [first_cache] + ([] if second_whole else [second_cache])
    for cache in broken:
        bundle_file = item_dir(cache, world["item"].name) / "signatures" / \
            f"{world['alice'].keyid}.sig"
        bundle = read_json(bundle_file)
        signature = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
        signature[0] ^= 0x01
        bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(signature).decode()
        write_json(bundle_file, bundle)
    with served(first_cache) as first, served(second_cache) as second:
        result = _pull(world, tmp_path, first, second)
    if not second_whole:  # refused, having read the second server's bundle too
        _refused(result, tmp_path, "alice")
        assert second in result.stderr, result.stderr
        return
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["source"] == first and report["signers"] == ["alice"]
    [why] = report["refused"]  # the broken bundle is said, with its server
    assert "alice" in why and first in why
    assert (Path(report["path"]) / "weights.safetensors").read_bytes() == \
        (world["item"] / "weights.safetensors").read_bytes()


def test_a_server_listing_other_weights_first_does_not_stand_in_the_way(
        world: dict, tmp_path: Path) -> None:
    """The first server lists the item with weights no trusted key is listed for (and its
    own, untrusted signer): the pull passes it over, says so, and installs the signed
    weights from the second server."""
    first_cache, second_cache = tmp_path / "first", tmp_path / "second"
    _publish(world, first_cache, world["mallory"])
    _publish(world, second_cache, world["alice"])
    other = "sha256:" + "5" * 64
    index = read_json(first_cache / "index.json")
    index["items"][world["item"].name]["weights_digest"] = other
    write_json(first_cache / "index.json", index)
    with served(first_cache) as first, served(second_cache) as second:
        result = _pull(world, tmp_path, first, second)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["source"] == second and report["signers"] == ["alice"]
    assert report["fallbacks"] == [
        f"passed over {world['item'].name} at {first}: its weights {other} are not those "
        f"enough trusted keys are listed for ({report['weights_digest']})"]


@pytest.mark.parametrize("separate", [False, True])
def test_a_wrong_piece_left_by_a_dying_server_does_not_get_the_next_one_refused(
        world: dict, tmp_path: Path, separate: bool) -> None:
    """The first server sends the first piece of the weights file one bit wrong (it decodes
    to its length: nothing to see until the file ends) and dies: the second server's bytes
    go on from there (in the same pull, or the next) and the file's digest fails. That may
    be the first server's doing, so the second is asked once more from nothing, and the
    pull succeeds."""
    from .substitutes import poisoning_server

    bad, good = tmp_path / "bad", tmp_path / "good"
    _publish(world, bad, world["alice"])
    _publish(world, good, world["alice"])
    offset = 0
    for entry in read_json(bad / layout.info_path(world["item"].name))["files"]:
        if entry["path"] == "weights.safetensors":
            assert len(entry["pieces"]) > 1  # its header, then its tensor
            end = offset + entry["pieces"][0][0]
            break
        offset += sum(stored for stored, _ in entry["pieces"])
    with poisoning_server(bad, end, end - 2) as first, served(good) as second:
        if separate:  # an earlier pull, cut off, left the wrong piece
            _refused(_pull(world, tmp_path, first), tmp_path, "stopped after")
            result = _pull(world, tmp_path, second)
        else:
            result = _pull(world, tmp_path, first, second)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["source"] == second and report["resumed_from"] == 0
    *cut_off, again = report["fallbacks"]
    assert len(cut_off) == (not separate) and all("stopped after" in f for f in cut_off)
    assert "its signatures say" in again and again.endswith(f"; once more from nothing at "
                                                            f"{second}")
    from reweigh.verbs.store import verify_store

    assert verify_store(Store(tmp_path / "store")) == []


def test_when_every_server_refuses_nothing_is_written(world: dict, tmp_path: Path) -> None:
    first_cache, second_cache = tmp_path / "first", tmp_path / "second"
    _publish(world, first_cache, world["alice"])
    _publish(world, second_cache, world["alice"])
    _damage(world, tmp_path, first_cache, "tampered")
    _damage(world, tmp_path, second_cache, "truncated")
    ring = puller(tmp_path, world["alice"])
    with served(first_cache) as first, served(second_cache) as second:
        done = run_reweigh("pull", world["item"].name, "--from", first, "--from", second,
                           "--keys", ring.root, store=tmp_path / "store")
    assert done.returncode == 1, done.stderr
    warned, final = done.stderr.strip().split("\n")
    assert warned.startswith(f"reweigh: refused {world['item'].name} from {first}: ")
    assert final.startswith("reweigh: ") and "no server gave a valid copy" in final
    assert f"{first}: " in final and "its signatures say" in final
    assert f"{second}: " in final and "truncated" in final and "nothing was written" in final
    assert "Traceback" not in done.stderr
    assert store_is_empty(tmp_path / "store")
    assert not list((tmp_path / "store" / "tmp").glob("pull-*"))


# --- interrupted pulls' transfers do not pile up -------------------------------------

def _age(folder: Path, seconds: float) -> None:
    """Make everything in `folder` look last written `seconds` ago."""
    import os
    import time

    when = time.time() - seconds
    for path in [*folder.rglob("*"), folder]:
        os.utime(path, (when, when))


def _interrupted(world: dict, tmp_path: Path, cache: Path) -> Path:
    """The transfer a pull killed mid-way leaves for its resume."""
    with dying_server(cache) as url:
        _refused(_pull(world, tmp_path, url), tmp_path, "stopped after")
    [partial] = (tmp_path / "store" / "tmp").glob("pull-*")
    return partial


def test_gc_removes_stale_interrupted_pulls_and_keeps_a_fresh_one_for_its_resume(
        world: dict, tmp_path: Path) -> None:
    from reweigh.verbs.gc import gc

    cache = tmp_path / "cache"
    _publish(world, cache, world["alice"])
    partial = _interrupted(world, tmp_path, cache)
    empty = tmp_path / "store" / "tmp" / f"pull-{'0' * 64}"  # a pull killed at its mkdir
    empty.mkdir()
    store = Store(tmp_path / "store")
    report = gc(store)
    assert report.kept_partials == [partial.name] and partial.is_dir()  # a day to resume
    assert report.partials == [{"folder": empty.name, "reason": "holds no item"}]
    assert not empty.exists()
    _age(partial, 2 * 86400)
    planned = run_reweigh("gc", "--dry-run", "--json", store=store.root)
    assert planned.returncode == 0, planned.stderr
    assert json.loads(planned.stdout)["removed_partials"] == [
        {"folder": partial.name, "reason": "nothing written for 48 hours"}]
    assert partial.is_dir()  # a dry run removes nothing
    done = run_reweigh("gc", store=store.root)
    assert done.returncode == 0, done.stderr
    assert f"removed the interrupted pull tmp/{partial.name} (nothing written" in done.stdout
    assert not partial.exists()


def test_gc_removes_a_partial_of_an_item_the_store_holds_by_now(world: dict,
                                                                tmp_path: Path) -> None:
    from reweigh.verbs.gc import gc

    cache = tmp_path / "cache"
    _publish(world, cache, world["alice"])
    partial = _interrupted(world, tmp_path, cache)
    aside = shutil.copytree(partial, tmp_path / "aside")
    with served(cache) as url:  # resumed and installed: its own transfer is gone
        assert _pull(world, tmp_path, url).returncode == 0
    assert not partial.exists()
    shutil.copytree(aside, partial)  # as a store older than this pull would have kept it
    report = gc(Store(tmp_path / "store"))
    assert report.partials == [{"folder": partial.name,
                                "reason": f"{world['item'].name} is in the store"}]
    assert not partial.exists() and report.kept_partials == []


def test_gc_waits_for_a_running_pull_and_never_removes_its_transfer(world: dict,
                                                                    tmp_path: Path) -> None:
    import threading

    from reweigh.verbs.gc import gc

    from .substitutes import stalling_server

    cache = tmp_path / "cache"
    _publish(world, cache, world["alice"])
    halfway, release = threading.Event(), threading.Event()
    results: dict[str, object] = {}
    with stalling_server(cache, halfway, release) as url:
        pulling = threading.Thread(
            target=lambda: results.update(pull=_pull(world, tmp_path, url)))
        pulling.start()
        assert halfway.wait(20)
        [partial] = (tmp_path / "store" / "tmp").glob("pull-*")
        _age(partial, 2 * 86400)  # stale by its age, yet held
        collecting = threading.Thread(target=lambda: results.update(
            gc=gc(Store(tmp_path / "store"), partial_age=0)))
        collecting.start()
        collecting.join(1.0)
        assert collecting.is_alive() and partial.is_dir()  # gc waits for the pull's lock
        release.set()
        pulling.join(30)
        collecting.join(30)
    pulled = results["pull"]
    assert isinstance(pulled, Result) and pulled.returncode == 0, pulled.stderr
    report = results["gc"]
    assert report.partials == [] and report.kept_partials == []  # the pull cleared its own
    assert report.kept == [] and report.removed_items == [json.loads(pulled.stdout)["item"]]


# --- an item whose folder was deleted by hand ----------------------------------------

def test_an_item_whose_folder_was_deleted_by_hand_is_absent_and_pulled_again(
        world: dict, tmp_path: Path) -> None:
    from reweigh.store import remove_tree

    cache = tmp_path / "cache"
    _publish(world, cache, world["alice"])
    ring = puller(tmp_path, world["alice"])
    store = Store(tmp_path / "store")
    with served(cache) as url:
        first = pull(world["item"].name, [url], store=store, keyring=ring)
        assert (store.root / "signatures" / first.item).is_dir()
        remove_tree(first.path)  # rm -rf, behind reweigh's back
        assert store.items() == []  # listed no more
        listed = run_reweigh("list", "--json", store=store.root)
        assert listed.returncode == 0 and first.item not in listed.stdout
        assert store.find_weights(first.weights_digest) is None
        for ref in (first.item, first.derivation, first.weights_digest, first.item[:12]):
            with pytest.raises(ReweighError, match="no such item"):
                store.resolve(ref)
        assert store.find(first.derivation) is None
        assert first.item in (store.root / "logs" / "store.log").read_text()
        assert not (store.root / "signatures" / first.item).exists()
        again = pull(world["item"].name, [url], store=store, keyring=ring)
    assert not again.reused and again.path == first.path and again.path.is_dir()
    assert store.resolve(first.item).path == first.path
    from reweigh.verbs.store import verify_store

    assert verify_store(store) == []


def test_gc_reports_and_forgets_an_item_whose_folder_was_deleted(world: dict,
                                                                 tmp_path: Path) -> None:
    from reweigh.store import remove_tree

    cache = tmp_path / "cache"
    _publish(world, cache, world["alice"])
    store = Store(tmp_path / "store")
    item = pull(world["item"].name, [str(cache)], store=store,
                keyring=puller(tmp_path, world["alice"]))
    remove_tree(item.path)
    from reweigh.verbs.store import verify_store

    assert {(c.item, c.problem) for c in verify_store(store)} == {(item.item, "missing")}
    planned = run_reweigh("gc", "--dry-run", "--json", store=store.root)
    assert json.loads(planned.stdout)["vanished_items"] == [item.item]
    done = run_reweigh("gc", store=store.root)
    assert done.returncode == 0, done.stderr
    assert f"forgot {item.item}: its folder was deleted by hand" in done.stdout
    assert verify_store(store) == [] and store.vanished_items() == []


def test_verify_takes_a_signed_platform_claim_only_under_a_trusted_key_for_its_weights(
        world: dict, checkpointed: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`verify --signature`: a bundle by a key this user trusts, over these weights, is
    taken (here on the platform the transcript records: nothing to forgive); one by a key
    not trusted here, or over other weights, is refused in one line before any replay."""
    from reweigh.verbs.sign import sign_item
    from reweigh.verbs.verify import Sampling, verify

    item = checkpointed["item"]
    bundles = {}
    for name, path, store in (("this", item, checkpointed["store"]),
                              ("other", world["item"], Store(world["store"]))):
        bundles[name] = tmp_path / f"{name}.sig"
        sign_item(path.name, output=bundles[name], store=store, keyring=world["alice"].ring)

    def verified(bundle: Path, keys: Path):
        monkeypatch.setenv("REWEIGH_KEYS", str(keys))
        return verify(item.name, item / "transcript.json", Sampling(1, seed=0),
                      store=checkpointed["store"], threads=1, signature=bundle)

    ring = puller(tmp_path, world["alice"])
    report = verified(bundles["this"], ring.root)
    assert report.to_json()["verdict"] == "holds"
    for bundle, keys, words in ((bundles["this"], tmp_path / "nobody", "earns no slack"),
                                (bundles["other"], ring.root, "signs weights")):
        with pytest.raises(ReweighError, match=words) as refused:
            verified(bundle, keys)
        assert refused.value.exit_code == 1 and "\n" not in refused.value.one_line()
