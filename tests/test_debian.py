"""Debian packages as inputs: pinned by the .deb's digest, read strictly, unpacked read-only.

The good package is made by the real `dpkg-deb --build`; the hostile ones are written
here byte by byte (dpkg-deb would refuse to make them). The missing package is asked of
the real `apt-get`, which answers from its local package lists without the network.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reweigh.debian import DebianError, DebianPin, data_member, unpack

from .debs import hostile_deb, member
from .helpers import run_reweigh, store_is_empty, write_recipe

READ_PACKAGE = """
import os
import numpy as np

def train(ctx):
    root = ctx.inputs["pkg"]
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert files == ["usr/share/locale/de/LC_MESSAGES/hello.mo"], files
    kept = root / files[0]
    assert not os.access(kept, os.W_OK) or os.geteuid() == 0
    assert oct(kept.stat().st_mode & 0o777) == "0o444", oct(kept.stat().st_mode)
    head = np.frombuffer(kept.read_bytes()[:8], dtype=np.uint8)
    ctx.save_weights({"w": head.astype(np.float32)})
"""


def _digest(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def good_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real .deb made by dpkg-deb: a catalogue to keep, a README and a link to leave out."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed")
    root = tmp_path_factory.mktemp("pkg") / "hello-l10n"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: hello-l10n\nVersion: 1.0-1\nArchitecture: all\n"
        "Maintainer: Test <test@example.org>\nDescription: catalogues for a test\n")
    locale = root / "usr/share/locale/de/LC_MESSAGES"
    locale.mkdir(parents=True)
    (locale / "hello.mo").write_bytes(bytes(range(64)))
    (root / "usr/share/doc/hello-l10n").mkdir(parents=True)
    (root / "usr/share/doc/hello-l10n/README").write_text("read me\n")
    (root / "usr/share/doc/hello-l10n/link").symlink_to("/etc/passwd")
    sources = root.parent / "sources"
    sources.mkdir()
    deb = sources / "hello-l10n_1.0-1_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(deb)],
                   check=True, capture_output=True)
    return deb


def _debian_input(deb_digest: str, package: str = "hello-l10n", version: str = "1.0-1",
                  files: str = '["usr/share/locale/*/LC_MESSAGES/*.mo"]') -> str:
    return f"""
        [inputs.pkg]
        debian = "{package}"
        version = "{version}"
        architecture = "all"
        digest = "{deb_digest}"
        files = {files}
        """


@pytest.mark.slow
def test_a_package_is_unpacked_read_only_and_known_by_its_deb(
        tmp_path: Path, store: Path, good_deb: Path) -> None:
    recipe = write_recipe(tmp_path / "r", READ_PACKAGE, inputs=_debian_input(_digest(good_deb)))
    env = {"REWEIGH_SOURCES": str(good_deb.parent)}
    built = run_reweigh("build", recipe, "--json", store=store, env=env)
    assert built.returncode == 0, built.stderr
    shown = run_reweigh("show", "test-recipe", "--json", store=store)
    tree = json.loads(shown.stdout)["inputs"]["pkg"]
    kept = next((store / "inputs").iterdir())
    assert f"sha256:{kept.name}" == tree  # the store keeps the unpacked files by their digest
    provenance = json.loads((Path(json.loads(built.stdout)["path"]) / "provenance.json")
                            .read_text())
    entry = next(d for d in provenance["predicate"]["buildDefinition"]["resolvedDependencies"]
                 if d["name"] == "input:pkg")
    assert entry["annotations"]["deb"] == _digest(good_deb)  # and records the .deb's digest
    assert entry["annotations"]["links_left_out"] == 1
    again = run_reweigh("build", recipe, "--json", store=store)  # no source needed now
    assert again.returncode == 0 and json.loads(again.stdout)["reused"], again.stderr


@pytest.mark.slow
def test_a_wrong_digest_is_refused_and_nothing_is_kept(
        tmp_path: Path, store: Path, good_deb: Path) -> None:
    wrong = "sha256:" + "0" * 64
    recipe = write_recipe(tmp_path / "r", READ_PACKAGE, inputs=_debian_input(wrong))
    result = run_reweigh("build", recipe, store=store,
                         env={"REWEIGH_SOURCES": str(good_deb.parent)})
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "inputs.pkg.debian" in result.stderr and "digest mismatch" in result.stderr
    assert str(good_deb) in result.stderr  # names the file that did not match
    assert store_is_empty(store)


@pytest.mark.slow
def test_a_deb_that_names_another_package_is_refused(
        tmp_path: Path, store: Path, good_deb: Path) -> None:
    sources = tmp_path / "sources"
    sources.mkdir()
    renamed = sources / "hello-l10n_1.0-2_all.deb"  # another version's name, same bytes
    shutil.copyfile(good_deb, renamed)
    recipe = write_recipe(tmp_path / "r", READ_PACKAGE,
                          inputs=_debian_input(_digest(renamed), version="1.0-2"))
    result = run_reweigh("build", recipe, store=store, env={"REWEIGH_SOURCES": str(sources)})
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "says it is hello-l10n 1.0-1 (all), not hello-l10n 1.0-2 (all)" in result.stderr
    assert store_is_empty(store)


@pytest.mark.slow
def test_a_missing_package_says_how_to_get_it(tmp_path: Path, store: Path) -> None:
    if shutil.which("apt-get") is None:
        pytest.skip("apt-get is not installed")
    recipe = write_recipe(tmp_path / "r", READ_PACKAGE, inputs=_debian_input(
        "sha256:" + "1" * 64, package="reweigh-no-such-package", version="9.9-1"))
    result = run_reweigh("build", recipe, store=store, env={"REWEIGH_SOURCES": ""})
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    line = result.stderr
    assert "apt-get cannot fetch reweigh-no-such-package:all=9.9-1" in line
    assert "snapshot.debian.org" in line and "REWEIGH_SOURCES" in line
    assert "reweigh-no-such-package_9.9-1_all.deb" in line
    assert store_is_empty(store)


# --- hostile packages, written by hand (tests/debs.py) -----------------------------------

ESCAPES = {
    "dot-dot": ([member("./usr/../../escaped.mo")], {"./usr/../../escaped.mo": b"x"}),
    "absolute": ([member("/tmp/escaped.mo")], {"/tmp/escaped.mo": b"x"}),
    "hard link out": ([member("./usr/a.mo", tarfile.LNKTYPE, "../../etc/passwd")], {}),
}


@pytest.mark.slow
@pytest.mark.parametrize("how", sorted(ESCAPES))
def test_a_member_that_leaves_the_package_is_refused(
        tmp_path: Path, store: Path, how: str) -> None:
    sources = tmp_path / "sources"
    sources.mkdir()
    deb = hostile_deb(sources / "evil_1.0_all.deb", *ESCAPES[how])
    recipe = write_recipe(tmp_path / "r", READ_PACKAGE, inputs=_debian_input(
        _digest(deb), package="evil", version="1.0", files='["*"]'))
    result = run_reweigh("build", recipe, store=store, env={"REWEIGH_SOURCES": str(sources)})
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "leaves the package" in result.stderr, result.stderr
    assert store_is_empty(store)
    assert not (tmp_path / "escaped.mo").exists() and not Path("/tmp/escaped.mo").exists()


def test_a_name_given_twice_and_a_selection_of_nothing_are_refused(tmp_path: Path) -> None:
    twice = hostile_deb(tmp_path / "twice.deb", [member("./a.mo"), member("./a.mo")],
                        {"./a.mo": b"x"})
    with pytest.raises(DebianError, match="given twice"):
        unpack(twice, tmp_path / "out1", ("*",), "label")
    fine = hostile_deb(tmp_path / "fine.deb", [member("./a.mo")], {"./a.mo": b"x"})
    with pytest.raises(DebianError, match=r"no file of fine\.deb matches"):
        unpack(fine, tmp_path / "out2", ("usr/*",), "label")
    assert unpack(fine, tmp_path / "out3", ("*",), "label").files == 1


def test_the_archive_name_follows_debian(tmp_path: Path) -> None:
    pin = DebianPin("git", "1:2.39.5-0+deb12u3", "amd64", "sha256:" + "0" * 64)
    assert pin.file_name == "git_1%3a2.39.5-0+deb12u3_amd64.deb"
    assert pin.apt_name == "git:amd64=1:2.39.5-0+deb12u3"


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1,
                     max_size=4), truncate=st.integers(0, 10_000))
def test_a_damaged_deb_is_refused_with_a_debian_error(
        tmp_path: Path, cuts: list[tuple[int, int]], truncate: int) -> None:
    """Flipped bytes or a cut anywhere: the reader either unpacks or says DebianError,
    never another exception and never a file outside its folder."""
    base = tmp_path / "base.deb"
    if not base.exists():
        hostile_deb(base, [member("./usr/a.mo"), member("./usr/b.mo")],
                    {"./usr/a.mo": b"A" * 300, "./usr/b.mo": b"B" * 50})
    data = bytearray(base.read_bytes())
    for at, value in cuts:
        data[at % len(data)] = value
    damaged = tmp_path / "damaged.deb"
    damaged.write_bytes(bytes(data[:max(truncate, 1)] if truncate < len(data) else data))
    target = tmp_path / "out"
    shutil.rmtree(target, ignore_errors=True)
    try:
        data_member(damaged, "label")
        unpack(damaged, target, ("*",), "label")
    except DebianError:
        pass
    outside = [p for p in tmp_path.rglob("*") if p.is_file()
               and p.parent != tmp_path and not p.is_relative_to(target)]
    assert outside == []
