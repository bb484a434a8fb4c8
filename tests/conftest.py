"""Shared fixtures: an offline, quiet environment and tiny throw-away projects.

`project` builds a project in a temporary directory whose params make every stage run in seconds on CPU:

    def test_something(project):
        project.write_corpus()                                  # 200 distinct documents in data/inputs
        params = project.make_params(train={"max_steps": 2})    # nested overrides, merged into TINY
        ingest(params); clean(params); preprocess(params)

`make_params` also writes the merged dict to `<root>/params.yaml`, so `python -m tasks.<stage>` run with
`cwd=project.root` sees the same configuration.
"""

from __future__ import annotations

import copy
import os
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

# Set before any project, Hugging Face, Prefect or MLflow module is imported by a test.
for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",  # stage tests log outside flow runs
    "GIT_PYTHON_REFRESH": "quiet",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_name, _value)

from config.params import Params, parse_params  # noqa: E402  (after the environment is set)

REPO_ROOT = Path(__file__).resolve().parents[1]

# Every path is spelled out (relative to the project root) so nothing can land in the real repository.
TINY: dict[str, Any] = {
    "ingest": {
        "sources": ["data/inputs"],
        "inputs_dir": "data/inputs",
        "text_field": "text",
        "timeout_s": 10,
        "out_dir": "data/raw",
        "metrics_path": "metrics/ingest.json",
        "provenance_path": "data/provenance.json",
    },
    "clean": {
        "min_chars": 64,
        "max_chars": 100_000,
        "out_dir": "data/clean",
        "metrics_path": "metrics/clean.json",
    },
    "preprocess": {
        "tokenizer": "bpe",
        "vocab_size": 300,
        "val_fraction": 0.1,
        "test_fraction": 0.1,
        "out_dir": "data/processed",
        "metrics_path": "metrics/preprocess.json",
    },
    "classifier": {
        "steps": 30,
        "batch_size": 64,
        "lr": 0.003,
        "width": 8,
        "feature_dim": 16,
        "seed": 0,
        "out_dir": "artifacts/classifier",
        "metrics_path": "metrics/classifier.json",
    },
    "model": {
        "name": "gpt",
        "gpt": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32, "dropout": 0.0},
    },
    "train": {
        "max_steps": 4,
        "batch_size": 4,
        "grad_accum": 1,
        "lr": 0.003,
        "warmup_steps": 1,
        "eval_interval": 2,
        "eval_batches": 1,
        "log_interval": 1,
        "seed": 1337,
        "device": "cpu",
        "precision": "fp32",
        "out_dir": "artifacts/train",
        "checkpoint_dir": "checkpoints",
        "metrics_path": "metrics/train.json",
        "plots_path": "plots/train.json",
        "steps_plots_path": "plots/train_steps.json",
    },
    "evaluate": {
        "batch_size": 4,
        "n_prompts": 2,
        "prompt_tokens": 8,
        "continuation_tokens": 8,
        "n_samples": 2,
        "sample_tokens": 16,
        "temperature": 0.8,
        "top_k": 10,
        "seed": 0,
        "out_dir": "artifacts/evaluate",
        "metrics_path": "metrics/evaluate.json",
    },
    "register": {
        "model_name": "tiny-generator",
        "tracking_uri": "sqlite:///mlflow.db",  # made absolute (inside the project) by the params loader
        "experiment_name": "genpipe-test",
        "artifacts_dir": "mlartifacts",
        "promote_metric": None,  # the modality's default: test_bpb (text) or fid (images)
        "min_improvement": 0.0,
        # Models trained 4 steps are degenerate (collapsed GANs, random text): only the guard tests set limits.
        "max_memorization": 1.0,
        "min_diversity": 0.0,
        "metrics_path": "metrics/register.json",
    },
}

# Overrides that make the image generators tiny (merge into TINY with `project.make_params(**TINY_IMAGE, ...)`).
_TINY_IMAGE_TRAIN = {"max_steps": 4, "batch_size": 8, "eval_interval": 2, "eval_batches": 1, "warmup_steps": 0,
                     "log_interval": 1}
TINY_IMAGE: dict[str, Any] = {
    "ingest": {"image_sources": ["data/inputs/images"]},
    "preprocess": {"image_size": 8, "val_fraction": 0.1, "test_fraction": 0.1},
    "model": {
        "dcgan": {"n_z": 8, "ngf": 8, "ndf": 8, "embed_dim": 4, "train": _TINY_IMAGE_TRAIN},
        "cdcgan": {"n_z": 8, "ngf": 8, "ndf": 8, "embed_dim": 4, "train": _TINY_IMAGE_TRAIN},
        "vae": {"latent_dim": 4, "base_channels": 8, "train": _TINY_IMAGE_TRAIN},
        "ddpm": {"block_out_channels": [8, 16], "norm_num_groups": 8, "num_train_timesteps": 20, "sample_steps": 3,
                 "train": _TINY_IMAGE_TRAIN},
    },
    "evaluate": {"n_images": 20, "kid_subset_size": 10, "grid_rows": 4, "grid_scale": 1},
}

# Words of the generated corpus. No q, x, z or j appears in them, so tests can use such letters as markers.
_WORDS = (
    "the a model data token river stone light paper garden window cloud music number signal simple "
    "small large early later bright calm green yellow orange purple reads writes finds builds keeps "
    "sends holds turns opens closes under over near after before with without along across around"
).split()


def merge(base: dict, overrides: dict) -> dict:
    """Return `base` with `overrides` merged in recursively (dicts merge, anything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def corpus_documents(n_docs: int = 200, seed: int = 0) -> list[str]:
    """Return `n_docs` distinct, already-normalised paragraphs of 150-400 characters (deterministic)."""
    rng = random.Random(seed)
    docs = []
    for i in range(n_docs):
        sentences = []
        while sum(len(s) + 1 for s in sentences) < 150 + rng.randrange(250):
            words = [rng.choice(_WORDS) for _ in range(rng.randrange(5, 12))]
            sentences.append(" ".join(words).capitalize() + ".")
        docs.append(f"Document {i}. " + " ".join(sentences))
    return docs


class Project:
    """A temporary project directory plus helpers to configure and populate it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data: dict[str, Any] = copy.deepcopy(TINY)

    def make_params(self, **overrides: Any) -> Params:
        """Merge `overrides` (nested dicts per section) into the tiny defaults, write params.yaml, return Params."""
        self.data = merge(TINY, overrides)
        (self.root / "params.yaml").write_text(yaml.safe_dump(self.data, sort_keys=False), encoding="utf-8")
        return parse_params(copy.deepcopy(self.data), root=self.root)

    def params_with(self, overrides: dict[str, Any]) -> Params:
        """Return the current params with `overrides` merged in, without rewriting params.yaml."""
        return parse_params(merge(self.data, overrides), root=self.root)

    def write_corpus(self, n_docs: int = 200, name: str = "corpus.jsonl", seed: int = 0) -> list[str]:
        """Write `n_docs` generated documents to `data/inputs/<name>` (.jsonl: one per line; else one per file
        in `data/inputs/<stem>/`); return the documents."""
        docs = corpus_documents(n_docs, seed)
        inputs = self.root / "data" / "inputs"
        if name.endswith(".jsonl"):
            import json

            inputs.mkdir(parents=True, exist_ok=True)
            (inputs / name).write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
        else:
            folder = inputs / Path(name).stem
            folder.mkdir(parents=True, exist_ok=True)
            suffix = Path(name).suffix or ".txt"
            for i, doc in enumerate(docs):
                (folder / f"{i:04d}{suffix}").write_text(doc, encoding="utf-8")
        return docs

    def write_images(self, per_class: int = 40, size: int = 12, folder: str = "images", seed: int = 0,
                     classes: tuple[str, ...] = ("left", "right", "top")) -> Path:
        """Write `per_class` distinct grayscale PNGs per class into `data/inputs/<folder>/<class>/`: class k has a
        bright left, right, top or bottom half (k mod 4) plus noise, so classes are easy to tell apart."""
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng(seed)
        root = self.root / "data" / "inputs" / folder
        half = size // 2
        regions = [np.s_[:, :half], np.s_[:, half:], np.s_[:half, :], np.s_[half:, :]]
        for k, name in enumerate(classes):
            (root / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 60, (size, size))
                pixels[regions[k % 4]] += 180
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / name / f"{i:03d}.png")
        return root

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    """A tiny project rooted at `tmp_path`; the working directory is moved there so stray relative paths stay in it."""
    monkeypatch.chdir(tmp_path)
    proj = Project(tmp_path)
    proj.make_params()
    return proj


@pytest.fixture(scope="session")
def make_documents():
    """`make_documents(n_docs=200, seed=0)`: the generated corpus `Project.write_corpus` writes, as a list."""
    return corpus_documents
