"""clean's pure logic: normalisation and the per-reason counts of dropped documents."""

from __future__ import annotations

import pytest

from config.params import CleanParams
from dataprep.text_clean import clean_documents, normalize, strip_controls


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


# ------------------------------------------------------------------------------------------------ personal data

PLANTED = ("Write to jane.doe@example.com or call +1 415 555 2671 from 192.168.10.20; card 4111 1111 1111 1111 "
           "and the mirror at https://admin:s3cret@mirror.example.org/pub are private. " + "Padding words. " * 4)
NEAR_MISS = ("Python 3.12.1 was released on 2024-01-15 at 12:30:45; see https://docs.python.org/3/ and use "
             "@property, a[::2] or 0xDEADBEEF; 4111 1111 1111 1112 fails the Luhn check. " + "More words here. " * 3)


def test_planted_personal_data_is_redacted_with_typed_placeholders_and_counted():
    result = clean_documents([PLANTED, NEAR_MISS], CleanParams(min_chars=1))
    redacted, untouched = result.texts
    for secret in ("jane.doe@example.com", "415 555 2671", "192.168.10.20", "4111 1111 1111 1111", "s3cret"):
        assert secret not in redacted
    for placeholder in ("<EMAIL>", "<PHONE>", "<IPV4>", "<CARD>", "<URL_CREDENTIALS>"):
        assert placeholder in redacted
    assert untouched == normalize(NEAR_MISS)[0]  # near-misses stay byte for byte
    c = result.counts
    assert (c["pii_email"], c["pii_phone"], c["pii_ipv4"], c["pii_card"], c["pii_url_credentials"]) == (1, 1, 1, 1, 1)
    assert c["pii_ipv6"] == 0 and c["pii_total"] == 5 and c["documents_with_pii"] == 1 and c["dropped_pii"] == 0


def test_pii_drop_removes_the_documents_holding_any_and_keep_leaves_them_but_counts():
    dropped = clean_documents([PLANTED, NEAR_MISS], CleanParams(min_chars=1, pii="drop"))
    assert dropped.texts == [normalize(NEAR_MISS)[0]] and dropped.counts["dropped_pii"] == 1
    kept = clean_documents([PLANTED, NEAR_MISS], CleanParams(min_chars=1, pii="keep"))
    assert kept.texts[0] == normalize(PLANTED)[0] and kept.counts["pii_total"] == 5


def test_documents_identical_after_redaction_are_duplicates():
    a = "Contact alice@example.com about the report. " * 3
    b = "Contact bob@example.org about the report. " * 3
    result = clean_documents([a, b], CleanParams(min_chars=1))
    assert len(result.texts) == 1 and result.counts["dropped_duplicate"] == 1 and result.counts["pii_email"] == 6
