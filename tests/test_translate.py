"""translate-en-de: the .mo reader, the subwords, the smoke build, the program and its profile.

The build tests use the smoke variant (two small Debian packages fetched with apt-get,
a tiny network, seconds to build); the default recipe's BLEU and chrF are measured by
its own build and recorded in bench/README.md.
"""

from __future__ import annotations

import gettext
import io
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .helpers import EXAMPLES, run_reweigh, variant

TRANSLATE = EXAMPLES / "translate-en-de"
SMOKE = TRANSLATE / "smoke.toml"
sys.path.insert(0, str(TRANSLATE))

import mofile  # noqa: E402
import pairs  # noqa: E402
import subwords  # noqa: E402

# --- the .mo reader ---------------------------------------------------------------------

HEADER = "Content-Type: text/plain; charset=UTF-8\nPlural-Forms: nplurals=2; plural=(n != 1);\n"


def write_mo(entries: dict[str, str], order: str = "<") -> bytes:
    """A catalogue as msgfmt writes one: sorted originals, two tables, NUL-ended strings."""
    items = sorted({"": HEADER, **entries}.items(), key=lambda kv: kv[0].encode())
    keys = [k.encode() for k, _ in items]
    values = [v.encode() for _, v in items]
    count, start = len(items), 28
    strings = start + 16 * count
    blob, table_k, table_v = b"", [], []
    for raw, table in [*((k, table_k) for k in keys), *((v, table_v) for v in values)]:
        table.append((len(raw), strings + len(blob)))
        blob += raw + b"\x00"
    head = struct.pack(f"{order}7I", mofile.MAGIC, 0, count, start, start + 8 * count, 0, 0)
    pairs_k = b"".join(struct.pack(f"{order}2I", *t) for t in table_k)
    pairs_v = b"".join(struct.pack(f"{order}2I", *t) for t in table_v)
    return head + pairs_k + pairs_v + blob


MESSAGES = st.dictionaries(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\x04"),
            min_size=1, max_size=20),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
            min_size=1, max_size=20), max_size=8)


@settings(max_examples=100, deadline=None)
@given(MESSAGES, st.sampled_from(["<", ">"]))
def test_the_reader_agrees_with_gettext_on_catalogues_msgfmt_could_write(
        entries: dict[str, str], order: str) -> None:
    data = write_mo(entries, order)
    ours = {m.msgid: m.translations[0] for m in mofile.parse_mo(data)}
    theirs = gettext.GNUTranslations(io.BytesIO(data))._catalog  # type: ignore[attr-defined]
    assert ours == {k: v for k, v in theirs.items() if k} == entries


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1,
                max_size=6), st.integers(1, 10_000))
def test_a_damaged_catalogue_is_read_or_refused_with_a_mo_error(
        cuts: list[tuple[int, int]], keep: int) -> None:
    data = bytearray(write_mo({"Open": "Öffnen", "ctx\x04Save": "Speichern",
                               "file\x00files": "Datei\x00Dateien"}))
    for at, value in cuts:
        data[at % len(data)] = value
    try:
        messages = mofile.parse_mo(bytes(data[:keep]))
    except mofile.MoError:
        return
    assert all(isinstance(m.msgid, str) for m in messages)


def test_contexts_plurals_and_refusals() -> None:
    messages = mofile.parse_mo(write_mo({"menu\x04Open": "Öffnen", "file\x00files":
                                         "Datei\x00Dateien"}))
    assert {(m.context, m.msgid, m.plural, m.translations) for m in messages} == {
        ("menu", "Open", None, ("Öffnen",)), (None, "file", "files", ("Datei", "Dateien"))}
    unsorted = bytearray(write_mo({"a": "x", "b": "y"}))
    first, second = struct.unpack_from("<2I", unsorted, 28 + 8), struct.unpack_from(
        "<2I", unsorted, 28 + 16)
    struct.pack_into("<2I", unsorted, 28 + 8, *second)
    struct.pack_into("<2I", unsorted, 28 + 16, *first)
    with pytest.raises(mofile.MoError, match="increasing order"):
        mofile.parse_mo(bytes(unsorted))
    latin = write_mo({"a": "b"}).replace(b"charset=UTF-8", b"charset=CP125")  # same length
    with pytest.raises(mofile.MoError, match="only UTF-8"):
        mofile.parse_mo(latin)


def test_the_catalogues_installed_here_are_read() -> None:
    found = sorted(Path("/usr/share/locale/de/LC_MESSAGES").glob("*.mo"))[:40]
    if not found:
        pytest.skip("no German catalogues installed here")
    for path in found:
        try:
            assert mofile.read_mo(path), path
        except mofile.MoError as e:
            assert "only UTF-8" in str(e)  # the one refusal a real catalogue may earn


def test_messages_are_cleaned_and_split_by_their_english() -> None:
    assert pairs.clean("  _Open   the O_ptions ") == "Open the Options"
    assert pairs.clean("snake_case") == "snakecase" and pairs.clean("a_") == "a_"
    both = [pairs.Pair("Open", "Öffnen", "a"), pairs.Pair("Open", "Aufmachen", "b")]
    held = [p for p in both if pairs.held_out(p.english, 0.5)]
    train, test = pairs.split(both, 0.5)
    assert (len(test), len(train)) == ((1, 0) if held else (0, 2))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=30), min_size=1, max_size=6), st.text(max_size=30))
def test_subwords_give_the_text_back(corpus: list[str], text: str) -> None:
    vocabulary = subwords.learn(corpus, 50)
    again = subwords.learn(corpus, 50)
    assert (vocabulary.tokens, vocabulary.merges) == (again.tokens, again.merges)
    known = set("".join(corpus)) | {" "}
    ids = vocabulary.encode(text)
    if set(text) <= known:
        assert vocabulary.decode(ids) == " ".join(text.replace(subwords.SPACE, " ").split())
    loaded = subwords.Subwords.from_json(vocabulary.to_json())
    assert loaded.encode(text) == ids


# --- the smoke build, the program, the profile --------------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """The smoke variant and a copy with another seed, in one store (the packages are
    fetched once with apt-get)."""
    root = tmp_path_factory.mktemp("translate")
    store = root / "store"
    first = run_reweigh("build", SMOKE, "--json", store=store)
    assert first.returncode == 0, first.stderr
    other = variant("translate-en-de", root / "reseeded", "seed = 2024", "seed = 7")
    (other / "recipe.toml").write_text((other / "smoke.toml").read_text()
                                       .replace("seed = 2024", "seed = 7"))
    second = run_reweigh("build", other / "recipe.toml", "--json", store=store)
    assert second.returncode == 0, second.stderr
    return store, [Path(json.loads(r.stdout)["path"]) for r in (first, second)]


def _translate(profile: Path, store: Path, *texts: str) -> dict:
    done = subprocess.run([sys.executable, str(TRANSLATE / "translate.py"), *texts, "--profile",
                           str(profile), "--json"], capture_output=True, text=True,
                          timeout=120, check=False, env={**_env(), "REWEIGH_STORE": str(store)})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def _direct(item: Path, *texts: str) -> list[str]:
    """What the item's own network says, loaded here without the program."""
    import translate

    model, vocabulary, beam = translate.load(item)
    assert beam == 2  # smoke.toml's: the program searches as the evaluation did
    return [vocabulary.decode(ids) for ids in model.translate([vocabulary.encode(t)
                                                               for t in texts], beam)]


PROMPTS = ("Open file", "German keyboard", "Show hidden files", "Screen brightness")


@pytest.mark.slow
def test_the_smoke_build_reports_bleu_and_chrf_against_both_baselines(
        built: tuple[Path, list[Path]]) -> None:
    _, (item, _) = built
    metrics = json.loads((item / "metrics.json").read_text())["evaluation"]
    for name in ("bleu", "chrf", "bleu_copy", "chrf_copy", "bleu_dictionary",
                 "chrf_dictionary", "token_accuracy"):
        assert isinstance(metrics[name], float), name
    assert metrics["test_pairs"] > 20 and metrics["train_pairs"] > 500
    assert metrics["chrf_dictionary"] > metrics["chrf_copy"]  # the dictionary knows words
    provenance = json.loads((item / "provenance.json").read_text())
    debs = [d for d in provenance["predicate"]["buildDefinition"]["resolvedDependencies"]
            if d.get("annotations", {}).get("kind") == "debian"]
    assert sorted(d["annotations"]["debian"] for d in debs) == [
        "gsettings-desktop-schemas", "xkb-data"]
    assert all(d["annotations"]["deb"].startswith("sha256:") for d in debs)


@pytest.mark.slow
def test_the_program_translates_with_the_profile_and_follows_rollback(
        built: tuple[Path, list[Path]], tmp_path: Path) -> None:
    store, (first, second) = built
    profile = tmp_path / "profile"
    answers = {}
    for item in (first, second):
        installed = run_reweigh("install", item, "--as", "translate-en-de", "--profile",
                                profile, store=store)
        assert installed.returncode == 0, installed.stderr
        answers[item] = _translate(profile, store, *PROMPTS)
        assert answers[item]["network"] == str(item)
        assert [t["german"] for t in answers[item]["translations"]] == _direct(item, *PROMPTS)
    assert run_reweigh("profile", "rollback", "--profile", profile).returncode == 0
    assert _translate(profile, store, *PROMPTS) == answers[first]


def test_the_program_says_when_nothing_is_installed(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(TRANSLATE / "translate.py"), "Open file",
                           "--profile", str(tmp_path / "empty")], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("translate: ")


@pytest.mark.slow
def test_the_guix_export_names_each_debian_package_with_its_hash(
        built: tuple[Path, list[Path]], tmp_path: Path) -> None:
    from reweigh.guix_export import nix_base32

    store, _ = built
    written = tmp_path / "translate.scm"
    result = run_reweigh("export", "guix", SMOKE, "-o", written, store=store)
    assert result.returncode == 0, result.stderr
    text = written.read_text()
    for digest, name in (("15cc7142c3ddea0551b834c53c4d3b5cd8f5485e695100966877f2be50def7af",
                          "gsettings-desktop-schemas_43.0-1_all.deb"),
                         ("28a79c61b785f403da93af58c39aed13c022032935e3e54362c6707169cfe982",
                          "xkb-data_2.35.1-1_all.deb")):
        assert f'("{digest}"' in text and nix_base32(f"sha256:{digest}") in text
        assert f"/{name}\")" in text
    assert "license:lgpl2.1+" in text and '"python-sacrebleu"' in text


@pytest.mark.slow  # imports torch
def test_incremental_decoding_gives_the_full_decoders_probabilities() -> None:
    """Search keeps each decoder layer's keys and values and reads one piece a step; what
    it answers must be what the whole decoder answers at each position, and greedy
    search must write the full decoder's best piece at every step."""
    import seq2seq
    import torch

    torch.manual_seed(0)
    model = seq2seq.Translator(seq2seq.Config(40, 16, 2, 1, 2, 12, 0.0)).eval()
    sources = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16]]
    target = torch.randint(4, 40, (3, 6))
    x = seq2seq.batch(sources, 12, wrap=True)
    with torch.no_grad():
        full = torch.log_softmax(model(x, target), dim=-1)  # (B, T, vocab)
        search = seq2seq.Search(model, sources, 1, None)
        steps = torch.stack([search.step(target[:, i:i + 1], i) for i in range(6)], 1)
        assert (full - steps).abs().max() < 1e-5
        out = torch.full((3, 1), subwords.BOS)
        for _ in range(11):
            out = torch.cat([out, model(x, out)[:, -1].argmax(-1, keepdim=True)], dim=1)
    for row, said in zip(out.tolist(), model.translate(sources), strict=True):
        written = row[1:]
        ended = written.index(subwords.EOS) if subwords.EOS in written else len(written)
        assert said == written[:ended]
    assert all(len(t) <= 11 for t in model.translate(sources, beam=3))
