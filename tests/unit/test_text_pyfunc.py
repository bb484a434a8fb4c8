"""Validation of serving requests: one row per prompt, optional settings, 400 for anything invalid."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from serving.text_pyfunc import DEFAULTS, MAX_NEW_TOKENS, request_settings

NAN = float("nan")


def rejected(row: dict, field: str) -> MlflowException:
    with pytest.raises(MlflowException) as err:
        request_settings(row)
    exc = err.value
    assert exc.error_code == "INVALID_PARAMETER_VALUE"
    assert exc.get_http_status_code() == 400
    assert repr(field) in exc.message or field in exc.message
    return exc


def test_defaults_fill_absent_fields():
    assert request_settings({"prompt": "The river"}) == {"prompt": "The river", **DEFAULTS}
    assert DEFAULTS["seed"] is None and 1 <= DEFAULTS["max_new_tokens"] <= MAX_NEW_TOKENS


def test_explicit_values_are_kept_and_typed():
    out = request_settings({"prompt": "", "max_new_tokens": 5.0, "temperature": 0, "top_k": 0.0, "seed": 7.0})
    assert out == {"prompt": "", "max_new_tokens": 5, "temperature": 0.0, "top_k": 0, "seed": 7}
    assert type(out["max_new_tokens"]) is int and type(out["top_k"]) is int and type(out["seed"]) is int
    assert type(out["temperature"]) is float


@pytest.mark.parametrize("row", [{}, {"prompt": None}, {"prompt": NAN}, {"prompt": 5}, {"prompt": ["a"]},
                                 {"max_new_tokens": 5}])
def test_prompt_is_required_and_must_be_a_string(row):
    rejected(row, "prompt")


@pytest.mark.parametrize("value", [0, -1, MAX_NEW_TOKENS + 1, 2.5, "ten", [4]])
def test_bad_max_new_tokens_is_rejected(value):
    exc = rejected({"prompt": "x", "max_new_tokens": value}, "max_new_tokens")
    if value == MAX_NEW_TOKENS + 1:
        assert str(MAX_NEW_TOKENS) in exc.message  # the message says what is allowed


@pytest.mark.parametrize("value", [1, MAX_NEW_TOKENS])
def test_max_new_tokens_bounds_are_inclusive(value):
    assert request_settings({"prompt": "x", "max_new_tokens": value})["max_new_tokens"] == value


@pytest.mark.parametrize("value", [-0.1, -5, "hot", math.inf])
def test_bad_temperature_is_rejected(value):
    rejected({"prompt": "x", "temperature": value}, "temperature")


@pytest.mark.parametrize("value", [-1, 1.5, "many"])
def test_bad_top_k_is_rejected(value):
    rejected({"prompt": "x", "top_k": value}, "top_k")


@pytest.mark.parametrize("value", [-1, 0.5, 2**63])
def test_bad_seed_is_rejected(value):
    rejected({"prompt": "x", "seed": value}, "seed")


def test_nan_fields_count_as_missing():
    row = {"prompt": "x", "max_new_tokens": NAN, "temperature": NAN, "top_k": NAN, "seed": NAN}
    assert request_settings(row) == {"prompt": "x", **DEFAULTS}


def test_mixed_records_from_a_dataframe():
    # pandas fills NaN where a record lacks a field, and stores the present ints as floats
    frame = pd.DataFrame([{"prompt": "a", "max_new_tokens": 5, "seed": 3},
                          {"prompt": "b", "temperature": 0.0, "top_k": 2}])
    first, second = (request_settings(r) for r in frame.to_dict("records"))
    assert first == {"prompt": "a", "max_new_tokens": 5, "temperature": DEFAULTS["temperature"],
                     "top_k": DEFAULTS["top_k"], "seed": 3}
    assert second == {"prompt": "b", "max_new_tokens": DEFAULTS["max_new_tokens"], "temperature": 0.0, "top_k": 2,
                      "seed": None}
    assert type(first["max_new_tokens"]) is int and type(first["seed"]) is int
