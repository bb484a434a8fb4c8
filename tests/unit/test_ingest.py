"""ingest's pure logic: paragraph grouping, strict UTF-8, JSONL parsing and per-suffix splitting."""

from __future__ import annotations

import json

import pytest

from dataprep.sources import decode_utf8, documents_from_bytes, paragraph_documents, parse_jsonl
from runtime.errors import DataError


def test_paragraph_documents_groups_paragraphs_up_to_the_target():
    a, b, c, d = "a" * 600, "b" * 600, "c" * 300, "d" * 10
    docs = paragraph_documents("\n\n".join([a, b, c, d]), target_chars=1000)
    assert docs == [f"{a}\n\n{b}", f"{c}\n\n{d}"]


def test_paragraph_documents_keeps_every_paragraph_in_order():
    paras = [f"paragraph {i} " + "word " * (i % 17) for i in range(200)]
    text = "\n\n".join(paras)
    docs = paragraph_documents(text, target_chars=300)
    assert "\n\n".join(docs) == text
    assert all(sum(len(p) for p in doc.split("\n\n")) >= 300 for doc in docs[:-1])


def test_paragraph_documents_skips_blank_paragraphs():
    docs = paragraph_documents("one\n\n\n\n   \n\ntwo", target_chars=1)
    assert docs == ["one", "two"]


def test_paragraph_documents_of_short_or_empty_text():
    assert paragraph_documents("just one line", target_chars=1000) == ["just one line"]
    assert paragraph_documents("", target_chars=10) == []
    assert paragraph_documents("\n\n\n\n") == []


def test_decode_utf8_accepts_multibyte_text():
    assert decode_utf8("h\u00e9 \U0001f389".encode("utf-8"), "x.txt") == "h\u00e9 \U0001f389"


@pytest.mark.parametrize(
    ("data", "offset", "byte"),
    [
        (b"ab\xffcd", 2, r"b'\xff'"),
        ("h\u00e9llo".encode("utf-8") + b"\xc3", 6, r"b'\xc3'"),  # truncated sequence at the end
        ("\u00e9".encode("latin-1") + b"rest", 0, r"b'\xe9'"),
    ],
)
def test_decode_utf8_error_names_source_and_byte_offset(data, offset, byte):
    with pytest.raises(DataError) as info:
        decode_utf8(data, "inputs/notes.txt")
    assert str(info.value) == f"inputs/notes.txt is not valid UTF-8 (byte {offset}: {byte})"


def test_parse_jsonl_reads_the_field_and_skips_blank_lines():
    text = '{"text": "one", "id": 1}\n\n   \n{"text": "t\\u00e9 \\ud83c\\udf89"}\n{"text": ""}\n'
    assert parse_jsonl(text, "text", "f.jsonl") == ["one", "t\u00e9 \U0001f389", ""]


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_parse_jsonl_splits_on_newlines_only(separator):
    """JSON strings may hold U+2028, U+2029 and NEL unescaped (json.dumps(ensure_ascii=False) writes them so):
    a JSONL line ends at a newline, not at every character str.splitlines() treats as a line break."""
    rows = [{"text": f"before{separator}after"}, {"text": "next row"}]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    assert parse_jsonl(text, "text", "f.jsonl") == [f"before{separator}after", "next row"]


def test_parse_jsonl_accepts_crlf_line_endings():
    assert parse_jsonl('{"text": "a"}\r\n{"text": "b"}\r\n', "text", "f.jsonl") == ["a", "b"]


def test_parse_jsonl_uses_the_configured_field():
    assert parse_jsonl('{"body": "x", "text": "y"}', "body", "f.jsonl") == ["x"]


def test_parse_jsonl_malformed_line_names_the_line():
    text = '{"text": "ok"}\n\n{"text": "broken"\n{"text": "fine"}\n'
    with pytest.raises(DataError) as info:
        parse_jsonl(text, "text", "data/c.jsonl")
    assert str(info.value).startswith("data/c.jsonl:3: not valid JSON (")


@pytest.mark.parametrize(
    "line",
    ['{"body": "no text field"}', '{"text": 42}', '["text", "a list"]', '"just a string"', '{"text": null}'],
)
def test_parse_jsonl_line_without_a_string_field_names_line_and_field(line):
    with pytest.raises(DataError) as info:
        parse_jsonl('{"text": "ok"}\n' + line + "\n", "text", "c.jsonl")
    assert str(info.value) == "c.jsonl:2: expected an object with a string field 'text'"


@pytest.mark.parametrize("name", ["notes.txt", "README.md", "NOTES.TXT"])
def test_text_files_are_one_document(name):
    raw = '{"text": "looks like json"}\n{"text": "but is not treated as such"}\n'.encode("utf-8")
    assert documents_from_bytes(raw, name, name, "text") == [raw.decode("utf-8")]


@pytest.mark.parametrize("name", ["rows.jsonl", "ROWS.JSONL", "https://host/rows.jsonl?download=1"])
def test_jsonl_files_are_one_document_per_line(name):
    raw = b'{"text": "first"}\n{"text": "second"}\n'
    assert documents_from_bytes(raw, name, name, "text") == ["first", "second"]


def test_documents_from_bytes_rejects_invalid_utf8_before_parsing():
    with pytest.raises(DataError, match=r"^rows\.jsonl is not valid UTF-8 \(byte 10"):
        documents_from_bytes(b'{"text": "\xff"}', "rows.jsonl", "rows.jsonl", "text")
