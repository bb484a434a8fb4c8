"""What a registered model declares to its consumers: the request and response rows of each modality's pyfunc,
and the pip requirements.

The pyfuncs' `predict` is type-hinted with these row models, so MLflow infers the signature from them (field
names and descriptions) and hands `predict` each row as sent: nothing converted, unknown fields kept (the pyfunc
refuses them), no field cast to a column type. Every request field is typed `Any` and optional here on purpose:
the pyfunc checks presence and types itself (serving/requests.py) and answers with one line naming the field; a
typed field would be checked by MLflow first, with a message that dumps the whole request. Over HTTP the rows go
in `{"inputs": [{...}, ...]}`; the answer is `{"predictions": [{...}, ...]}`.
"""

from __future__ import annotations

import logging
from typing import Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from models.registry import Declaration

# Any JSON value. Not `Any`: MLflow warns in colour about `Any` wherever it reads the hints (defining the pyfunc
# class, logging, serving), in a way warning filters cannot silence. A union of several types is also unchecked by
# MLflow (it logs why, once: that one record is dropped below), and `Optional[...]` marks the field optional.
Value = Optional[Union[str, int, float, bool, list, dict]]  # noqa: UP007


class _UncheckedUnionNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Union type hint with multiple non-None types" not in record.getMessage()


logging.getLogger("mlflow.types.type_hints").addFilter(_UncheckedUnionNote())


class TextRequest(BaseModel):
    """One prompt to continue, with its generation settings."""

    model_config = ConfigDict(extra="allow")  # kept so that the pyfunc can name and refuse them
    prompt: Value = Field(None, description="required: the text to continue (a string)")
    max_new_tokens: Value = Field(None, description="tokens to generate: an integer in 1..1024 (default 64)")
    temperature: Value = Field(None, description="sampling temperature: a number in 0..100, 0 = greedy "
                                                 "(default 0.8)")
    top_k: Value = Field(None, description="sample among the k likeliest tokens: an integer >= 0, 0 = off "
                                           "(default 50)")
    top_p: Value = Field(None, description="sample from the smallest set of tokens whose probabilities reach p: a "
                                           "number in (0, 1], 1 = off (default 1)")
    repetition_penalty: Value = Field(None, description="above 1 makes tokens already in the text less likely: a "
                                                        "number in (0, 10], 1 = off (default 1)")
    stop: Value = Field(None, description="a list of up to 8 strings: the text ends before the first of them")
    seed: Value = Field(None, description="an integer in 0..2**63-1: the same seed gives the same text "
                                          "(default: random)")


class TextResponse(BaseModel):
    text: str = Field(description="the generated continuation (without the prompt)")


class ImageRequest(BaseModel):
    """A number of images to generate, with their settings."""

    model_config = ConfigDict(extra="allow")
    n: Value = Field(None, description="required: images to generate, an integer in 1..256")
    seed: Value = Field(None, description="an integer in 0..2**63-1: the same seed gives the same images "
                                          "(default: random)")
    class_label: Value = Field(None, description="conditional generators: a class id in 0..n_classes-1 "
                                                 "(default: a random class per image)")
    steps: Value = Field(None, description="iterative samplers (DDPM): sampler steps, an integer in 1..1000")
    scale: Value = Field(None, description="nearest-neighbour upscaling of the PNGs, an integer in 1..16 "
                                           "(default 1)")


class ImageResponse(BaseModel):
    image: str = Field(description="a PNG, base64-encoded")
    index: int = Field(description="the image's index within its request row")
    class_label: int = Field(description="the class it was generated for; -1 for unconditional generators")
    seed: int = Field(description="the seed that reproduces it")


def requirements(decl: Declaration, with_peft: bool = False) -> list[str]:
    """Return the pinned pip requirements of a logged model: its modality's, its generator's own, and peft for
    LoRA adapters logged apart from their base."""
    from importlib.metadata import version

    packages = [*decl.modality.requirements, *decl.requirements] + ["peft"] * with_peft
    return [f"{p}=={version(p)}" for p in packages]
