"""Canonical JSON: RFC 8785 (JCS) by its own examples, and the records whose bytes it kept."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from reweigh.digest import (
    MAX_SAFE_INTEGER,
    canonical_json,
    python_sorted_json,
    record_digest,
    tree_digest,
)
from reweigh.transcript import link

ZERO = "sha256:" + "0" * 64


def _double(bits: str) -> float:
    return float(struct.unpack(">d", bytes.fromhex(bits))[0])


# RFC 8785, Appendix B: IEEE 754 bit patterns and their serialisation.
APPENDIX_B = [
    ("0000000000000000", "0"), ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"), ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"), ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"), ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"), ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"), ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"), ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"), ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


@pytest.mark.parametrize(("bits", "expected"), APPENDIX_B, ids=[b for b, _ in APPENDIX_B])
def test_numbers_are_written_as_rfc_8785_appendix_b_says(bits: str, expected: str) -> None:
    assert canonical_json(_double(bits)) == expected.encode()


@pytest.mark.parametrize(("value", "expected"), [
    (1e21, "1e+21"), (-0.0, "0"), (5e-324, "5e-324"), (1e-7, "1e-7"),
    (333333333.33333329, "333333333.3333333"), (1.0, "1"), (0.001, "0.001"), (1e20,
     "100000000000000000000"), (MAX_SAFE_INTEGER, "9007199254740991"),
])
def test_numbers_are_written_the_ecmascript_way(value: float, expected: str) -> None:
    assert canonical_json(value) == expected.encode()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"),
                                   MAX_SAFE_INTEGER + 1, -MAX_SAFE_INTEGER - 1, 2**63],
                         ids=["nan", "inf", "-inf", "2**53", "-2**53", "2**63"])
def test_what_i_json_cannot_hold_is_refused_not_rounded(value: float) -> None:
    with pytest.raises(ValueError):
        canonical_json(value)


def test_keys_are_sorted_by_utf16_code_units_as_in_rfc_8785() -> None:
    """RFC 8785, 3.2.3: the emoji (a surrogate pair, 0xD83D...) sorts before U+FB33, which
    Python's code-point order puts first."""
    data = {"\u20ac": "Euro Sign", "\r": "Carriage Return",
            "\ufb33": "Hebrew Letter Dalet With Dagesh", "1": "One",
            "\U0001f600": "Emoji: Grinning Face", "\u0080": "Control",
            "\u00f6": "Latin Small Letter O With Diaeresis"}
    order = list(json.loads(canonical_json(data)).values())
    assert order == ["Carriage Return", "One", "Control", "Latin Small Letter O With Diaeresis",
                     "Euro Sign", "Emoji: Grinning Face", "Hebrew Letter Dalet With Dagesh"]
    assert list(json.loads(python_sorted_json(data)).values())[-2:] == [
        "Hebrew Letter Dalet With Dagesh", "Emoji: Grinning Face"]


def test_the_rfc_8785_example_object_is_canonicalised_byte_for_byte() -> None:
    """RFC 8785, 3.2.2 and 3.2.4: numbers, escapes and literals together."""
    text = ('{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
            r' "string": "\u20ac$\u000F\u000aA' "'" r'\u0042\u0022\u005c\\\"\/",'
            ' "literals": [null, true, false]}')
    expected = ('{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,'
                r'1e-27],"string":"€$\u000f\nA' "'" r'B\"\\\\\"/"}')
    assert canonical_json(json.loads(text)) == expected.encode()


# Records that RFC 8785 and the earlier Python form write alike: their digests did not move,
# so transcripts, folder inputs pinned in recipes and imported items keep their names.
KEPT = {
    "transcript link": {"previous": ZERO, "step": 2**40, "digest": ZERO},
    "folder listing": {"tree": [["a\tb/\u00e9\u20ac.csv", ZERO], ["\U0001f600/x", ZERO],
                                ["\ufb33", ZERO], ["q\"\\\x7f\x01.txt", ZERO]]},
    "import identity": {"format": "reweigh.import/1", "name": "net", "version": "imported",
                        "source_digest": ZERO, "license": "MIT",
                        "origin": "gr\u00fc\u00dfe \U0001f600", "no_training_data": False},
    "environment fingerprint": {"python": "3.11.2", "packages": {"torch": "2.13.0", "x": None},
                                "isa": ["avx2"], "numerics": {"torch": {"backward_threads": 1,
                                                                        "fill": False}}},
}


@pytest.mark.parametrize("record", KEPT.values(), ids=list(KEPT))
def test_records_without_floats_or_non_bmp_keys_keep_their_bytes(record: dict) -> None:
    assert canonical_json(record) == python_sorted_json(record)


def test_a_folder_digest_is_the_same_as_before_the_switch(tmp_path: Path) -> None:
    """Pinned (computed before the switch): a recipe pinning a folder's digest still builds."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("b")
    (tmp_path / "a.txt").write_text("a")
    assert tree_digest(tmp_path) == (
        "sha256:6c794bdfc36b2c6f0db537a19c9afd4d898677f5b67fe64ce3ca444814c1f32d")
    assert tree_digest(tmp_path) == record_digest({"tree": [
        ["a.txt", "sha256:ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"],
        ["sub/b.txt", "sha256:3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d"]]})


def test_a_transcript_link_is_the_digest_of_its_canonical_record() -> None:
    """Pinned (computed before the switch): transcripts written then still verify."""
    assert link(ZERO, 10, ZERO) == (
        "sha256:5bf2cbb19a736802544b49f45a7a600596231da159e53d3d3c99bbc535badf7b")
