"""MLflow pyfunc for text generators, logged as code (models-from-code): nothing is pickled.

`mlflow models serve` and `mlflow.pyfunc.load_model` import this file, rebuild the generator from its safetensors
weights and JSON config (artifact `generator`) and the tokenizer (artifact `tokenizer`), and answer requests with
one row per prompt: `prompt` (required), `max_new_tokens`, `temperature`, `top_k`, `top_p`, `repetition_penalty`,
`stop` (strings that end the text) and `seed` (optional), and one
`{"text": ...}` per prompt. Over HTTP: `{"inputs": [{"prompt": "..."}]}` in, `{"predictions": [{"text": "..."}]}` out.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel

from serving.requests import as_rows, bad_request, integer, missing, number
from serving.signatures import TextRequest, TextResponse

MAX_NEW_TOKENS = 1024  # per request row; longer requests are refused with HTTP 400
MAX_ROWS = 256  # prompts per request
MAX_STOPS, MAX_STOP_CHARS = 8, 64
DEFAULTS: dict[str, Any] = {"max_new_tokens": 64, "temperature": 0.8, "top_k": 50, "top_p": 1.0,
                            "repetition_penalty": 1.0, "stop": [], "seed": None}
FIELDS = tuple(TextRequest.model_fields)
SAMPLING = ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty")  # rows alike here share a batch


def stop_strings(row: dict[str, Any]) -> list[str]:
    value = row.get("stop")
    if missing(value):
        return []
    if not (isinstance(value, list) and 1 <= len(value) <= MAX_STOPS and
            all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in value)):
        raise bad_request(f"field 'stop': {value!r} is invalid; expected a list of 1..{MAX_STOPS} non-empty "
                          f"strings of at most {MAX_STOP_CHARS} characters")
    return value


def request_settings(row: dict[str, Any]) -> dict[str, Any]:
    """Validate one request row into generation settings; raise a 400-mapped error naming the bad field."""
    prompt = row.get("prompt")
    if not isinstance(prompt, str):
        raise bad_request("field 'prompt' is required and must be a string" +
                          ("" if missing(prompt) else f" (got {prompt!r})"))
    out = {"prompt": prompt,
           "max_new_tokens": integer(row, "max_new_tokens", DEFAULTS["max_new_tokens"], 1, MAX_NEW_TOKENS,
                                     f"an integer in 1..{MAX_NEW_TOKENS}"),
           "temperature": number(row, "temperature", DEFAULTS["temperature"], 0, 100,
                                 "a number in 0..100 (0 = greedy)"),
           "top_k": integer(row, "top_k", DEFAULTS["top_k"], 0, 2**31 - 1, "an integer >= 0 (0 = off)"),
           "top_p": number(row, "top_p", DEFAULTS["top_p"], 0, 1, "a number in (0, 1] (1 = off)"),
           "repetition_penalty": number(row, "repetition_penalty", DEFAULTS["repetition_penalty"], 0, 10,
                                        "a number in (0, 10] (1 = off)"),
           "stop": stop_strings(row),
           "seed": integer(row, "seed", None, 0, 2**63 - 1, "an integer in 0..2**63-1")}
    for key in ("top_p", "repetition_penalty"):
        if out[key] == 0:
            raise bad_request(f"field {key!r}: 0 is invalid; expected a number above 0")
    return out


def cut_at_stop(text: str, stops: list[str]) -> str:
    """The text up to (without) the first occurrence of any stop string."""
    ends = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[: min(ends)] if ends else text


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
        """Continue each row's prompt. Rows with the same generation settings are generated together (batched
        through the KV cache where the generator can: each row's text is what it gets alone with its seed)."""
        import torch

        from models.base import Sampling

        settings = [request_settings(row) for row in as_rows(model_input, FIELDS, MAX_ROWS)]  # all, before any work
        prompts = [[self.eot_id, *self.tokenizer.encode(s["prompt"]).ids] for s in settings]  # each a new document
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(settings):
            groups.setdefault(tuple(s[k] for k in SAMPLING), []).append(i)
        texts = [""] * len(settings)
        for (n, temperature, top_k, top_p, penalty), members in groups.items():
            generators = [torch.Generator().manual_seed(settings[i]["seed"] if settings[i]["seed"] is not None
                                                        else torch.seed()) for i in members]
            new = self.model.generate_rows([prompts[i] for i in members], n,
                                           Sampling(temperature, top_k, top_p, penalty), generators)
            for i, ids in zip(members, new):
                texts[i] = cut_at_stop(self.tokenizer.decode(ids), settings[i]["stop"])
        return [{"text": t} for t in texts]

    def predict_stream(self, context, model_input: list[TextRequest], params=None) -> Iterator[str]:
        """Stream one row's continuation: yield pieces of text as the tokens are produced. Joined, they are the
        text `predict` gives that row with the same seed (a stop string ends the stream before it)."""
        import torch

        from models.base import Sampling

        s = request_settings(as_rows(model_input, FIELDS, 1)[0])
        prompt = torch.tensor([[self.eot_id, *self.tokenizer.encode(s["prompt"]).ids]], dtype=torch.long,
                              device=self.device)
        gen = torch.Generator().manual_seed(s["seed"] if s["seed"] is not None else torch.seed())
        sampling = Sampling(s["temperature"], s["top_k"], s["top_p"], s["repetition_penalty"])
        produced: list[int] = []
        shown = ""
        for token in self.model.steps(prompt, s["max_new_tokens"], sampling, gen):
            produced.append(int(token[0, 0]))
            text = self.tokenizer.decode(produced)
            if text.endswith("\ufffd") or not text.startswith(shown):  # a character still being spelt out
                continue
            cut = cut_at_stop(text, s["stop"])
            if len(cut) > len(shown):
                yield cut[len(shown):]
                shown = cut
            if cut != text:  # a stop string appeared
                return
        final = cut_at_stop(self.tokenizer.decode(produced), s["stop"])
        if final.startswith(shown) and len(final) > len(shown):
            yield final[len(shown):]


mlflow.models.set_model(TextGeneratorModel())
