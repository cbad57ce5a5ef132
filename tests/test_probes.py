"""Probe sets: the parser reads what it documents, refuses the rest in one line, and is fuzzed."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reweigh.audit.probes import MAX_PROMPTS, Probe, load_probes, parse_probes
from reweigh.errors import UsageError

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_prompts_take_the_topic_of_the_header_above_them() -> None:
    text = "# a probe set\nbefore any header\n\n[sea]\nthe sea is\n  the   boat is \n[city]\n" \
           "the street is\r\n"
    assert parse_probes(text, "p.txt") == (
        Probe("", "before any header"), Probe("sea", "the sea is"), Probe("sea", "the boat is"),
        Probe("city", "the street is"))


@pytest.mark.parametrize(("text", "reason"), [
    ("", "no prompts"), ("# only a comment\n\n", "no prompts"), ("[sea]\n", "no prompts"),
    ("[sea\nthe sea is", "topic header"), ("[]\nx", "topic header"), ("[a/b]\nx", "topic header"),
    ("the sea\x00 is", "control character"), ("a\x1bb", "control character"),
    ("x" * 501, "longer than 500"), ("x\n" * (MAX_PROMPTS + 1), "more than 1000"),
])
def test_odd_probe_files_are_refused_naming_the_line(text: str, reason: str) -> None:
    with pytest.raises(UsageError, match=reason) as caught:
        parse_probes(text, "probes.txt")
    assert caught.value.one_line().startswith("probes.txt") and "\n" not in caught.value.message


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "probes.txt"
    path.write_bytes(b"[sea]\nthe sea \xff is\n")
    with pytest.raises(UsageError, match="not UTF-8"):
        load_probes(path)
    with pytest.raises(UsageError, match="cannot read"):
        load_probes(tmp_path / "missing.txt")


@FUZZ
@given(st.text(max_size=400))
def test_any_text_gives_probes_or_a_one_line_usage_error(text: str) -> None:
    try:
        probes = parse_probes(text, "fuzz.txt")
    except UsageError as e:
        assert "\n" not in e.one_line() and e.one_line().startswith("fuzz.txt")
        return
    assert 1 <= len(probes) <= MAX_PROMPTS
    for p in probes:
        assert p.prompt and p.prompt == " ".join(p.prompt.split()) and len(p.prompt) <= 500
        assert not p.prompt.startswith(("#", "["))


TOPICS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)
PROMPTS = st.lists(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), min_size=1,
                           max_size=40).map(lambda s: " ".join(s.split()))
                   .filter(lambda s: s and s[0] not in "#["), min_size=1, max_size=5)


@FUZZ
@given(st.lists(st.tuples(TOPICS, PROMPTS), min_size=1, max_size=5))
def test_a_written_probe_set_reads_back_as_written(groups: list[tuple[str, list[str]]]) -> None:
    text = "".join(f"[{topic}]\n" + "".join(f"{p}\n" for p in prompts)
                   for topic, prompts in groups)
    expected = tuple(Probe(topic, p) for topic, prompts in groups for p in prompts)
    assert parse_probes(text, "set.txt") == expected
