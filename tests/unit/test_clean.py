"""clean's pure logic: normalisation and the per-reason counts of dropped documents."""

from __future__ import annotations

import pytest

from tasks.clean import clean_documents, normalize, strip_controls
from tasks.params import CleanParams


def test_normalize_composes_to_nfc():
    text, removed = normalize("cafe\u0301 e\u0301")
    assert text == "caf\u00e9 \u00e9"
    assert removed == 0


def test_strip_controls_keeps_newline_and_tab():
    text, removed = strip_controls("a\tb\nc\x00d\x07e\x1bf\u200bg\ufeffh")
    assert text == "a\tb\ncdefgh"
    assert removed == 5  # NUL, BEL, ESC, zero-width space, BOM


def test_normalize_removes_control_characters_and_counts_them():
    text, removed = normalize("he\x00llo\x08 wor\u200bld\n\nsecond\x7f line")
    assert text == "hello world\n\nsecond line"
    assert removed == 4


def test_normalize_keeps_newlines_and_treats_tabs_as_whitespace():
    text, removed = normalize("col1\tcol2\nnext line")
    assert text == "col1 col2\nnext line"  # a tab is whitespace: kept by strip_controls, collapsed here
    assert removed == 0


def test_normalize_collapses_whitespace_runs_and_trims_lines():
    text, _ = normalize("  many    spaces \u00a0 here \t\t\nand   there   ")
    assert text == "many spaces here\nand there"


def test_normalize_keeps_leading_indentation_of_code():
    text, _ = normalize("def f(x):\n    if x:\n\treturn  x   \n")
    assert text == "def f(x):\n    if x:\n    return x"


def test_normalize_caps_blank_lines_at_one():
    text, _ = normalize("para one\n\n\n\n\npara two\n \n\t\n\npara three\n\npara four")
    assert text == "para one\n\npara two\n\npara three\n\npara four"


def test_normalize_unifies_line_endings_and_strips_the_ends():
    text, _ = normalize("\r\n\r\nfirst\r\nsecond\rthird\r\n\r\n\r\n")
    assert text == "first\nsecond\nthird"


def test_normalize_is_idempotent():
    once, _ = normalize("  A\u0301 \x00b\n\n\n\nc\t d  ")
    assert normalize(once) == (once, 0)


def test_clean_documents_counts_every_reason():
    cfg = CleanParams(min_chars=10, max_chars=40)
    texts = [
        "a perfectly fine document",  # kept
        "",  # empty
        " \n\t \x00 ",  # empty after normalisation (1 control char)
        "a  perfectly   fine document\n",  # duplicate of the first once normalised
        "short",  # too short
        "x" * 41,  # too long
        "another fine document here",  # kept
        "another fine document here",  # exact duplicate
    ]
    result = clean_documents(texts, cfg)

    assert result.texts == ["a perfectly fine document", "another fine document here"]
    c = result.counts
    assert c["documents_in"] == 8
    assert c["documents_out"] == 2
    assert c["dropped_empty"] == 2
    assert c["dropped_duplicate"] == 2
    assert c["dropped_too_short"] == 1
    assert c["dropped_too_long"] == 1
    assert c["control_chars_removed"] == 1
    assert c["chars_in"] == sum(len(t) for t in texts)
    assert c["chars_out"] == len("a perfectly fine document") + len("another fine document here")
    assert c["documents_in"] == c["documents_out"] + sum(v for k, v in c.items() if k.startswith("dropped_"))


def test_clean_documents_keeps_the_first_duplicate_and_the_order():
    cfg = CleanParams(min_chars=1, max_chars=100)
    result = clean_documents(["b doc", "a doc", "b  doc", "c doc", "a doc"], cfg)
    assert result.texts == ["b doc", "a doc", "c doc"]


def test_clean_documents_length_bounds_are_inclusive_and_measured_after_normalisation():
    cfg = CleanParams(min_chars=5, max_chars=7)
    result = clean_documents(["  abcd   ", "abcde", "abcdefg", "abcdefgh", "a    b"], cfg)
    assert result.texts == ["abcde", "abcdefg"]
    assert result.counts["dropped_too_short"] == 2  # "abcd" and "a b"
    assert result.counts["dropped_too_long"] == 1


def test_clean_documents_reports_zero_counts_when_nothing_is_dropped():
    result = clean_documents(["hello world"], CleanParams(min_chars=1, max_chars=100))
    for reason in ("dropped_empty", "dropped_duplicate", "dropped_too_short", "dropped_too_long",
                   "control_chars_removed"):
        assert result.counts[reason] == 0


@pytest.mark.parametrize("texts", [[], ["", "  "]])
def test_clean_documents_may_return_nothing(texts):
    result = clean_documents(texts, CleanParams(min_chars=1, max_chars=10))
    assert result.texts == []
    assert result.counts["documents_out"] == 0
