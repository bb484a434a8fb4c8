"""Text sources: read documents from the embedded corpus, files, directories, globs, URLs and Hugging Face
datasets, and record the provenance of each (licence, retrieval time, size, digest)."""

from __future__ import annotations

import glob
import json
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from config.params import IngestParams
from runtime.errors import DataError, SourceUnavailable
from runtime.io import sha256_bytes

log = logging.getLogger(__name__)


TEXT_SUFFIXES = {".txt", ".md"}


JSONL_SUFFIXES = {".jsonl"}


EMBEDDED = {"embedded:pydoc"}


# The terms the embedded corpora are distributed under (a source listed in ingest.licenses overrides these).
EMBEDDED_LICENSES = {
    "embedded:pydoc": "PSF-2.0 (Python documentation, distributed with CPython)",
    "embedded:digits": "CC-BY-4.0 (UCI Optical Recognition of Handwritten Digits, via scikit-learn)",
}


UNDECLARED = "undeclared"


@dataclass(frozen=True)
class Document:
    text: str
    source: str  # where it came from: a path, URL, dataset id, or embedded name


@dataclass(frozen=True)
class SourceRecord:
    uri: str
    n_documents: int
    n_bytes: int
    sha256: str  # digest of the raw bytes read from the source


def provenance(sources: list[str], records: list[list[SourceRecord]], licenses: dict[str, str], retrieved_at: str,
               modality: str) -> dict:
    """Return the provenance record of one ingest: for every file, URL or dataset read, the source entry it came
    from, its URI, declared licence, retrieval time, size in bytes, item count and sha256 of the raw bytes."""
    rows = []
    for source, source_records in zip(sources, records):
        license_ = licenses.get(source) or EMBEDDED_LICENSES.get(source, UNDECLARED)
        rows += [{"source": source, "uri": r.uri, "license": license_, "retrieved_at": retrieved_at,
                  "n_bytes": r.n_bytes, "n_items": r.n_documents, "sha256": r.sha256} for r in source_records]
    return {"modality": modality, "retrieved_at": retrieved_at, "sources": rows,
            "undeclared_licenses": sorted({r["source"] for r in rows if r["license"] == UNDECLARED})}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def paragraph_documents(text: str, target_chars: int = 1000) -> list[str]:
    """Group consecutive paragraphs of `text` into documents of at least `target_chars` characters."""
    docs, current = [], []
    for para in text.split("\n\n"):
        if para.strip():
            current.append(para)
        if sum(len(p) for p in current) >= target_chars:
            docs.append("\n\n".join(current))
            current = []
    if current:
        docs.append("\n\n".join(current))
    return docs


def decode_utf8(data: bytes, where: str) -> str:
    """Decode UTF-8 or raise a DataError naming the source and the first bad byte offset."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{where} is not valid UTF-8 (byte {exc.start}: {data[exc.start:exc.start + 1]!r})") from None


def parse_jsonl(text: str, field: str, where: str) -> list[str]:
    """Return the `field` of every JSON line; raise DataError naming the line on malformed input."""
    texts = []
    for lineno, line in enumerate(text.split("\n"), 1):  # not splitlines: U+2028 may sit in a string
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get(field), str):
            raise DataError(f"{where}:{lineno}: expected an object with a string field {field!r}")
        texts.append(row[field])
    return texts


def documents_from_bytes(data: bytes, name: str, where: str, field: str) -> list[str]:
    """Split the raw bytes of one file into documents according to its suffix."""
    text = decode_utf8(data, where)
    suffix = Path(name.split("?")[0]).suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return parse_jsonl(text, field, where)
    return [text]


def read_embedded(name: str) -> tuple[list[str], bytes]:
    """Return the documents of an embedded corpus and the bytes they were built from."""
    from pydoc_data.topics import topics  # ships with CPython: the offline default corpus

    raw = "\n\n".join(topics[k] for k in sorted(topics))
    return paragraph_documents(raw), raw.encode("utf-8")


REMOTE_PREFIXES = ("embedded:", "hf:", "http://", "https://")


def _special_kind(path: Path) -> str | None:
    """What `path` is when it is not a regular file, folder or working symlink; None otherwise."""
    import stat

    try:
        mode = path.lstat().st_mode
    except OSError:
        return None
    if stat.S_ISLNK(mode):
        return None if path.exists() else "a symlink to a missing target"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    return None


def special_files(path: Path) -> list[tuple[Path, str]]:
    """Return what under `path` (a file or a folder, not following symlinked folders) is not a regular file or
    folder, with what it is: named pipes, sockets and devices (reading one blocks or never ends: `dvc status`
    and `dvc repro` hang hashing it) and symlinks whose target is missing (DVC fails on them)."""
    if path.is_dir() and not path.is_symlink():
        entries = [Path(folder) / name for folder, dirs, files in os.walk(path) for name in dirs + files]
    else:
        entries = [path]
    return sorted((p, what) for p in entries if (what := _special_kind(p)))


def check_local_sources(paths: list[Path], root: Path) -> None:
    """Raise DataError naming the first special file (see `special_files`) under any of `paths`."""
    def shown(p: Path) -> Path:
        return p.relative_to(root) if p.is_relative_to(root) else p

    for path in paths:
        for bad, what in special_files(path):
            raise DataError(f"{shown(bad)} is {what}: DVC and ingest cannot read it (DVC would hang or fail hashing "
                            f"{shown(path)}); remove it")


def local_source_paths(sources: list[str], root: Path) -> list[Path]:
    """The local files and folders among `sources` (globs: their fixed leading folder)."""
    out = []
    for source in sources:
        if source.startswith(REMOTE_PREFIXES):
            continue
        fixed = source.split("*")[0].split("?")[0].split("[")[0]
        path = Path(fixed) if Path(fixed).is_absolute() else root / fixed
        if path.exists() or path.is_symlink():
            out.append(path)
    return out


def expand_local(pattern: str, root: Path) -> list[Path]:
    """Resolve a file, directory or glob to the sorted list of readable text files it names."""
    path = Path(pattern) if Path(pattern).is_absolute() else root / pattern
    suffixes = TEXT_SUFFIXES | JSONL_SUFFIXES
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes]
        if not files:
            raise DataError(f"source {pattern!r}: directory has no {'/'.join(sorted(suffixes))} files")
        return sorted(files)
    if path.is_file():
        if path.suffix.lower() not in suffixes:
            raise DataError(f"source {pattern!r}: unsupported file type {path.suffix!r}; use .txt, .md or .jsonl")
        return [path]
    if glob.has_magic(pattern):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        files = [p for p in files if p.suffix.lower() in suffixes]
        if not files:
            raise DataError(f"source {pattern!r}: the glob matches no .txt, .md or .jsonl files")
        return files
    raise DataError(f"source {pattern!r}: no such file or directory")


def fetch_url(url: str, timeout_s: float) -> bytes:
    """Download a URL. Raise SourceUnavailable when trying again may help (unreachable, timeout, HTTP 5xx or 429)
    and DataError when it will not (other HTTP errors)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (scheme checked by caller)
            return resp.read()
    except urllib.error.HTTPError as exc:
        transient = exc.code >= 500 or exc.code == 429
        raise (SourceUnavailable if transient else DataError)(f"source {url!r}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SourceUnavailable(f"source {url!r}: could not fetch ({reason})") from None


def load_hf_dataset(spec: str, field: str):
    """Load one split of a Hugging Face dataset (a hub id, or a directory written by `Dataset.save_to_disk`) and
    check it has column `field`; raise DataError naming the source otherwise."""
    import datasets

    name, _, split = spec.partition(":")
    try:
        if Path(name).is_dir():
            ds = datasets.load_from_disk(name)
        else:
            ds = datasets.load_dataset(name, split=split or "train")
    except Exception as exc:  # the datasets library raises many types; all mean "could not load"
        raise DataError(f"source 'hf:{spec}': could not load dataset ({type(exc).__name__}: {exc})") from None
    if isinstance(ds, datasets.DatasetDict):
        if (split or "train") not in ds:
            raise DataError(f"source 'hf:{spec}': no split {split or 'train'!r}; available: {', '.join(ds)}")
        ds = ds[split or "train"]
    if field not in ds.column_names:
        raise DataError(f"source 'hf:{spec}': no column {field!r}; columns: {', '.join(ds.column_names)}")
    return ds


def read_hf(spec: str, field: str) -> tuple[list[str], bytes]:
    """Load a Hugging Face text dataset (a hub id, or a directory written by `Dataset.save_to_disk`)."""
    ds = load_hf_dataset(spec, field)
    texts = [t for t in ds[field] if isinstance(t, str)]
    return texts, "\n".join(texts).encode("utf-8")


def read_source(source: str, cfg: IngestParams, root: Path) -> tuple[list[Document], list[SourceRecord]]:
    """Read one configured source into documents plus a provenance record per file/URL/dataset."""
    if source.startswith("embedded:"):
        if source not in EMBEDDED:
            raise DataError(f"source {source!r}: unknown embedded corpus; allowed: {', '.join(sorted(EMBEDDED))}")
        texts, raw = read_embedded(source)
        records = [SourceRecord(source, len(texts), len(raw), sha256_bytes(raw))]
    elif source.startswith(("http://", "https://")):
        raw = fetch_url(source, cfg.timeout_s)
        texts = documents_from_bytes(raw, source, source, cfg.text_field)
        records = [SourceRecord(source, len(texts), len(raw), sha256_bytes(raw))]
    elif source.startswith("hf:"):
        texts, raw = read_hf(source[3:], cfg.text_field)
        records = [SourceRecord(source, len(texts), len(raw), sha256_bytes(raw))]
    else:
        texts, records = [], []
        for path in expand_local(source, root):
            raw = path.read_bytes()
            if not raw:  # skipped and counted (ingest's `skipped_empty_files`), like an undecodable image
                log.warning("ingest: skipped %s: empty (0 bytes)", path)
                records.append(SourceRecord(str(path), 0, 0, sha256_bytes(raw)))
                continue
            file_texts = documents_from_bytes(raw, path.name, str(path), cfg.text_field)
            texts += file_texts
            records.append(SourceRecord(str(path), len(file_texts), len(raw), sha256_bytes(raw)))
            if not path.resolve().is_relative_to(cfg.inputs_dir.resolve()):
                log.warning("%s is outside ingest.inputs_dir (%s): DVC will not notice when it changes",
                            path, cfg.inputs_dir)
    return [Document(t, source) for t in texts], records
