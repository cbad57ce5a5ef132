"""`reweigh export guix`: the package definition, read back by Guile's own reader.

Guile (Debian's guile-3.0, which ./dev installs) reads the file with Guix's #~ and #$
read as (guix gexp) reads them (tests/guix_read.scm) and prints what it found; the
tests check it against the recipe: every file and input an origin whose base32 hash
decodes to the file's SHA-256, the build phase running `reweigh build`, the derivation
check naming the item the recipe gives, the licences in Guix's names. Where `guix`
itself is installed, `guix build -f` of a small recipe is the real test.
"""

from __future__ import annotations

import hashlib
import http.server
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reweigh.errors import UsageError
from reweigh.guix_export import NIX_ALPHABET, guix_licences, nix_base32
from reweigh.store import Store
from reweigh.verbs.build import plan

from .debs import hostile_deb, member
from .helpers import ROOT, run_reweigh, write_recipe

READER = ROOT / "tests" / "guix_read.scm"
PAYLOAD = b"label,value\n" + b"".join(f"{i},{i * i}\n".encode() for i in range(200))


def from_base32(text: str) -> str:
    """The hex digits of a Guix base32 hash (the inverse of nix_base32, written apart)."""
    value = 0  # the hash as a little-endian number; the last character holds its lowest bits
    for k, char in enumerate(text):
        value |= NIX_ALPHABET.index(char) << (5 * (len(text) - 1 - k))
    assert value >> 256 == 0, "bits beyond the hash"
    return value.to_bytes(32, "little").hex()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_base32_is_the_one_guix_and_nix_print() -> None:
    empty = "sha256:" + sha256(b"")
    assert nix_base32(empty) == "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_base32_round_trips(raw: bytes) -> None:
    encoded = nix_base32("sha256:" + raw.hex())
    assert len(encoded) == 52 and set(encoded) <= set(NIX_ALPHABET)
    assert from_base32(encoded) == raw.hex()


@pytest.mark.parametrize(("spdx", "guix"), [
    ("GPL-3.0-or-later", ["license:gpl3+"]),
    ("GPL-2.0+", ["license:gpl2+"]),
    ("MIT OR Apache-2.0", ["license:expat", "license:asl2.0"]),
    ("LGPL-2.1-or-later AND (CC-BY-4.0 OR CC0-1.0)",
     ["license:lgpl2.1+", "license:cc-by4.0", "license:cc0"]),
    ("GPL-2.0-or-later WITH Classpath-exception-2.0", ["license:gpl2+"]),
    ("HPND", ['(license:non-copyleft "https://spdx.org/licenses/HPND.html")']),
    ("NONE", []),
])
def test_licences_take_guix_names(spdx: str, guix: list[str]) -> None:
    assert guix_licences(spdx, "field") == guix


@pytest.mark.parametrize("spdx", ["NOASSERTION", "LicenseRef-mine", "Aladdin"])
def test_a_licence_guix_cannot_name_is_refused(spdx: str) -> None:
    with pytest.raises(UsageError, match="field"):
        guix_licences(spdx, "field")


def read_with_guile(path: Path) -> list[list[str]]:
    done = subprocess.run(["guile", "--no-auto-compile", str(READER), str(path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return [line.split("\t") for line in done.stdout.splitlines()]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """A URL on a real HTTP server on 127.0.0.1, answering PAYLOAD."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/table.csv" else 404)
            self.end_headers()
            if self.path == "/table.csv":
                self.wfile.write(PAYLOAD)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/table.csv"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(shutil.which("guile") is None, reason="guile is not installed (./dev "
                    "installs guile-3.0)")
@pytest.mark.slow
def test_the_export_reads_in_guile_and_pins_every_file_and_input(
        tmp_path: Path, store: Path, served: str) -> None:
    sources = tmp_path / "sources"
    sources.mkdir()
    deb = hostile_deb(sources / "l10n_1.0-1_all.deb", [member("./usr/share/x.mo")],
                      {"./usr/share/x.mo": b"catalogue"}, package="l10n", version="1.0-1")
    deb_hex = sha256(deb.read_bytes())
    recipe = write_recipe(tmp_path / "recipe", extra=f"""
        [inputs.table]
        url = "{served}"
        digest = "sha256:{sha256(PAYLOAD)}"

        [inputs.notes]
        path = "notes"

        [inputs.l10n]
        debian = "l10n"
        version = "1.0-1"
        architecture = "all"
        digest = "sha256:{deb_hex}"
        """, files={"notes/a.txt": "a\n", "notes/b/c.txt": "c\n"})
    env = {"REWEIGH_SOURCES": str(sources)}
    written = tmp_path / "package.scm"
    result = run_reweigh("export", "guix", recipe, "-o", written, store=store, env=env)
    assert result.returncode == 0, result.stderr
    facts = read_with_guile(written)
    origins = {(f[1], f[2]): (f[3], f[4]) for f in facts if f[0] == "origin"}
    assert not [f for f in facts if f[0] == "malformed"]
    # every file of the recipe directory the build reads, by its own SHA-256
    recipe_files = {place: v for (kind, place), v in origins.items() if kind == "%recipe-files"}
    assert sorted(recipe_files) == ["notes/a.txt", "notes/b/c.txt", "recipe.toml", "train.py"]
    for place, (uri, hashed) in recipe_files.items():
        assert uri == (recipe / place).resolve().as_uri()
        assert from_base32(hashed) == sha256((recipe / place).read_bytes()), place
    # every input from elsewhere, under the SHA-256 reweigh looks for in $REWEIGH_SOURCES
    fetched = {place: v for (kind, place), v in origins.items() if kind == "%sources"}
    assert fetched[sha256(PAYLOAD)] == (served, nix_base32("sha256:" + sha256(PAYLOAD)))
    sha1 = hashlib.sha1(deb.read_bytes()).hexdigest()
    assert fetched[deb_hex] == (f"https://snapshot.debian.org/file/{sha1}",
                                nix_base32("sha256:" + deb_hex))
    assert len(fetched) == 2
    # the build runs reweigh on the recipe, and checks the derivation it built
    the_plan = plan(recipe, Store(store))
    assert ["invoke", "reweigh", "build", "recipe/recipe.toml", "--sandbox", "none"] in facts
    assert ["exists", f"store/items/{the_plan.derivation.item_name}"] in facts
    assert ["phase", "add", "check-derivation"] in facts
    assert ["field", "name", "reweigh-test-recipe"] in facts
    assert {f[1] for f in facts if f[0] == "license"} == {"license:expat", "license:cc0"}
    assert {"python-reweigh", "python-numpy"} <= {f[1] for f in facts if f[0] == "input"}


@pytest.mark.slow
def test_a_store_item_input_is_refused(tmp_path: Path, store: Path) -> None:
    base = write_recipe(tmp_path / "base")
    assert run_reweigh("build", base, store=store).returncode == 0
    recipe = write_recipe(tmp_path / "recipe", extra="""
        [inputs.base]
        item = "test-recipe"
        """)
    result = run_reweigh("export", "guix", recipe, store=store)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "inputs.base: a store item has no address Guix could fetch" in result.stderr


@pytest.mark.skipif(shutil.which("guix") is None, reason="guix is not installed here")
def test_guix_builds_the_exported_package(tmp_path: Path, store: Path) -> None:
    recipe = write_recipe(tmp_path / "recipe")
    written = tmp_path / "package.scm"
    assert run_reweigh("export", "guix", recipe, "-o", written, store=store).returncode == 0
    built = subprocess.run(["guix", "build", "-f", str(written)], capture_output=True,
                           text=True, timeout=3600, check=False)
    assert built.returncode == 0, built.stderr[-2000:]
    output = Path(built.stdout.split()[-1])
    assert list(output.glob("share/reweigh/*/weights.safetensors"))
