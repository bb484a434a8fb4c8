"""Atomic file IO and content digests shared by the stages.

Every output is written to a temporary sibling and renamed into place, so a kill at any moment leaves either the
old output or the new one, never a half-written file that DVC or a later stage would accept.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success move it onto `path` (file or directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if not target.exists():
            raise FileNotFoundError(f"nothing was written to {target}")
        if target.is_file():
            with open(target, "rb") as fh:
                os.fsync(fh.fileno())
        _replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def previous_version(path: Path) -> Path:
    """Where a directory replaced by `atomic_path` waits while its successor is moved in."""
    return path.with_name(f".{path.name}.old")


def _replace(src: Path, dst: Path) -> None:
    """Move `src` onto `dst`; a directory `dst` is swapped out and removed only after the new one is in place."""
    if dst.is_dir() and not dst.is_symlink():
        old = previous_version(dst)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def write_text(path: Path, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, obj: Any) -> None:
    """Write pretty, key-sorted JSON atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _missing_input(path: Path) -> Exception:
    from runtime.errors import DataError

    return DataError(f"input {path} does not exist: run the stages before this one first (`dvc repro`)")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _missing_input(path) from None


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Write one JSON object per line, atomically."""
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh.read().split("\n") if line.strip()]
    except FileNotFoundError:
        raise _missing_input(path) from None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
