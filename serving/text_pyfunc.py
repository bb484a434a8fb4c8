"""MLflow pyfunc for text generators, logged as code (models-from-code): nothing is pickled.

`mlflow models serve` and `mlflow.pyfunc.load_model` import this file, rebuild the generator from its safetensors
weights and JSON config (artifact `generator`) and the tokenizer (artifact `tokenizer`), and answer requests with
one row per prompt: `prompt` (required), `max_new_tokens`, `temperature`, `top_k`, `seed` (optional).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from serving.requests import bad_request, missing

MAX_NEW_TOKENS = 1024  # per request row; longer requests are refused with HTTP 400
DEFAULTS: dict[str, Any] = {"max_new_tokens": 64, "temperature": 0.8, "top_k": 50, "seed": None}


def request_settings(row: dict[str, Any]) -> dict[str, Any]:
    """Validate one request row into generation settings; raise a 400-mapped error naming the bad field."""
    prompt = row.get("prompt")
    if not isinstance(prompt, str):
        raise bad_request("field 'prompt' is required and must be a string")
    out: dict[str, Any] = {"prompt": prompt}
    for key, default in DEFAULTS.items():
        value = row.get(key)
        out[key] = default if missing(value) else value
    checks = {
        "max_new_tokens": lambda v: float(v).is_integer() and 1 <= v <= MAX_NEW_TOKENS,
        "temperature": lambda v: 0 <= v <= 100,
        "top_k": lambda v: float(v).is_integer() and v >= 0,
        "seed": lambda v: v is None or (float(v).is_integer() and 0 <= v < 2**63),
    }
    allowed = {"max_new_tokens": f"an integer in 1..{MAX_NEW_TOKENS}", "temperature": "a number in 0..100 (0 = greedy)",
               "top_k": "an integer >= 0 (0 = off)", "seed": "an integer >= 0"}
    for key, ok in checks.items():
        try:
            valid = ok(out[key])
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise bad_request(f"field {key!r}: {out[key]!r} is invalid; expected {allowed[key]}")
    out["max_new_tokens"], out["top_k"] = int(out["max_new_tokens"]), int(out["top_k"])
    out["temperature"] = float(out["temperature"])
    out["seed"] = None if out["seed"] is None else int(out["seed"])
    return out


class TextGeneratorModel(PythonModel):
    """Continue prompts with a trained text generator."""

    def load_context(self, context) -> None:
        import torch
        from tokenizers import Tokenizer

        from models.base import load_generator

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_generator(Path(context.artifacts["generator"]), self.device).eval()
        self.tokenizer = Tokenizer.from_file(context.artifacts["tokenizer"])
        self.eot_id = self.model.config.eot_id

    # A DataFrame hint: MLflow enforces the logged signature, and infers nothing from the hint (no warning).
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        import torch

        rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
        texts = []
        for row in rows:
            s = request_settings(row)
            ids = [self.eot_id, *self.tokenizer.encode(s["prompt"]).ids]  # a prompt starts a new document
            gen = torch.Generator().manual_seed(s["seed"] if s["seed"] is not None else torch.seed())
            prompt = torch.tensor([ids], dtype=torch.long, device=self.device)
            new = self.model.generate(prompt, s["max_new_tokens"], temperature=s["temperature"], top_k=s["top_k"],
                                      generator=gen)
            texts.append(self.tokenizer.decode(new[0].tolist()))
        return pd.DataFrame({"text": texts})


mlflow.models.set_model(TextGeneratorModel())
