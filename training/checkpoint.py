"""Resumable training checkpoints with nothing pickled: safetensors for tensors, JSON for everything else.

A checkpoint is a directory holding the model weights, a flat safetensors file of every other tensor (optimizer
moments, RNG states) and `state.json` with the non-tensor structure, the step and a sha256 of each file. It is
written beside its final name and renamed into place; the checkpoint it replaces is kept as `<name>.prev`. So a
kill mid-write leaves the previous checkpoint intact, and a latest checkpoint found truncated or corrupt on load
(its files do not match their digests) is rejected with a warning and the previous one is used instead.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from runtime.io import sha256_file

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: data position and model train state stored separately
MODEL_FILE, TENSORS_FILE, STATE_FILE = "model.safetensors", "tensors.safetensors", "state.json"


def flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor in a nested dict/list structure by a reference, collecting tensors in `tensors`."""
    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"  # a counter, not the key path: distinct keys may spell the same path
        tensors[name] = obj.detach().cpu().contiguous()
        return {"$tensor": name}
    if isinstance(obj, dict):  # keys may be ints (optimizer state): keep them as pairs, not JSON object keys
        return {"$dict": [[k, flatten(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    return obj


def unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Invert `flatten`."""
    if isinstance(obj, dict) and "$tensor" in obj:
        return tensors[obj["$tensor"]]
    if isinstance(obj, dict) and "$dict" in obj:
        return {k: unflatten(v, tensors) for k, v in obj["$dict"]}
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    return obj


def previous_checkpoint(path: Path) -> Path:
    """Where the checkpoint before the latest one at `path` is kept."""
    return path.with_name(f"{path.name}.prev")


def save_checkpoint(path: Path, model: torch.nn.Module, state: dict[str, Any]) -> None:
    """Write `model` and `state` (any nesting of tensors, numbers, strings, lists, dicts) to directory `path`,
    keeping the checkpoint it replaces as `<path>.prev`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a run killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        save_model(model, str(tmp / MODEL_FILE))
        tensors: dict[str, torch.Tensor] = {}
        skeleton = flatten(state, "state", tensors)
        save_file(tensors, str(tmp / TENSORS_FILE))
        digests = {name: sha256_file(tmp / name) for name in (MODEL_FILE, TENSORS_FILE)}
        doc = {"format_version": FORMAT_VERSION, "sha256": digests, "state": skeleton}
        (tmp / STATE_FILE).write_text(json.dumps(doc), encoding="utf-8")
        # A kill between these steps leaves `path`, or `path.prev`, or both, each complete.
        previous = previous_checkpoint(path)
        if path.is_dir():
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(path, previous)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_checkpoint(path: Path, model: torch.nn.Module) -> dict[str, Any] | None:
    """Load weights into `model` and return the state, or None if there is no usable checkpoint.

    A missing, truncated or corrupt latest checkpoint falls back, with a warning, to the one before it."""
    state = _load(path, model)
    previous = previous_checkpoint(path)
    if state is None and previous.is_dir():
        log.warning("using the previous checkpoint %s", previous)
        state = _load(previous, model)
    return state


def _load(path: Path, model: torch.nn.Module) -> dict[str, Any] | None:
    try:
        doc = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        if doc.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format version {doc.get('format_version')} (expected {FORMAT_VERSION})")
        for name, digest in doc["sha256"].items():
            if sha256_file(path / name) != digest:
                raise ValueError(f"{name} does not match its checksum")
        load_model(model, str(path / MODEL_FILE), device=str(next(model.parameters()).device))
        return unflatten(doc["state"], load_file(str(path / TENSORS_FILE)))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        log.warning("ignoring checkpoint %s: %s", path, exc)
        return None
