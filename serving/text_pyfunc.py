"""MLflow pyfunc for text generators, logged as code (models-from-code): nothing is pickled.

`mlflow models serve` and `mlflow.pyfunc.load_model` import this file, rebuild the generator from its safetensors
weights and JSON config (artifact `generator`) and the tokenizer (artifact `tokenizer`), and answer requests with
one row per prompt: `prompt` (required), `max_new_tokens`, `temperature`, `top_k`, `seed` (optional), and one
`{"text": ...}` per prompt. Over HTTP: `{"inputs": [{"prompt": "..."}]}` in, `{"predictions": [{"text": "..."}]}` out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel

from serving.requests import as_rows, bad_request, integer, missing, number
from serving.signatures import TextRequest, TextResponse

MAX_NEW_TOKENS = 1024  # per request row; longer requests are refused with HTTP 400
MAX_ROWS = 256  # prompts per request
DEFAULTS: dict[str, Any] = {"max_new_tokens": 64, "temperature": 0.8, "top_k": 50, "seed": None}
FIELDS = tuple(TextRequest.model_fields)


def request_settings(row: dict[str, Any]) -> dict[str, Any]:
    """Validate one request row into generation settings; raise a 400-mapped error naming the bad field."""
    prompt = row.get("prompt")
    if not isinstance(prompt, str):
        raise bad_request("field 'prompt' is required and must be a string" +
                          ("" if missing(prompt) else f" (got {prompt!r})"))
    return {"prompt": prompt,
            "max_new_tokens": integer(row, "max_new_tokens", DEFAULTS["max_new_tokens"], 1, MAX_NEW_TOKENS,
                                      f"an integer in 1..{MAX_NEW_TOKENS}"),
            "temperature": number(row, "temperature", DEFAULTS["temperature"], 0, 100,
                                  "a number in 0..100 (0 = greedy)"),
            "top_k": integer(row, "top_k", DEFAULTS["top_k"], 0, 2**31 - 1, "an integer >= 0 (0 = off)"),
            "seed": integer(row, "seed", None, 0, 2**63 - 1, "an integer in 0..2**63-1")}


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

    # The type hints are the signature (serving/signatures.py): MLflow passes the rows as sent.
    def predict(self, context, model_input: list[TextRequest], params=None) -> list[TextResponse]:
        import torch

        settings = [request_settings(row) for row in as_rows(model_input, FIELDS, MAX_ROWS)]  # all, before any work
        texts = []
        for s in settings:
            ids = [self.eot_id, *self.tokenizer.encode(s["prompt"]).ids]  # a prompt starts a new document
            gen = torch.Generator().manual_seed(s["seed"] if s["seed"] is not None else torch.seed())
            prompt = torch.tensor([ids], dtype=torch.long, device=self.device)
            new = self.model.generate(prompt, s["max_new_tokens"], temperature=s["temperature"], top_k=s["top_k"],
                                      generator=gen)
            texts.append({"text": self.tokenizer.decode(new[0].tolist())})
        return texts


mlflow.models.set_model(TextGeneratorModel())
