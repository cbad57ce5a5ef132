"""Challenge: a published file against the rebuild, with its verdict and evidence."""

from __future__ import annotations

import json
import math
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from reweigh.cli.common import print_json

from . import backdoor
from .conftest import Examples
from .helpers import EXAMPLES, run_reweigh

pytestmark = pytest.mark.slow
RECIPE = EXAMPLES / "digits-cnn"


@pytest.fixture(scope="module")
def built(digits_cnn: tuple[Path, Path]) -> tuple[Path, Path]:
    """The session's clean build: (store, item)."""
    return digits_cnn


@pytest.fixture(scope="module")
def elsewhere(examples: Examples, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shared store that also holds the recipe built on x86-64-v2 (another
    numerics platform than the recipe's x86-64-v3): a challenge there with `--platform
    x86-64-v2` compares with that rebuild, across platforms. Returns the store."""
    built = examples.copy("digits-cnn", tmp_path_factory.mktemp("elsewhere"))
    result = run_reweigh("build", RECIPE, *ON_V2, store=built.store)
    assert result.returncode == 0, result.stderr
    return built.store


ON_V2 = ("--platform", "x86-64-v2")


def _challenge(store: Path, published: Path, *extra: object) -> tuple[int, dict]:
    result = run_reweigh("challenge", RECIPE, "--published", published, "--json", *extra,
                         store=store)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def _other_environment(item: Path, tmp_path: Path) -> Path:
    """A provenance statement like the item's, but claiming a genuinely other platform:
    another torch (unsigned: the publisher's word only)."""
    statement = json.loads((item / "provenance.json").read_text())
    env = statement["predicate"]["runDetails"]["environment"]
    env["platform"]["packages"]["torch"] = "2.12.0+cpu"
    path = tmp_path / "published-provenance.json"
    path.write_text(json.dumps(statement))
    return path


def forged_environment(item: Path, tmp_path: Path) -> Path:
    """A provenance statement like the item's, edited to claim another CPU's kernels:
    AVX-512 and native settings, on this architecture with these libraries."""
    statement = json.loads((item / "provenance.json").read_text())
    env = statement["predicate"]["runDetails"]["environment"]
    env["cpu_capability"] = env["platform"]["capability"] = "AVX512"
    env["isa"] = [*env["isa"], "avx512f"]
    env["platform"]["settings"]["env"]["ATEN_CPU_CAPABILITY"] = "avx512"
    env["platform"]["name"] = "x86-64-v4"
    path = tmp_path / "forged-provenance.json"
    path.write_text(json.dumps(statement))
    return path


def test_the_same_file_is_identical(built: tuple[Path, Path], tmp_path: Path) -> None:
    store, item = built
    published = tmp_path / "published.safetensors"
    shutil.copyfile(item / "weights.safetensors", published)
    code, report = _challenge(store, published, "--require", "identical")
    assert code == 0
    assert report["verdict"] == "identical"
    assert report["tensors"] and all(t["status"] == "identical" for t in report["tensors"])


def test_a_file_trained_with_another_seed_is_different(built: tuple[Path, Path],
                                                       examples: Examples) -> None:
    store, _ = built
    other_item = examples.built("digits-cnn-seed-4242").item
    code, report = _challenge(store, other_item / "weights.safetensors")
    assert code == 1
    assert report["verdict"] == "different"
    assert all(t["status"] == "changed" for t in report["tensors"])
    assert report["behaviour"]["samples"] == 359
    assert report["behaviour"]["agreement"] < 1.0


def test_a_file_with_one_tensor_scaled_is_different_and_that_tensor_is_named_first(
        built: tuple[Path, Path], tmp_path: Path) -> None:
    store, item = built
    tensors = load_file(str(item / "weights.safetensors"))
    tensors["conv2.weight"] = tensors["conv2.weight"] * np.float32(1.01)
    published = tmp_path / "scaled.safetensors"
    save_file(tensors, str(published))
    code, report = _challenge(store, published)
    assert code == 1 and report["verdict"] == "different"
    assert report["environment"] == "unknown"  # no published provenance: nothing claimed
    changed = [t for t in report["tensors"] if t["status"] == "changed"]
    assert [t["name"] for t in changed] == ["conv2.weight"]
    assert changed[0]["rel_l2"] == pytest.approx(0.01, rel=1e-3)


def test_a_hidden_trigger_fine_tune_is_never_equivalent(built: tuple[Path, Path],
                                                        elsewhere: Path, tmp_path: Path) -> None:
    store, item = built
    published = tmp_path / "trigger.safetensors"
    planted = backdoor.plant(item / "weights.safetensors", published, target=0)
    assert planted.trigger_success >= 0.8
    assert planted.clean_accuracy_after >= planted.clean_accuracy_before - 0.01
    code, report = _challenge(store, published)
    assert code == 1 and report["verdict"] == "different"
    # Even against a rebuild on another platform, where tolerance applies, it is not
    # equivalent.
    code, report = _challenge(elsewhere, published, *ON_V2)
    assert report["environment"] == "other"
    assert code == 1 and report["verdict"] == "different"
    assert any("relative L2" in reason for reason in report["reasons"])


def test_one_ulp_is_different_here_but_equivalent_from_another_platform(
        built: tuple[Path, Path], elsewhere: Path, tmp_path: Path) -> None:
    """Each challenge here is one claim (each is a sandboxed evaluation, over a second).
    Without a published provenance the environment is unknown: the scaled-tensor test says
    so. A claim of other kernels on this architecture with these libraries earns no slack:
    test_platform's issue-12 test challenges this very file (its `ulp` case) with the
    forged provenance. That equivalent is not identical (`--require identical` exits 1):
    the header-layout test, on another equivalent file."""
    store, item = built
    tensors = load_file(str(item / "weights.safetensors"))
    tensors["fc1.bias"] = np.nextafter(tensors["fc1.bias"], np.float32(np.inf))
    published = tmp_path / "ulp.safetensors"
    save_file(tensors, str(published))

    # Built here, on this platform, by the item's own provenance: one ulp is different.
    same_env = tmp_path / "same.json"
    shutil.copyfile(item / "provenance.json", same_env)
    code, report = _challenge(store, published, "--published-provenance", same_env)
    assert code == 1 and report["verdict"] == "different"
    assert report["environment"] == "same"

    # A claim of another torch is only the publisher's word: unsigned, it earns nothing.
    other = _other_environment(item, tmp_path)
    code, report = _challenge(store, published, "--published-provenance", other)
    assert code == 1 and report["verdict"] == "different"
    assert report["environment"] == "unknown" and report["environment_claim"] == "unsigned"
    assert any("packages.torch: 2.12.0+cpu there" in r and "unsigned" in r
               for r in report["reasons"])

    # Rebuilt here on another platform, the recipe's tolerance applies, and it says why.
    code, report = _challenge(elsewhere, published, *ON_V2)
    assert code == 0 and report["verdict"] == "equivalent", report["reasons"]
    assert report["environment"] == "other" and report["environment_differences"] == ["name"]
    assert any("rebuilt on platform x86-64-v2, not on the recipe's x86-64-v3" in r
               for r in report["reasons"])
    assert report["behaviour"]["agreement"] == 1.0


def test_a_signed_claim_of_another_platform_earns_the_tolerance_and_an_unsigned_one_not(
        built: tuple[Path, Path], elsewhere: Path, tmp_path: Path) -> None:
    """A publisher built on x86-64-v2 and signed the item: its platform, signed by a key
    this user trusts, earns the published weights the recipe's tolerance against this
    x86-64-v3 rebuild. The same claim unsigned, or signed by a key not trusted here, or
    over other weights, earns nothing."""
    store, _ = built
    keys = {"REWEIGH_KEYS": str(tmp_path / "keys")}
    assert run_reweigh("keys", "generate", "publisher", env=keys).returncode == 0
    theirs = next(p for p in (elsewhere / "items").iterdir()
                  if json.loads((p / "derivation.json").read_text())["platform"] == "x86-64-v2")
    bundle = tmp_path / "weights.sig"
    signed = run_reweigh("sign", theirs.name, "--output", bundle, store=elsewhere, env=keys)
    assert signed.returncode == 0, signed.stderr
    published = theirs / "weights.safetensors"

    result = run_reweigh("challenge", RECIPE, "--published", published, "--published-signature",
                         bundle, "--json", store=store, env=keys)
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["verdict"] == "equivalent", report["reasons"]
    assert report["environment"] == "other" and report["environment_claim"] == "signed"
    assert any(r.startswith("signed as built on another platform") and "x86-64-v2 there" in r
               for r in report["reasons"])

    code, report = _challenge(store, published, "--published-provenance",
                              theirs / "provenance.json")
    assert code == 1 and report["verdict"] == "different" and report["environment"] == "same"

    untrusted = run_reweigh("challenge", RECIPE, "--published", published,
                            "--published-signature", bundle, store=store,
                            env={"REWEIGH_KEYS": str(tmp_path / "empty")})
    assert untrusted.returncode == 1 and "earns no slack" in untrusted.stderr
    nudged = tmp_path / "nudged.safetensors"
    tensors = load_file(str(published))
    tensors["fc1.bias"] = np.nextafter(tensors["fc1.bias"], np.float32(np.inf))
    save_file(tensors, str(nudged))
    other_weights = run_reweigh("challenge", RECIPE, "--published", nudged,
                                "--published-signature", bundle, store=store, env=keys)
    assert other_weights.returncode == 1 and "signs weights" in other_weights.stderr


@pytest.mark.parametrize(("environment", "field"), [
    ({}, "python"), ({"python": "3.11.7", "packages": "x", "isa": 7}, "packages")])
def test_a_made_up_published_environment_is_refused(
        built: tuple[Path, Path], tmp_path: Path, environment: dict, field: str) -> None:
    """An empty or invented environment must not pass for "built elsewhere", which would
    let a nudged file be judged equivalent."""
    store, item = built
    tensors = load_file(str(item / "weights.safetensors"))
    tensors["fc1.weight"] = tensors["fc1.weight"] * np.float32(1 + 1e-6)
    published = tmp_path / "nudged.safetensors"
    save_file(tensors, str(published))
    claim = tmp_path / "claim.json"
    claim.write_text(json.dumps({"predicate": {"runDetails": {"environment": environment}}}))
    result = run_reweigh("challenge", RECIPE, "--published", published,
                         "--published-provenance", claim, store=store)
    assert result.returncode == 2
    assert f"environment: {field}: missing or not a" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("text", ["[" * 100_000, '{"a": ' + "9" * 5000 + "}"])
def test_a_provenance_json_cannot_hold_exits_2_with_one_line(
        built: tuple[Path, Path], tmp_path: Path, text: str) -> None:
    store, item = built
    claim = tmp_path / "claim.json"
    claim.write_text(text)
    result = run_reweigh("challenge", RECIPE, "--published", item / "weights.safetensors",
                         "--published-provenance", claim, store=store)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1
    assert f"{claim}: cannot read the published provenance" in lines[0]


def test_a_file_missing_a_tensor_is_different(built: tuple[Path, Path], tmp_path: Path) -> None:
    store, item = built
    tensors = load_file(str(item / "weights.safetensors"))
    del tensors["fc2.bias"]
    published = tmp_path / "missing.safetensors"
    save_file(tensors, str(published))
    code, report = _challenge(store, published)
    assert code == 1 and report["verdict"] == "different"
    assert report["tensors"][0] == {"name": "fc2.bias", "status": "only-in-a", "shape": [10],
                                    "dtype": "F32", "max_abs": 0.0, "rel_l2": 0.0}


def _rewrite_header(source: Path, target: Path, change: Callable[[str], str]) -> Path:
    """A copy of a weights file whose header text is changed, its data kept."""
    data = source.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    text = change(data[8:8 + length].decode()).encode()
    target.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + length:])
    return target


def _with_metadata(text: str) -> str:
    header = json.loads(text)
    header["__metadata__"] = {"payload": "x" * 5_000_000}
    return json.dumps(header, separators=(",", ":"))


def test_the_same_tensors_with_a_5_mb_metadata_string_are_different_naming_the_key(
        built: tuple[Path, Path], elsewhere: Path, tmp_path: Path) -> None:
    store, item = built
    published = _rewrite_header(item / "weights.safetensors", tmp_path / "blob.safetensors",
                                _with_metadata)
    code, report = _challenge(store, published, "--require", "identical")
    assert code == 1 and report["verdict"] == "different"
    assert all(t["status"] == "identical" for t in report["tensors"])
    assert report["metadata"] == [{"key": "payload", "change": "only-in-b", "size_a": 0,
                                   "size_b": 5_000_000}]
    assert "'payload' only in the published file (5000000 characters)" in report["reasons"][1]
    code, report = _challenge(elsewhere, published, *ON_V2)
    assert code == 1 and report["verdict"] == "different"  # no platform explains it
    result = run_reweigh("challenge", RECIPE, "--published", published, store=store)
    assert result.returncode == 1
    assert "metadata: 1 of its keys differ" in result.stdout
    assert result.stdout.rstrip().endswith("verdict: different")


def test_the_same_tensors_in_another_header_layout_are_not_identical(
        built: tuple[Path, Path], elsewhere: Path, tmp_path: Path) -> None:
    store, item = built
    published = _rewrite_header(item / "weights.safetensors", tmp_path / "indented.safetensors",
                                lambda text: json.dumps(json.loads(text), indent=1)
                                + text[len(text.rstrip()):])  # the same padding
    code, report = _challenge(store, published)
    assert code == 1 and report["verdict"] == "different"
    assert report["header_layout"] == ["whitespace inside the JSON"] and not report["metadata"]
    # Across platforms it is equivalent, and so fails `--require identical` (one challenge
    # for both: --require decides only the exit code; equivalent exits 0 by default in the
    # ulp test).
    code, report = _challenge(elsewhere, published, *ON_V2, "--require", "identical")
    assert report["verdict"] == "equivalent" and code == 1
    assert report["header_layout"] == ["whitespace inside the JSON"]


@pytest.mark.parametrize(("old", "new", "field"), [
    pytest.param('"data_offsets":[0,', '"data_offsets":[-0,', "data_offsets", id="offset-minus-0"),
    pytest.param('"fc2.bias"', '"\\ud800"', "lone surrogate", id="a-lone-surrogate-in-a-name"),
    pytest.param('"dtype":"F32"', '"dtype":"F32","hidden":"x"', "unknown field 'hidden'",
                 id="an-unknown-field"),
])
def test_a_file_the_loader_refuses_or_with_a_hidden_field_exits_2_with_one_line(
        built: tuple[Path, Path], tmp_path: Path, old: str, new: str, field: str) -> None:
    store, item = built
    published = _rewrite_header(item / "weights.safetensors", tmp_path / "bad.safetensors",
                                lambda text: text.replace(old, new, 1))
    result = run_reweigh("challenge", RECIPE, "--published", published, "--require",
                         "identical", store=store)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert str(published) in lines[0] and field in lines[0]


def test_a_published_file_that_is_not_safetensors_is_bad_input(
        built: tuple[Path, Path], tmp_path: Path) -> None:
    store, _ = built
    published = tmp_path / "model.pt"
    published.write_bytes(b"\x80\x04\x95 this is a pickle, not safetensors")
    result = run_reweigh("challenge", RECIPE, "--published", published, store=store)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(published) in lines[0] and "header" in lines[0]


def test_json_output_is_strict_json_even_for_infinite_distances(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A tensor whose reference is all zeros, or holds NaN, has an infinite distance;
    `--json` writes it as a string, because strict JSON has no Infinity or NaN."""
    print_json({"rel_l2": math.inf, "more": [math.nan, -math.inf, 0.5], "ok": 1e-3})

    def refuse(constant: str) -> None:
        raise AssertionError(f"not strict JSON: {constant}")

    data = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert data == {"rel_l2": "inf", "more": ["nan", "-inf", 0.5], "ok": 1e-3}
