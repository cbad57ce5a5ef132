"""The numerics platform (issue 12): one digest per recipe whatever CPU the machine
emulates and whatever the thread count; claims of other kernels earn no slack; a
genuinely other platform is still judged by the recipe's tolerance, and says so."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from reweigh import numerics
from reweigh.derivation import digest_of, read_record
from reweigh.digest import file_digest
from reweigh.errors import RecipeError, UsageError
from reweigh.numerics import EnvRelation, relate
from reweigh.recipe import parse_recipe

from .conftest import AVX2, AVX512, Examples
from .helpers import EXAMPLES, run_reweigh, variant
from .test_challenge import forged_environment

X86_V4 = numerics.LEVELS["x86-64-v4"].flags | {"avx512_vnni"}
X86_V3 = numerics.LEVELS["x86-64-v3"].flags


# --- which level a machine offers, and what a name stands for ---------------------------------

@pytest.mark.parametrize(("flags", "env", "rank", "limit"), [
    (X86_V4, {}, 4, None),
    (X86_V3, {}, 3, "lacks avx512bw, avx512cd, avx512dq, avx512f, avx512vl"),
    (X86_V4, {"ATEN_CPU_CAPABILITY": "avx2"}, 3, "ATEN_CPU_CAPABILITY=avx2 allows no more"),
    (X86_V4, {"ATEN_CPU_CAPABILITY": "default"}, 2, "ATEN_CPU_CAPABILITY=default"),
    (X86_V4, {"ONEDNN_MAX_CPU_ISA": "avx2"}, 3, "ONEDNN_MAX_CPU_ISA=avx2"),
    (X86_V4, {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}, 2, "MKL_ENABLE_INSTRUCTIONS=SSE4_2"),
    (X86_V4, {"ATEN_CPU_CAPABILITY": "avx512"}, 4, None),  # a cap above the machine: no cap
    (X86_V3 - {"fma"}, {}, 2, "lacks fma (x86-64-v3)"),
    (frozenset(), {}, 0, "lacks"),
])
def test_the_level_a_machine_offers_is_its_flags_lowered_by_any_cap(
        flags: frozenset[str], env: dict[str, str], rank: int, limit: str | None) -> None:
    found, limits = numerics.offered("x86_64", flags, env)
    assert found == rank
    assert (limit is None and not limits) or any(limit in line for line in limits)


def test_portable_is_x86_64_v3_pinned_in_every_library() -> None:
    assert numerics.default_name("portable", "x86_64") == "x86-64-v3"
    platform = numerics.resolve("x86-64-v3", "x86_64", X86_V4, {"ATEN_CPU_CAPABILITY": "avx512"})
    assert platform.env == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                            "DNNL_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE",
                            "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    assert platform.mkl_threads == 1
    # native keeps the machine's kernels, and only passes on what the user capped
    native = numerics.resolve("native", "x86_64", X86_V4, {"ATEN_CPU_CAPABILITY": "avx2"})
    assert native.env == {"ATEN_CPU_CAPABILITY": "avx2"} and native.mkl_threads is None


@pytest.mark.parametrize(("name", "arch", "flags", "env", "message"), [
    ("x86-64-v4", "x86_64", X86_V3, {}, "cannot build on platform x86-64-v4: the CPU lacks"),
    ("x86-64-v3", "x86_64", X86_V4, {"ATEN_CPU_CAPABILITY": "default"},
     "ATEN_CPU_CAPABILITY=default allows no more than x86-64-v2"),
    ("x86-64-v3", "aarch64", frozenset({"asimd"}), {}, "is for x86_64 machines"),
    ("x86-64-v9", "x86_64", X86_V4, {}, "is not one of portable, native, x86-64-v2"),
])
def test_a_platform_this_machine_cannot_run_is_refused_saying_why(
        name: str, arch: str, flags: frozenset[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError) as caught:
        numerics.resolve(name, arch, flags, env)
    assert message in caught.value.message


def _recipe(build: str) -> dict[str, Any]:
    return {"name": "r", "version": "1.0.0", "seed": 1,
            "license": {"code": "MIT", "data": "MIT", "weights": "MIT"},
            "build": {"entry": "train.py:train", **json.loads(build)}}


@pytest.mark.parametrize(("build", "field", "reason"), [
    ('{"platform": "native"}', "build.platform_reason", "say why"),
    ('{"platform": "native", "platform_reason": "  "}', "build.platform_reason", "say why"),
    ('{"platform": "avx2"}', "build.platform", "is not one of"),
    ('{"platform": 3}', "build.platform", "must be a string"),
])
def test_a_recipe_names_a_known_platform_and_gives_a_reason_to_go_native(
        build: str, field: str, reason: str) -> None:
    with pytest.raises(RecipeError) as caught:
        parse_recipe(_recipe(build), Path("/r"), "recipe.toml")
    assert field in str(caught.value) and reason in str(caught.value)
    kept = parse_recipe(_recipe('{"platform": "native", "platform_reason": "GPU kernels"}'),
                        Path("/r"), "recipe.toml")
    assert kept.platform == "native" and kept.platform_reason == "GPU kernels"
    assert parse_recipe(_recipe("{}"), Path("/r"), "recipe.toml").platform == "portable"


# --- how a claimed platform relates to the one measured here ----------------------------------

LOCAL = numerics.record("x86-64-v3", {
    "arch": "x86_64", "device": "cpu", "python": "3.11.7",
    "packages": {"torch": "2.13.0+cpu", "numpy": "2.4.6", "reweigh": "0.1.0"},
    "blas": {"torch": "mkl 2024.2", "numpy": "scipy-openblas 0.3.31"},
    "settings": {"env": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE"},
                 "torch": {"mkl_threads": 1}},
    "capability": "AVX2"})


def _claim(**changes: Any) -> dict[str, Any]:
    claim = copy.deepcopy(LOCAL)
    for path, value in changes.items():
        *parents, last = path.split("__")
        here = claim
        for key in parents:
            here = here[key]
        here[last] = value
    return claim


@pytest.mark.parametrize(("claim", "recipe", "signed", "relation", "phrase"), [
    pytest.param(None, "x86-64-v3", False, EnvRelation.UNKNOWN, None, id="no-claim"),
    pytest.param(_claim(), "x86-64-v3", False, EnvRelation.SAME, "built on this platform",
                 id="the-same-platform"),
    pytest.param(_claim(digest="sha256:" + "0" * 64), "x86-64-v3", False, EnvRelation.SAME,
                 "built on this platform", id="a-wrong-digest-is-recomputed-not-believed"),
    # the attack of issue 12: other kernels claimed on this architecture, these libraries
    pytest.param(_claim(capability="AVX512"), "x86-64-v3", False, EnvRelation.SAME,
                 "earns no slack", id="claims-avx512-kernels"),
    pytest.param(_claim(name="x86-64-v4", settings__env__ATEN_CPU_CAPABILITY="avx512"),
                 "x86-64-v3", False, EnvRelation.SAME, "earns no slack",
                 id="claims-another-level"),
    pytest.param(_claim(name="native", cpu_model="Other CPU", isa=["avx2"]), "x86-64-v3",
                 False, EnvRelation.SAME, "earns no slack", id="claims-native-kernels"),
    # genuinely other platforms, but unsigned: the publisher's word, which earns nothing
    pytest.param(_claim(packages__torch="2.12.0+cpu"), "x86-64-v3", False,
                 EnvRelation.UNKNOWN, "packages.torch: 2.12.0+cpu there, 2.13.0+cpu here",
                 id="another-torch-unsigned"),
    pytest.param(_claim(arch="aarch64"), "x86-64-v3", False, EnvRelation.UNKNOWN,
                 "unsigned, the claim earns no slack", id="another-architecture-unsigned"),
    # signed by a trusted key: the recipe's tolerance applies, and the reason says which
    pytest.param(_claim(packages__torch="2.12.0+cpu"), "x86-64-v3", True, EnvRelation.OTHER,
                 "packages.torch: 2.12.0+cpu there, 2.13.0+cpu here", id="another-torch-signed"),
    pytest.param(_claim(device="cuda"), "x86-64-v3", True, EnvRelation.OTHER,
                 "device: cuda there, cpu here", id="a-gpu-signed"),
    pytest.param(_claim(name="x86-64-v2", capability="DEFAULT"), "x86-64-v3", True,
                 EnvRelation.OTHER, "name: x86-64-v2 there, x86-64-v3 here",
                 id="another-level-signed"),
    pytest.param(_claim(), "x86-64-v3", True, EnvRelation.SAME, "built on this platform",
                 id="signed-this-platform-is-still-bit-for-bit"),
    # what this machine knows: it rebuilt on another platform than the recipe's
    pytest.param(_claim(), "x86-64-v4", False, EnvRelation.OTHER,
                 "rebuilt on platform x86-64-v3, not on the recipe's x86-64-v4",
                 id="rebuilt-here-on-another-platform-than-the-recipes"),
])
def test_only_a_local_or_signed_difference_of_platform_earns_slack(
        claim: dict[str, Any] | None, recipe: str, signed: bool, relation: EnvRelation,
        phrase: str | None) -> None:
    found, _, reasons = relate(LOCAL, claim, recipe, signed)
    assert found is relation
    assert phrase is None or any(phrase in reason for reason in reasons), reasons


def test_between_two_native_builds_the_cpu_model_is_a_genuine_difference() -> None:
    local = numerics.record("native", {**{k: v for k, v in LOCAL.items()
                                          if k not in ("name", "digest")},
                                       "cpu_model": "A", "isa": ["avx2"]})
    other = numerics.record("native", {**{k: v for k, v in local.items()
                                          if k not in ("name", "digest")}, "cpu_model": "B"})
    found, differing, _ = relate(local, other, "native", signed=True)
    assert found is EnvRelation.OTHER and differing == ["cpu_model"]
    assert relate(local, other, "native")[0] is EnvRelation.UNKNOWN  # unsigned


# --- the emulation matrix: one digest per recipe ---------------------------------------------

# CPUs emulated on this one (conftest.AVX512, conftest.AVX2: each setting lowers what the
# machine offers, as an older CPU would) and thread counts; none may change a portable
# build's weights. The digits examples here: on AVX-512 with two threads the run's shared
# second build (examples.built(NAME, threads=2), which test_build and test_diff read too),
# on AVX2 with one a build of its own. textgen's and connect4-zero's thread-count tests in
# their own files build on an emulated AVX2 CPU (two threads spin slowly on a busy
# two-core machine: one build each for both questions).
EMULATED = [pytest.param(AVX512, id="avx512"), pytest.param(AVX2, id="avx2")]


def _build(recipe: Path, store: Path, args: tuple[str, ...], env: dict[str, str]) -> dict:
    result = run_reweigh("build", recipe, "--json", *args, store=store, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("example", ["digits-logreg", "digits-cnn"])
@pytest.mark.parametrize("env", EMULATED)
def test_the_digits_examples_give_one_digest_on_every_emulated_cpu_and_thread_count(
        examples: Examples, tmp_path: Path, example: str, env: dict[str, str]) -> None:
    shared = examples.built(example)  # built with one thread and no cap
    if env is AVX512:  # the shared second build: two threads, AVX-512 caps, another store
        other = examples.built(example, threads=2)
        assert other.store != shared.store
        digest, platform = file_digest(other.item / "weights.safetensors"), _platform(other.item)
    else:
        report = _build(shared.recipe, tmp_path / "store", ("--threads", "1"), env)
        assert report["reused"] is False
        digest = report["weights_digest"]
        platform = {"name": report["platform"], "digest": report["platform_digest"]}
    assert platform["name"] == "x86-64-v3"
    assert digest == file_digest(shared.item / "weights.safetensors"), example
    assert platform["digest"] == _platform(shared.item)["digest"]


@pytest.mark.slow
def test_an_adapted_recipe_gives_one_digest_on_every_emulated_cpu(
        examples: Examples, adapted_recipe: tuple[Path, str], tmp_path: Path) -> None:
    """adapt built the derived recipe on an emulated AVX-512 CPU with two threads (the
    fixture); built again from the base item alone on an emulated AVX2 CPU with one, it
    gives the same digest. AVX-512 caps are no caps on a machine that has it, and cap
    nothing more on one that has not: the machine's own CPU is the first build's."""
    recipe, digest = adapted_recipe
    base = examples.copy("digits-cnn", tmp_path)  # the base item only, as adapt found it
    report = _build(recipe, base.store, ("--threads", "1"), AVX2)
    assert report["reused"] is False and report["weights_digest"] == digest


@pytest.fixture(scope="module")
def adapted_recipe(examples: Examples, tmp_path_factory: pytest.TempPathFactory
                   ) -> tuple[Path, str]:
    """digits-cnn adapted to drawn shapes in a copy of the shared store, on an emulated
    AVX-512 CPU with two threads: (the derived recipe, its weights digest)."""
    root = tmp_path_factory.mktemp("platform-adapt")
    base = examples.copy("digits-cnn", root)
    spec = importlib.util.spec_from_file_location("shapes", EXAMPLES / "digits-cnn" / "shapes.py")
    assert spec and spec.loader
    shapes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shapes)
    data = shapes.write_dataset(root / "shapes", 10, seed=0)
    result = run_reweigh("adapt", "digits-cnn", "--data", data, "--name", "shapes", "--out",
                         root / "recipe", "--strategy", "head", "--threads", "2", "--json",
                         store=base.store, env=AVX512)
    assert result.returncode == 0, result.stderr
    return root / "recipe", json.loads(result.stdout)["weights_digest"]


@pytest.mark.slow
def test_native_numerics_follow_the_emulated_cpu_where_portable_ones_do_not(
        examples: Examples, tmp_path: Path) -> None:
    """The knobs the platform pins really decide the bits: without them (native), capping
    the kernels changes digits-cnn's weights. Two epochs of the fifteen are plenty for
    that (every batch runs the capped kernels) and spare two long builds."""
    recipe = variant("digits-cnn", tmp_path / "recipe", "\nepochs = 15\n", "\nepochs = 2\n")
    native = ("--platform", "native")
    wide = _build(recipe, tmp_path / "a", native, {"ATEN_CPU_CAPABILITY": "avx2"})
    narrow = _build(recipe, tmp_path / "b", native, {"ATEN_CPU_CAPABILITY": "default",
                                                    "ONEDNN_MAX_CPU_ISA": "SSE41"})
    assert wide["platform"] == narrow["platform"] == "native"
    assert wide["weights_digest"] != narrow["weights_digest"]
    # native is another derivation than the shipped recipe's portable one: with the
    # shipped epochs put back, the records differ in the platform alone, and so digest apart
    shared = examples.built("digits-cnn").item
    portable = read_record(shared / "derivation.json")
    native_record = {**read_record(Path(wide["path"]) / "derivation.json"),
                     "params": portable["params"]}
    assert {key for key in portable if portable[key] != native_record[key]} == {"platform"}
    assert native_record["platform"] == "native"
    assert digest_of(native_record) != digest_of(portable)


def _platform(item: Path) -> dict[str, Any]:
    statement = json.loads((item / "provenance.json").read_text())
    return statement["predicate"]["runDetails"]["environment"]["platform"]


# --- challenge: forged claims earn nothing, another platform is judged by tolerance -----------

def _nudged(weights: Path, out: Path, how: str) -> Path:
    tensors = load_file(str(weights))
    if how == "ulp":
        tensors["fc1.bias"] = np.nextafter(tensors["fc1.bias"], np.float32(np.inf))
    elif how == "scale":
        tensors = {k: v * np.float32(1.0001) for k, v in tensors.items()}
    else:  # an fp16 round trip
        tensors = {k: v.astype(np.float16).astype(np.float32) for k, v in tensors.items()}
    save_file(tensors, str(out))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ulp", "scale", "fp16"])
def test_an_edited_provenance_claiming_avx512_earns_no_slack(
        digits_cnn: tuple[Path, Path], tmp_path: Path, how: str) -> None:
    """Issue 12's attack: a provenance copied from the item with only the kernels edited
    made each of these `equivalent`; on one architecture with one torch it is `different`."""
    store, item = digits_cnn
    published = _nudged(item / "weights.safetensors", tmp_path / "w.safetensors", how)
    result = run_reweigh("challenge", EXAMPLES / "digits-cnn", "--published", published,
                         "--published-provenance", forged_environment(item, tmp_path), "--json",
                         store=store)
    report = json.loads(result.stdout)
    assert result.returncode == 1 and report["verdict"] == "different", report["reasons"]
    assert report["environment"] == "same"
    assert any("earns no slack" in reason for reason in report["reasons"])


# --- reweigh platform ------------------------------------------------------------------------

@pytest.mark.slow
def test_platform_measures_this_machine_and_matches_an_item_built_here(
        digits_cnn: tuple[Path, Path]) -> None:
    store, item = digits_cnn
    result = run_reweigh("platform", item.name, "--json", store=store)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["asked"] == "x86-64-v3" and report["item"]["matches"] is True
    assert report["platform"]["digest"] == _platform(item)["digest"]
    assert "x86-64-v3" in report["levels"]
    # as a machine without AVX2 would see it: the item's platform cannot be built here
    capped = run_reweigh("platform", item.name, "--json", store=store,
                         env={"ATEN_CPU_CAPABILITY": "default"})
    assert capped.returncode == 1
    data = json.loads(capped.stdout)
    assert data["offered"] == "x86-64-v2" and "allows no more than x86-64-v2" in data["problem"]
    # on another level the item's platform is not this one, field by field
    other = run_reweigh("platform", item.name, "--platform", "x86-64-v2", "--json", store=store)
    assert other.returncode == 1
    differences = json.loads(other.stdout)["item"]["differences"]
    assert any(line.startswith("settings.env.ATEN_CPU_CAPABILITY: avx2 there, default here")
               for line in differences)


@pytest.mark.slow
def test_a_build_a_capped_machine_cannot_run_exits_2_with_one_line(tmp_path: Path) -> None:
    result = run_reweigh("build", EXAMPLES / "digits-logreg", store=tmp_path / "store",
                         env={"ATEN_CPU_CAPABILITY": "default"})
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()
    assert len(line) == 1 and "cannot build on platform x86-64-v3" in line[0]
    assert not (tmp_path / "store" / "items").exists() or not any(
        (tmp_path / "store" / "items").iterdir())


def test_the_recipe_schema_lists_every_platform_reweigh_knows() -> None:
    from reweigh.schema import recipe_schema

    build = recipe_schema()["properties"]["build"]["properties"]
    assert build["platform"]["enum"] == [numerics.PORTABLE, numerics.NATIVE, *numerics.LEVELS]
