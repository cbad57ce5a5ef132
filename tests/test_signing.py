"""Signature bundles: verified by the real OpenSSF Model Signing tool, read strictly
(fuzzed), and pulled as imported items too."""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from reweigh.cache import layout
from reweigh.errors import SignatureError
from reweigh.keys import KeyRing
from reweigh.signing import bundle_claim, read_claim, sign, verify
from reweigh.store import Store
from reweigh.verbs.importing import import_weights
from reweigh.verbs.publish import publish
from reweigh.verbs.pull import pull
from reweigh.verbs.sign import item_claim, sign_item

from .substitutes import copy_item


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small safetensors file imported into a store (no training), and two keys."""
    root = tmp_path_factory.mktemp("signing")
    source = root / "tiny.safetensors"
    save_file({"w": np.arange(1000, dtype=np.float32), "b": np.ones(7, np.float32)}, source)
    store = Store(root / "store")
    item = import_weights(source, name="tiny", version="1.0", store=store).path
    ring = KeyRing(root / "keys")
    ring.generate("alice")
    ring.generate("pat", algorithm="ecdsa-p256")
    return {"root": root, "store": store, "item": item, "ring": ring}


def _model_signing(*args: object) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("model_signing")
    return subprocess.run([sys.executable, "-m", "model_signing", *map(str, args)],
                          capture_output=True, text=True, timeout=120, check=False)


def test_model_signing_verifies_a_p256_bundle_over_the_item_and_refuses_a_changed_file(
        imported: dict, tmp_path: Path) -> None:
    """The real tool (its `verify key` command, no network) checks the signature with
    the public key and every file of the item against the signed list."""
    report = sign_item(imported["item"].name, key="pat", output=tmp_path / "item.sig",
                       store=imported["store"], keyring=imported["ring"])
    public = tmp_path / "pat.pub"
    public.write_bytes(imported["ring"].lookup(report.keyid).key.pem)
    ok = _model_signing("verify", "key", "--signature", tmp_path / "item.sig",
                        "--public_key", public, imported["item"])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    changed = copy_item(imported["item"], tmp_path / "changed")
    (changed / "MODEL_CARD.md").write_text("a different card")
    refused = _model_signing("verify", "key", "--signature", tmp_path / "item.sig",
                             "--public_key", public, changed)
    assert refused.returncode != 0 and "MODEL_CARD.md" in refused.stdout + refused.stderr


def test_model_signing_reads_an_ed25519_bundles_statement_as_its_own_manifest(
        imported: dict, tmp_path: Path) -> None:
    """Model Signing's key verifier takes NIST curves only, so for ed25519 it is its
    statement reader and its hashing that agree with ours (the signature is checked by
    reweigh, over the same DSSE encoding)."""
    pytest.importorskip("model_signing")
    from model_signing import hashing
    from model_signing._signing.signing import dsse_payload_to_manifest

    report = sign_item(imported["item"].name, key="alice", output=tmp_path / "item.sig",
                       store=imported["store"], keyring=imported["ring"])
    bundle = json.loads((tmp_path / "item.sig").read_text())
    manifest = dsse_payload_to_manifest(json.loads(base64.b64decode(
        bundle["dsseEnvelope"]["payload"])))
    theirs = hashing.Config().use_file_serialization(hashing_algorithm="sha256",
                                                     allow_symlinks=False)
    assert manifest == theirs.hash(imported["item"])
    key = imported["ring"].lookup(report.keyid).key
    assert verify((tmp_path / "item.sig").read_bytes(), key, "bundle").claim.item == \
        imported["item"].name


def test_a_bundle_signed_by_another_key_or_altered_does_not_verify(imported: dict) -> None:
    store, ring = imported["store"], imported["ring"]
    claim = item_claim(store, store.resolve(imported["item"].name))
    bundle = sign(claim, ring.signer("alice"), 0)
    pat = ring.own()[1].key
    with pytest.raises(SignatureError, match="not"):
        verify(bundle, pat, "bundle")
    data = json.loads(bundle)
    payload = json.loads(base64.b64decode(data["dsseEnvelope"]["payload"]))
    payload["predicate"]["reweigh"]["role"] = "rebuilder"
    data["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    alice = ring.own()[0].key
    with pytest.raises(SignatureError, match="does not hold"):
        verify(json.dumps(data).encode(), alice, "bundle")


def test_an_imported_item_is_published_and_pulled_like_a_built_one(imported: dict,
                                                                   tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    publish([imported["item"].name], cache, sign_with="alice", store=imported["store"],
            keyring=imported["ring"])
    store = Store(tmp_path / "store")
    report = pull("tiny", [str(cache)], store=store, keyring=imported["ring"])
    assert (report.path / "weights.safetensors").read_bytes() == \
        (imported["item"] / "weights.safetensors").read_bytes()
    assert store.import_record(store.resolve("tiny")) is not None  # still says imported


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_change_to_a_signed_payload_is_refused_in_one_error(imported: dict,
                                                                data: st.DataObject) -> None:
    """Mutated payloads under the original signature: never verified, never a crash; the
    reader alone refuses or reads them (it is a syntax check; the signature decides)."""
    store, ring = imported["store"], imported["ring"]
    claim = item_claim(store, store.resolve(imported["item"].name))
    bundle = json.loads(sign(claim, ring.signer("alice"), 0))
    payload = base64.b64decode(bundle["dsseEnvelope"]["payload"])
    position = data.draw(st.integers(0, len(payload) - 1))
    replacement = data.draw(st.binary(min_size=0, max_size=3))
    mutated = payload[:position] + replacement + payload[position + 1:]
    with contextlib.suppress(SignatureError):
        read_claim(mutated, "payload")
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(mutated).decode()
    if mutated != payload:
        with pytest.raises(SignatureError):
            verify(json.dumps(bundle).encode(), ring.own()[0].key, "bundle")


@settings(max_examples=150, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=12))
def test_cache_records_of_any_shape_are_refused_or_read(value: object) -> None:
    text = json.dumps(value).encode()
    for reader in (layout.read_index, layout.read_info, bundle_claim):
        with contextlib.suppress(SignatureError):
            reader(text, "record")


def test_a_claim_whose_sizes_disagree_with_its_resources_is_refused(imported: dict) -> None:
    store, ring = imported["store"], imported["ring"]
    claim = item_claim(store, store.resolve(imported["item"].name))
    files = tuple(replace(f, size=-1) if f.path == "weights.safetensors" else f
                  for f in claim.files)
    with pytest.raises(SignatureError, match="not a size"):
        bundle_claim(sign(replace(claim, files=files), ring.signer("alice"), 0), "bundle")


def test_gc_removes_a_pulled_items_kept_signatures_with_it(imported: dict,
                                                          tmp_path: Path) -> None:
    from reweigh.verbs.gc import gc

    cache = tmp_path / "cache"
    publish([imported["item"].name], cache, sign_with="alice", store=imported["store"],
            keyring=imported["ring"])
    store = Store(tmp_path / "store")
    pull("tiny", [str(cache)], store=store, keyring=imported["ring"])
    kept = tmp_path / "store" / "signatures" / imported["item"].name
    assert len(list(kept.glob("*.sig"))) == 1
    gc(store, grace=0)
    assert store.items() == [] and not kept.exists()


def test_a_signed_platform_claim_is_read_only_under_a_trusted_key_for_those_weights(
        imported: dict, tmp_path: Path) -> None:
    from reweigh.verbs.sign import signed_platform

    report = sign_item(imported["item"].name, key="alice", output=tmp_path / "item.sig",
                       store=imported["store"], keyring=imported["ring"])
    weights = imported["store"].resolve(imported["item"].name).weights_digest
    with pytest.raises(SignatureError, match="claims no platform"):  # an import has none
        signed_platform(tmp_path / "item.sig", weights, imported["ring"])
    with pytest.raises(SignatureError, match="not the published file's"):
        signed_platform(tmp_path / "item.sig", "sha256:" + "0" * 64, imported["ring"])
    stranger = KeyRing(tmp_path / "stranger")
    with pytest.raises(SignatureError, match="not trusted"):
        signed_platform(tmp_path / "item.sig", weights, stranger)
    assert report.keyid == imported["ring"].own()[0].key.keyid


@pytest.fixture(scope="module")
def packed(imported: dict) -> dict:
    """The imported item published: its info record and archive bytes."""
    cache = imported["root"] / "packed-cache"
    publish([imported["item"].name], cache, sign_with="alice", store=imported["store"],
            keyring=imported["ring"])
    name = imported["item"].name
    return {"info": json.loads((cache / layout.info_path(name)).read_text()),
            "archive": (cache / layout.archive_path(name)).read_bytes()}


_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2, 1 << 24)
                       | st.text(max_size=4), lambda inner: st.lists(inner, max_size=3),
                       max_leaves=8)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_an_info_records_pieces_of_any_value_are_refused_or_read(packed: dict,
                                                                 data: st.DataObject) -> None:
    info = json.loads(json.dumps(packed["info"]))
    entry = data.draw(st.sampled_from(info["files"]))
    entry["pieces"] = data.draw(_VALUES)
    if data.draw(st.booleans()):
        info["archive"]["size"] = data.draw(_VALUES)
    with contextlib.suppress(SignatureError):
        read = layout.read_info(json.dumps(info).encode(), "record")
        assert read.archive is not None
        assert [sum(n for _, n in p) for p in read.archive.pieces] == \
            [f.size for f in read.files]  # what it reads adds up, whatever it was given


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_an_archive_changed_anywhere_unpacks_to_the_signed_files_or_is_refused(
        packed: dict, data: st.DataObject) -> None:
    """Bytes flipped, cut out or added anywhere in the archive: the unpacker refuses it in
    one SignatureError, or what it wrote is exactly the signed files (a change that
    decodes to the same bytes)."""
    import tempfile

    from reweigh.cache.archive import Unpacker

    info = layout.read_info(json.dumps(packed["info"]).encode(), "record")
    assert info.archive is not None
    archive = packed["archive"]
    at = data.draw(st.integers(0, len(archive) - 1))
    changed = archive[:at] + data.draw(st.binary(max_size=3)) + archive[at + 1:]
    with tempfile.TemporaryDirectory() as folder:
        unpacker = Unpacker(Path(folder), info.files, info.archive, "archive")
        try:
            unpacker.unpack(iter([changed[:at], changed[at:]]))
        except SignatureError:
            return
        assert unpacker.digests == {f.path: f.digest for f in info.files}


def test_an_unpacking_cut_short_inside_a_file_goes_on_from_its_last_whole_piece(
        packed: dict, tmp_path: Path) -> None:
    from reweigh.cache.archive import Unpacker

    info = layout.read_info(json.dumps(packed["info"]).encode(), "record")
    assert info.archive is not None
    archive, pieces = packed["archive"], info.archive.pieces
    index = next(i for i, p in enumerate(pieces) if len(p) > 2)  # the weights: 3 tensors
    two = info.archive.starts()[index] + pieces[index][0][0] + pieces[index][1][0]
    first = Unpacker(tmp_path, info.files, info.archive, "archive")
    with pytest.raises(SignatureError, match="truncated"):  # cut 3 bytes into a piece
        first.unpack(iter([archive[:two + 3]]))
    second = Unpacker(tmp_path, info.files, info.archive, "archive")
    assert second.start.file == index and second.start.piece == 2
    assert second.start.offset == two
    second.unpack(iter([archive[two:]]))
    assert second.digests == {f.path: f.digest for f in info.files}
    changed = tmp_path / info.files[0].path  # a finished file changed meanwhile...
    changed.write_bytes(b"#" + changed.read_bytes()[1:])
    third = Unpacker(tmp_path, info.files, info.archive, "archive")
    assert (third.start.file, third.start.piece, third.start.offset) == (0, 0, 0)
    assert not (tmp_path / info.files[-1].path).exists()  # ...so all after it comes again
