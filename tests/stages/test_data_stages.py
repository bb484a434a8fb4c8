"""The data stages run for real on tiny inputs: ingest (every source kind), clean and preprocess."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from config.catalog import CLEAN_FILE, CORPUS_FILE, MANIFEST_FILE, META_FILE, TOKENIZER_FILE
from dataprep.tokenize import EOT, SPLITS, split_of, stream_bytes, train_tokenizer
from runtime.errors import DataError
from runtime.io import read_json, read_jsonl
from tasks.clean import clean
from tasks.ingest import ingest
from tasks.preprocess import preprocess

REPO_ROOT = Path(__file__).resolve().parents[2]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


def corpus(params) -> list[dict]:
    return read_jsonl(params.ingest.out_dir / CORPUS_FILE)


def manifest(params) -> dict:
    return read_json(params.ingest.out_dir / MANIFEST_FILE)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


LONG = "This paragraph is long enough to survive cleaning with the default minimum of sixty-four characters."


# ---------------------------------------------------------------------------------------------------- ingest: local


def test_ingest_reads_txt_md_and_jsonl_files_with_provenance(project):
    a = write(project.path("data/inputs/a.txt"), "Plain text document.\nSecond line.\n")
    b = write(project.path("data/inputs/b.md"), "# Title\n\nMarkdown caf\u00e9 \U0001f389 body.\n")
    c = write(project.path("data/inputs/c.jsonl"),
              '{"text": "row one"}\n{"text": "row two", "id": 2}\n\n{"text": "row three"}\n')
    sources = ["data/inputs/a.txt", "data/inputs/b.md", "data/inputs/c.jsonl"]
    params = project.make_params(ingest={"sources": sources})

    returned = ingest(params)

    rows = corpus(params)
    assert [r["text"] for r in rows] == [a.read_text(), b.read_text(), "row one", "row two", "row three"]
    assert [r["source"] for r in rows] == [sources[0], sources[1], sources[2], sources[2], sources[2]]
    m = manifest(params)
    assert m["n_documents"] == 5
    assert m["sources"] == [
        {"uri": str(p), "n_documents": n, "n_bytes": p.stat().st_size, "sha256": sha256(p)}
        for p, n in ((a, 1), (b, 1), (c, 3))
    ]
    assert m["corpus_sha256"] == sha256(params.ingest.out_dir / CORPUS_FILE)
    metrics = read_json(project.path("metrics/ingest.json"))
    assert metrics == returned
    assert metrics["n_documents"] == 5
    assert metrics["n_sources"] == 3
    assert metrics["n_bytes"] == sum(p.stat().st_size for p in (a, b, c))
    assert metrics["corpus_sha256"] == m["corpus_sha256"]
    before = project.path("metrics/ingest.json").read_bytes()
    ingest(params)  # same data, byte-identical metrics: stages that depend on the file do not rerun
    assert project.path("metrics/ingest.json").read_bytes() == before


def test_ingest_directory_reads_supported_files_recursively_in_sorted_order(project):
    write(project.path("data/inputs/b.txt"), "bee")
    write(project.path("data/inputs/a/z.md"), "zed")
    write(project.path("data/inputs/a/rows.jsonl"), '{"text": "row"}\n')
    write(project.path("data/inputs/skip.csv"), "not,read\n")
    write(project.path("data/inputs/skip.bin"), b"\xff\xfe")
    params = project.make_params(ingest={"sources": ["data/inputs"]})

    ingest(params)

    assert [r["text"] for r in corpus(params)] == ["row", "zed", "bee"]
    assert {r["source"] for r in corpus(params)} == {"data/inputs"}
    uris = [s["uri"] for s in manifest(params)["sources"]]
    assert uris == [str(project.path(p)) for p in ("data/inputs/a/rows.jsonl", "data/inputs/a/z.md",
                                                   "data/inputs/b.txt")]


def test_ingest_glob_selects_matching_files(project):
    write(project.path("data/inputs/one.md"), "one")
    write(project.path("data/inputs/deep/two.md"), "two")
    write(project.path("data/inputs/three.txt"), "three")
    params = project.make_params(ingest={"sources": ["data/inputs/**/*.md"]})

    ingest(params)

    assert sorted(r["text"] for r in corpus(params)) == ["one", "two"]
    assert manifest(params)["n_documents"] == 2


def test_ingest_absolute_path_and_several_sources_in_order(project, tmp_path_factory):
    outside = write(tmp_path_factory.mktemp("outside") / "doc.txt", "outside the project")
    write(project.path("data/inputs/in.txt"), "inside the project")
    params = project.make_params(ingest={"sources": ["data/inputs/in.txt", str(outside)]})

    ingest(params)

    assert [r["text"] for r in corpus(params)] == ["inside the project", "outside the project"]
    assert [s["uri"] for s in manifest(params)["sources"]] == [str(project.path("data/inputs/in.txt")), str(outside)]


def test_ingest_warns_about_files_outside_inputs_dir(project, caplog):
    write(project.path("elsewhere/doc.txt"), "not watched by DVC")
    params = project.make_params(ingest={"sources": ["elsewhere/doc.txt"]})

    with caplog.at_level("WARNING"):
        ingest(params)

    assert any("outside ingest.inputs_dir" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("files", "source", "expected"),
    [
        ({}, "data/inputs/nope.txt", "source 'data/inputs/nope.txt': no such file or directory"),
        ({}, "missing_dir/*.txt", "source 'missing_dir/*.txt': the glob matches no .txt, .md or .jsonl files"),
        ({"data/inputs/x.csv": "a,b"}, "data/inputs/x.csv",
         "source 'data/inputs/x.csv': unsupported file type '.csv'; use .txt, .md or .jsonl"),
        ({"data/inputs/x.csv": "a,b"}, "data/inputs", "source 'data/inputs': directory has no .jsonl/.md/.txt files"),
        ({}, "embedded:wiki", "source 'embedded:wiki': unknown embedded corpus; allowed: embedded:pydoc"),
    ],
)
def test_ingest_unusable_source_is_named_in_the_error(project, files, source, expected):
    for name, text in files.items():
        write(project.path(name), text)
    params = project.make_params(ingest={"sources": [source]})

    with pytest.raises(DataError) as info:
        ingest(params)

    assert str(info.value) == expected
    assert not params.ingest.out_dir.exists()
    assert not params.ingest.metrics_path.exists()


def test_a_zero_byte_file_is_skipped_and_counted_and_the_run_goes_on(project, caplog):
    empty = write(project.path("data/inputs/empty.txt"), b"")
    write(project.path("data/inputs/notes.txt"), b"Some notes worth keeping.\n\nAnd a second paragraph.")
    params = project.make_params(ingest={"sources": ["data/inputs"]})

    with caplog.at_level("WARNING"):
        metrics = ingest(params)

    assert metrics["skipped_empty_files"] == 1 and metrics["n_documents"] >= 1
    assert f"ingest: skipped {empty}: empty (0 bytes)" in [r.getMessage() for r in caplog.records]


def test_only_zero_byte_files_is_an_error_that_says_so(project):
    write(project.path("data/inputs/empty.txt"), b"")
    params = project.make_params(ingest={"sources": ["data/inputs/empty.txt"]})

    with pytest.raises(DataError) as info:
        ingest(params)

    assert str(info.value) == "the sources yielded no documents (1 empty file skipped)"
    assert not params.ingest.out_dir.exists()


def test_ingest_invalid_utf8_file_is_an_error(project):
    bad = write(project.path("data/inputs/latin1.txt"), "na\u00efve".encode("latin-1"))
    params = project.make_params(ingest={"sources": ["data/inputs"]})

    with pytest.raises(DataError) as info:
        ingest(params)

    assert str(info.value) == f"{bad} is not valid UTF-8 (byte 2: b'\\xef')"


def test_ingest_malformed_jsonl_names_file_and_line(project):
    rows = write(project.path("data/inputs/rows.jsonl"), '{"text": "a"}\n{"txt": "b"}\n')
    params = project.make_params(ingest={"sources": ["data/inputs/rows.jsonl"]})

    with pytest.raises(DataError, match=f"^{rows}:2: expected an object with a string field 'text'$"):
        ingest(params)


def test_failed_ingest_leaves_the_previous_output_untouched(project):
    write(project.path("data/inputs/good.txt"), "good document")
    params = project.make_params(ingest={"sources": ["data/inputs/good.txt"]})
    ingest(params)
    before = snapshot(params.ingest.out_dir)
    metrics_before = params.ingest.metrics_path.read_bytes()
    provenance_before = params.ingest.provenance_path.read_bytes()

    write(project.path("data/inputs/bad.txt"), b"\xff")
    with pytest.raises(DataError, match="not valid UTF-8"):
        ingest(project.make_params(ingest={"sources": ["data/inputs/good.txt", "data/inputs/bad.txt"]}))

    assert snapshot(params.ingest.out_dir) == before
    assert params.ingest.metrics_path.read_bytes() == metrics_before
    assert params.ingest.provenance_path.read_bytes() == provenance_before
    assert sorted(p.name for p in params.ingest.out_dir.parent.iterdir()) == ["inputs", "provenance.json", "raw"]


def test_ingest_rerun_replaces_the_output(project):
    write(project.path("data/inputs/a.txt"), "first version")
    params = project.make_params(ingest={"sources": ["data/inputs/a.txt"]})
    ingest(params)
    write(project.path("data/inputs/a.txt"), "second version")

    ingest(params)

    assert [r["text"] for r in corpus(params)] == ["second version"]
    assert sorted(p.name for p in params.ingest.out_dir.iterdir()) == [CORPUS_FILE, MANIFEST_FILE]


# ---------------------------------------------------------------------------------------------------- ingest: http


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (signature of the base class)
        pass


@pytest.fixture
def http_server(tmp_path, monkeypatch):
    """Serve `<tmp_path>/www` on localhost; yield (directory, base URL)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    www = tmp_path / "www"
    www.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_ingest_http_urls(project, http_server):
    www, base = http_server
    page = write(www / "page.txt", "Served over HTTP: caf\u00e9.\n")
    rows = write(www / "rows.jsonl", '{"text": "remote one"}\n{"text": "remote two"}\n')
    urls = [f"{base}/page.txt", f"{base}/rows.jsonl"]
    params = project.make_params(ingest={"sources": urls})

    ingest(params)

    assert [r["text"] for r in corpus(params)] == [page.read_text(), "remote one", "remote two"]
    assert [r["source"] for r in corpus(params)] == [urls[0], urls[1], urls[1]]
    assert manifest(params)["sources"] == [
        {"uri": urls[0], "n_documents": 1, "n_bytes": page.stat().st_size, "sha256": sha256(page)},
        {"uri": urls[1], "n_documents": 2, "n_bytes": rows.stat().st_size, "sha256": sha256(rows)},
    ]


def test_ingest_http_404_is_an_error_naming_url_and_status(project, http_server):
    _, base = http_server
    url = f"{base}/missing.txt"
    params = project.make_params(ingest={"sources": [url]})

    with pytest.raises(DataError) as info:
        ingest(params)

    assert str(info.value).startswith(f"source {url!r}: HTTP 404")
    assert not params.ingest.out_dir.exists()


def test_ingest_unreachable_url_is_an_error(project, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/corpus.txt"
    params = project.make_params(ingest={"sources": [url], "timeout_s": 5})

    with pytest.raises(DataError, match=rf"^source '{url}': could not fetch \("):
        ingest(params)


# ---------------------------------------------------------------------------------------------------- ingest: hf


def test_ingest_hugging_face_dataset_saved_to_disk(project):
    import datasets

    texts = ["first hf document", "second hf document \u00e9", "third"]
    saved = project.path("hf_ds")
    datasets.Dataset.from_dict({"text": texts, "label": [0, 1, 0]}).save_to_disk(str(saved))
    params = project.make_params(ingest={"sources": [f"hf:{saved}"]})

    ingest(params)

    assert [r["text"] for r in corpus(params)] == texts
    assert {r["source"] for r in corpus(params)} == {f"hf:{saved}"}
    (record,) = manifest(params)["sources"]
    raw = "\n".join(texts).encode("utf-8")
    assert record == {"uri": f"hf:{saved}", "n_documents": 3, "n_bytes": len(raw),
                      "sha256": hashlib.sha256(raw).hexdigest()}


def test_ingest_hugging_face_dataset_dict_split_and_field(project):
    import datasets

    saved = project.path("hf_dict")
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"body": ["train row"]}),
        "validation": datasets.Dataset.from_dict({"body": ["val row a", "val row b"]}),
    }).save_to_disk(str(saved))

    params = project.make_params(ingest={"sources": [f"hf:{saved}:validation"], "text_field": "body"})
    ingest(params)
    assert [r["text"] for r in corpus(params)] == ["val row a", "val row b"]

    with pytest.raises(DataError, match=r"no split 'test'; available: train, validation"):
        ingest(project.make_params(ingest={"sources": [f"hf:{saved}:test"], "text_field": "body"}))
    with pytest.raises(DataError, match=r"no column 'text'; columns: body"):
        ingest(project.make_params(ingest={"sources": [f"hf:{saved}"], "text_field": "text"}))


def test_ingest_hugging_face_dataset_that_cannot_load_is_an_error(project):
    params = project.make_params(ingest={"sources": ["hf:no-such-user/no-such-dataset-for-tests"]})
    with pytest.raises(DataError, match=r"^source 'hf:no-such-user/no-such-dataset-for-tests': could not load dataset"):
        ingest(params)


# ---------------------------------------------------------------------------------------------------- ingest: embedded


def test_ingest_embedded_pydoc(project):
    params = project.make_params(ingest={"sources": ["embedded:pydoc"]})

    metrics = ingest(params)

    rows = corpus(params)
    assert 200 <= len(rows) <= 5000
    assert {r["source"] for r in rows} == {"embedded:pydoc"}
    assert sum(len(r["text"]) >= 1000 for r in rows) >= 0.9 * len(rows)
    (record,) = manifest(params)["sources"]
    assert record["uri"] == "embedded:pydoc"
    assert record["n_documents"] == len(rows)
    assert record["n_bytes"] > 100_000
    assert len(record["sha256"]) == 64 and int(record["sha256"], 16) >= 0
    assert metrics["n_bytes"] == record["n_bytes"]
    assert metrics["n_documents"] == len(rows)


# ---------------------------------------------------------------------------------------------------- clean


def test_clean_writes_documents_and_counts(project):
    rows = [LONG, "  " + LONG.replace(" ", "   ") + "\n\n\n", "too short", "", LONG + " Different.",
            LONG + "\x00 With a control."]
    write(project.path("data/inputs/rows.jsonl"), "".join(json.dumps({"text": r}) + "\n" for r in rows))
    params = project.make_params(ingest={"sources": ["data/inputs/rows.jsonl"]})
    ingest(params)

    returned = clean(params)

    kept = [r["text"] for r in read_jsonl(params.clean.out_dir / CLEAN_FILE)]
    assert kept == [LONG, LONG + " Different.", LONG + " With a control."]
    metrics = read_json(project.path("metrics/clean.json"))
    assert metrics == returned
    assert metrics["documents_in"] == 6
    assert metrics["documents_out"] == 3
    assert metrics["dropped_duplicate"] == 1
    assert metrics["dropped_too_short"] == 1
    assert metrics["dropped_empty"] == 1
    assert metrics["dropped_too_long"] == 0
    assert metrics["control_chars_removed"] == 1
    assert metrics["chars_out"] == sum(len(t) for t in kept)


def test_clean_empty_corpus_is_an_error_and_creates_no_output(project):
    project.write_corpus(20)
    params = project.make_params(clean={"min_chars": 1_000_000, "max_chars": 2_000_000})
    ingest(params)

    with pytest.raises(DataError) as info:
        clean(params)

    message = str(info.value)
    assert message.startswith("the corpus is empty after cleaning: 20 documents in")
    assert "20 shorter than clean.min_chars=1000000" in message
    assert message.endswith(f"0 holding personal data (clean.pii={params.clean.pii})")  # the policy in force
    assert not params.clean.out_dir.exists()
    assert not params.clean.metrics_path.exists()
    assert sorted(p.name for p in project.path("data").iterdir()) == ["inputs", "provenance.json", "raw"]


def test_clean_empty_corpus_leaves_the_previous_output_untouched(project):
    project.write_corpus(20)
    params = project.make_params()
    ingest(params)
    clean(params)
    before = snapshot(params.clean.out_dir)
    metrics_before = params.clean.metrics_path.read_bytes()

    with pytest.raises(DataError, match="empty after cleaning"):
        clean(project.make_params(clean={"min_chars": 1_000_000, "max_chars": 2_000_000}))

    assert snapshot(params.clean.out_dir) == before
    assert params.clean.metrics_path.read_bytes() == metrics_before


# ---------------------------------------------------------------------------------------------------- preprocess


def run_data_stages(params) -> dict:
    ingest(params)
    clean(params)
    return preprocess(params)


def test_preprocess_writes_tokenizer_streams_and_meta(project, make_documents):
    docs = project.write_corpus(200)
    params = project.make_params()

    metrics = run_data_stages(params)

    from tokenizers import Tokenizer

    out = params.preprocess.out_dir
    assert sorted(p.name for p in out.iterdir()) == sorted([TOKENIZER_FILE, META_FILE, "train.npy", "val.npy",
                                                            "test.npy"])
    tok = Tokenizer.from_file(str(out / TOKENIZER_FILE))
    meta = read_json(out / META_FILE)
    assert meta["vocab_size"] == tok.get_vocab_size() == 300
    assert meta["eot_id"] == tok.token_to_id(EOT) == 0
    assert meta["tokenizer"] == "bpe"
    assert meta["dtype"] == "uint16"

    expected = {s: [d for d in docs if split_of(d, 0.1, 0.1) == s] for s in SPLITS}
    assert all(expected[s] for s in SPLITS)
    for split in SPLITS:
        tokens = np.load(out / f"{split}.npy", mmap_mode="r")
        assert isinstance(tokens, np.memmap)
        assert tokens.dtype == np.uint16
        assert meta[split]["n_tokens"] == tokens.size
        assert meta[split]["n_documents"] == len(expected[split])
        assert meta[split]["n_bytes"] == stream_bytes(expected[split])
        assert 0 < meta[split]["byte_entropy_bits"] < 8
        # the stream is `EOT doc EOT doc ...` and decodes back to exactly the split's documents
        starts = np.flatnonzero(np.asarray(tokens) == 0).tolist()
        assert starts[0] == 0 and len(starts) == len(expected[split])
        pieces = np.split(np.asarray(tokens), starts[1:])
        assert [tok.decode(p[1:].tolist()) for p in pieces] == expected[split]

    assert read_json(project.path("metrics/preprocess.json")) == metrics
    assert metrics["vocab_size"] == 300
    assert sum(metrics[f"{s}_n_documents"] for s in SPLITS) == 200
    assert metrics["train_n_tokens"] == meta["train"]["n_tokens"]
    assert 1.0 < metrics["bytes_per_token"] == round(meta["train"]["n_bytes"] / meta["train"]["n_tokens"], 4)


def test_preprocess_is_reproducible(project):
    project.write_corpus(200)
    params = project.make_params()
    run_data_stages(params)
    first = snapshot(params.preprocess.out_dir)

    preprocess(params)

    assert snapshot(params.preprocess.out_dir) == first


def test_tokenizer_is_trained_on_the_train_split_only(project, make_documents):
    """A word repeated only in test documents would become merged tokens if test data leaked into training."""
    docs = make_documents(200)
    assert not any(c in d for d in docs for c in "qzjx")  # the generated corpus never uses these letters
    markers, k = [], 0
    while len(markers) < 3:
        doc = f"Marker {k}. " + " ".join(["qzjx"] * 300)
        if split_of(doc, 0.1, 0.1) == "test":
            markers.append(doc)
        k += 1
    write(project.path("data/inputs/rows.jsonl"), "".join(json.dumps({"text": d}) + "\n" for d in docs + markers))
    params = project.make_params(ingest={"sources": ["data/inputs/rows.jsonl"]})

    run_data_stages(params)

    from tokenizers import Tokenizer

    def merged_marker_tokens(tokenizer) -> list[str]:
        return [t for t in tokenizer.get_vocab() if t != EOT and len(t) > 1 and any(c in t for c in "qzjx")]

    # the check can fail: trained on every document, the tokenizer does learn the marker
    assert merged_marker_tokens(train_tokenizer(docs + markers, 300))
    tok = Tokenizer.from_file(str(params.preprocess.out_dir / TOKENIZER_FILE))
    assert merged_marker_tokens(tok) == []
    assert len(tok.encode(" qzjx").ids) == len(" qzjx")  # one byte token per character
    assert read_json(params.preprocess.out_dir / META_FILE)["test"]["n_documents"] >= 3


def test_preprocess_too_few_documents_is_an_error(project):
    project.write_corpus(3)
    params = project.make_params()
    ingest(params)
    clean(params)

    with pytest.raises(DataError, match=r"is empty: 3 documents are too few for preprocess.val_fraction=0.1"):
        preprocess(params)

    assert not params.preprocess.out_dir.exists()


def in_memory_reference(params, directory: Path) -> dict[str, bytes]:
    """What the stage wrote before it streamed: every split in memory, encoded in one batch, saved by np.save."""
    import math
    from collections import Counter

    from dataprep.tokenize import encode_stream, split_documents, train_char_tokenizer
    from runtime.io import write_json

    cfg = params.preprocess
    splits = split_documents([r["text"] for r in read_jsonl(params.clean.out_dir / CLEAN_FILE)], cfg)
    if cfg.tokenizer == "char":
        tok = train_char_tokenizer(splits["train"])
    else:
        tok = train_tokenizer(splits["train"], cfg.vocab_size)
    directory.mkdir()
    tok.save(str(directory / TOKENIZER_FILE))
    meta = {"modality": "text", "tokenizer": cfg.tokenizer, "vocab_size": tok.get_vocab_size(), "eot_id": 0}
    for split, docs in splits.items():
        ids = encode_stream(tok, docs)
        np.save(directory / f"{split}.npy", ids)
        counts = Counter(b for d in docs for b in d.encode("utf-8"))
        total = sum(counts.values())
        entropy = -sum(c / total * math.log2(c / total) for c in counts.values())
        meta[split] = {"n_documents": len(docs), "n_tokens": int(ids.size), "n_bytes": stream_bytes(docs),
                       "byte_entropy_bits": round(entropy, 6)}
    meta["dtype"] = str(ids.dtype)
    write_json(directory / META_FILE, meta)
    return snapshot(directory)


@pytest.mark.parametrize("tokenizer", ["bpe", "char"])
def test_preprocess_output_is_the_same_in_any_batch_size_and_as_in_memory(project, make_documents, tmp_path_factory,
                                                                          tokenizer):
    """The stage streams the corpus in batches: one document per batch, a few, or all in one must write the same
    bytes, and the same bytes as encoding each split whole in memory."""
    docs = make_documents(300) + ["caf\u00e9 na\u00efve \u00fcber \U0001f389 " * 8, "\u65e5\u672c\u8a9e " * 30]
    clean_dir = project.path("data/clean")
    clean_dir.mkdir(parents=True)
    (clean_dir / CLEAN_FILE).write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs),
                                        encoding="utf-8")
    params = project.make_params(preprocess={"tokenizer": tokenizer})

    outputs = []
    for batch_bytes in (1, 700, 1 << 30):  # a document per batch, a few per batch, all in one
        metrics = preprocess(params, batch_bytes=batch_bytes)
        outputs.append((snapshot(params.preprocess.out_dir), metrics))

    assert outputs[0] == outputs[1] == outputs[2]
    assert outputs[0][0] == in_memory_reference(params, tmp_path_factory.mktemp("reference") / "processed")
    assert sum(outputs[0][1][f"{s}_n_documents"] for s in SPLITS) == len(docs)


def write_clean(project, docs: list[str]) -> None:
    clean_dir = project.path("data/clean")
    clean_dir.mkdir(parents=True, exist_ok=True)
    (clean_dir / CLEAN_FILE).write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs),
                                        encoding="utf-8")


def test_preprocess_trains_bpe_on_its_sample_and_writes_the_same_bytes_on_every_run(project, make_documents):
    """A train split over `tokenizer_train_mb`: the tokenizer is the one trained on the sample (the documents of
    smallest sample key that fit, in corpus order); rerunning writes the same bytes; the streams are unchanged
    in layout (each document encoded whole after EOT)."""
    from tokenizers import Tokenizer

    from dataprep.tokenize import sample_key, split_documents

    docs = make_documents(300)
    write_clean(project, docs)
    params = project.make_params(preprocess={"tokenizer_train_mb": 0.01})  # 10 kB of a ~60 kB train split

    first = preprocess(params)
    outputs = snapshot(params.preprocess.out_dir)
    second = preprocess(params)

    assert snapshot(params.preprocess.out_dir) == outputs and first == second
    cfg = params.preprocess
    train = split_documents(docs, cfg)["train"]
    by_key = sorted(train, key=lambda d: sample_key(d.encode("utf-8")))
    n_fit = next(i for i in range(len(by_key) + 1)
                 if i == len(by_key) or sum(len(d.encode()) for d in by_key[:i + 1]) > 10_000)
    chosen = set(by_key[:n_fit])
    sample = [d for d in train if d in chosen]
    assert 0 < len(sample) < len(train)
    saved = Tokenizer.from_file(str(cfg.out_dir / TOKENIZER_FILE))
    assert saved.to_str() == Tokenizer.from_str(train_tokenizer(sample, cfg.vocab_size).to_str()).to_str()
    eot = saved.token_to_id(EOT)
    stream = np.load(cfg.out_dir / "val.npy").tolist()
    val = split_documents(docs, cfg)["val"]
    assert stream == [t for d in val for t in (eot, *saved.encode(d, add_special_tokens=False).ids)]


def test_a_tokenizer_sample_larger_than_the_train_split_changes_nothing(project, make_documents, tmp_path_factory):
    """The default sample keeps small corpora (the embedded one) byte-identical to training on the whole split."""
    write_clean(project, make_documents(200))
    params = project.make_params(preprocess={"tokenizer_train_mb": None})
    preprocess(params)
    whole = snapshot(params.preprocess.out_dir)

    for mb in (16, 1000):
        preprocess(project.make_params(preprocess={"tokenizer_train_mb": mb}))
        assert snapshot(params.preprocess.out_dir) == whole


def test_the_char_tokenizer_reads_the_whole_train_split_whatever_the_sample(project, make_documents):
    from tokenizers import Tokenizer

    rare = "rare \u00e6\u00f8\u00e5 characters " * 5
    assert split_of(rare, 0.1, 0.1) == "train"
    write_clean(project, [*make_documents(200), rare])
    params = project.make_params(preprocess={"tokenizer": "char", "tokenizer_train_mb": 0.001})
    preprocess(params)
    with_sample = snapshot(params.preprocess.out_dir)

    preprocess(project.make_params(preprocess={"tokenizer": "char", "tokenizer_train_mb": None}))

    assert snapshot(params.preprocess.out_dir) == with_sample
    vocab = Tokenizer.from_file(str(params.preprocess.out_dir / TOKENIZER_FILE)).get_vocab()
    assert {"\u00e6", "\u00f8", "\u00e5"} <= set(vocab)


def test_preprocess_without_clean_output_asks_to_run_the_earlier_stages(project):
    params = project.make_params()

    with pytest.raises(DataError, match=r"documents.jsonl does not exist: run the stages before this one first"):
        preprocess(params)

    assert not params.preprocess.out_dir.exists()


# ---------------------------------------------------------------------------------------------------- as processes


def test_data_stages_run_as_processes_from_the_project_params_file(project):
    project.write_corpus(200)
    project.make_params()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}

    for stage in ("ingest", "clean", "preprocess"):
        proc = subprocess.run([sys.executable, "-m", f"tasks.{stage}"], cwd=project.root, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "error:" not in proc.stderr

    meta = read_json(project.path("data/processed", META_FILE))
    assert sum(meta[s]["n_documents"] for s in SPLITS) == 200
    assert read_json(project.path("metrics/clean.json"))["documents_out"] == 200


# ---------------------------------------------------------------------------------------------------- provenance


def test_ingest_records_licence_retrieval_time_size_and_digest_of_every_source_outside_its_output(project):
    from datetime import datetime

    a = write(project.path("data/inputs/notes/a.txt"), LONG)
    b = write(project.path("data/inputs/notes/b.txt"), LONG + " Another one.")
    c = write(project.path("data/inputs/extra.jsonl"), json.dumps({"text": LONG + " Third."}) + "\n")
    params = project.make_params(ingest={"sources": ["data/inputs/notes", "data/inputs/extra.jsonl"],
                                         "licenses": {"data/inputs/notes": "CC-BY-4.0"}})
    ingest(params)
    record = read_json(params.ingest.provenance_path)
    assert record["modality"] == "text"
    rows = {Path(r["uri"]).name: r for r in record["sources"]}
    assert set(rows) == {"a.txt", "b.txt", "extra.jsonl"}
    for path in (a, b, c):
        row = rows[path.name]
        assert row["sha256"] == sha256(path) and row["n_bytes"] == path.stat().st_size and row["n_items"] == 1
        assert datetime.fromisoformat(row["retrieved_at"]).tzinfo is not None
    assert rows["a.txt"]["license"] == rows["b.txt"]["license"] == "CC-BY-4.0"
    assert rows["extra.jsonl"]["license"] == "undeclared"
    assert record["undeclared_licenses"] == ["data/inputs/extra.jsonl"]

    # The retrieval time lives outside ingest.out_dir: a rerun on the same data leaves clean's input identical.
    before = snapshot(params.ingest.out_dir)
    ingest(params)
    assert snapshot(params.ingest.out_dir) == before
    assert not params.ingest.provenance_path.is_relative_to(params.ingest.out_dir)


def test_embedded_sources_carry_their_licence_and_a_licence_for_an_unlisted_source_is_refused(project):
    from runtime.errors import ParamsError

    params = project.make_params(ingest={"sources": ["embedded:pydoc"]})
    ingest(params)
    (row,) = read_json(params.ingest.provenance_path)["sources"]
    assert row["uri"] == "embedded:pydoc" and row["license"].startswith("PSF-2.0")
    with pytest.raises(ParamsError, match=r"ingest.licenses: 'data/other' is not a listed source"):
        project.make_params(ingest={"sources": ["embedded:pydoc"], "licenses": {"data/other": "MIT"}})
