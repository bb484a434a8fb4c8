"""Resolve `model.init_from` to local files: the checkpoint a generator starts from and the tokenizer it implies.

Accepted forms:
- `models:/NAME@alias` or `models:/NAME/VERSION` — a model this project registered (downloaded from the registry
  at `register.tracking_uri`; pin a version for reproducible reruns, since an alias can move under DVC's feet);
- a local directory holding a genpipe generator (`generator.json` + `model.safetensors`) or a Hugging Face model
  (`config.json` + weights, saved by `save_pretrained`), with its `tokenizer.json`;
- a Hugging Face hub id such as `gpt2` (needs a network connection; downloaded into the HF cache).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from config.catalog import TOKENIZER_FILE
from config.params import Params
from models.base import CONFIG_FILE
from runtime.errors import DataError
from runtime.io import read_json


@dataclass(frozen=True)
class Pretrained:
    spec: str  # what the user wrote in model.init_from
    kind: str  # "genpipe" (generator.json + safetensors) or "hf" (a transformers save_pretrained directory)
    model_dir: Path
    tokenizer_path: Path


def _from_dir(spec: str, directory: Path) -> Pretrained:
    """Classify a local directory as a genpipe generator or a Hugging Face model, or refuse it."""
    if (directory / CONFIG_FILE).is_file():
        kind = "genpipe"
    elif (directory / "config.json").is_file():
        kind = "hf"
    else:
        raise DataError(f"model.init_from: {spec!r} is not a model directory "
                        f"(no {CONFIG_FILE} or config.json in {directory})")
    for candidate in (directory / TOKENIZER_FILE, directory.parent / TOKENIZER_FILE):
        if candidate.is_file():
            return Pretrained(spec, kind, directory, candidate)
    raise DataError(f"model.init_from: {spec!r} has no {TOKENIZER_FILE}; save the tokenizer beside the model")


def _from_registry(spec: str, params: Params) -> Pretrained:
    """Download a registered model (once per resolved version) and find its generator and tokenizer."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from registry.tracking import connect

    connect(params.register)
    try:
        info = mlflow.models.get_model_info(spec)
        key = hashlib.sha256(f"{params.register.tracking_uri}|{info.model_uri}|{info.model_uuid}".encode())
        dst = params.train.checkpoint_dir / "init_from" / key.hexdigest()[:16]
        if not (dst / "MLmodel").is_file():
            dst.mkdir(parents=True, exist_ok=True)
            mlflow.artifacts.download_artifacts(artifact_uri=spec, dst_path=str(dst))
    except MlflowException as exc:
        raise DataError(f"model.init_from: {spec!r} not found in the registry at "
                        f"{params.register.tracking_uri} ({exc.message.splitlines()[0]})") from None
    generators = sorted((dst / "artifacts").glob(f"*/{CONFIG_FILE}"))
    if not generators:
        raise DataError(f"model.init_from: {spec!r} holds no genpipe generator")
    return _from_dir(spec, generators[0].parent)


def _from_hub(spec: str) -> Pretrained:
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(spec, allow_patterns=["*.json", "*.safetensors", "*.txt"])
    except Exception as exc:  # offline, unknown repo, auth: all mean "cannot get it"
        raise DataError(f"model.init_from: {spec!r} is neither a local directory nor a reachable Hugging Face "
                        f"model ({type(exc).__name__})") from None
    return _from_dir(spec, Path(path))


def resolve_init_from(params: Params) -> Pretrained | None:
    """Return the checkpoint `model.init_from` names, as local files, or None when training from scratch."""
    spec = params.model.init_from
    if spec is None:
        return None
    if spec.startswith("models:/"):
        return _from_registry(spec, params)
    local = Path(spec) if Path(spec).is_absolute() else params.root / spec
    if local.is_dir():
        return _from_dir(spec, local)
    if local.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise DataError(f"model.init_from: {spec!r}: no such model directory")
    return _from_hub(spec)


def hf_architecture(model_dir: Path) -> str:
    """Return the `model_type` of a Hugging Face model directory."""
    return read_json(model_dir / "config.json").get("model_type", "unknown")
