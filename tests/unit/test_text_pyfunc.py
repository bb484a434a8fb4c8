"""Validation of serving requests: one row per prompt, optional settings, 400 with one line for anything invalid:
values are checked as sent (no float truncated to an integer, no seed wrapped to a negative number), unknown
fields are refused."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from serving.requests import BadRequest, as_rows
from serving.signatures import TextRequest
from serving.text_pyfunc import DEFAULTS, FIELDS, MAX_NEW_TOKENS, MAX_ROWS, request_settings

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
    assert out == {**DEFAULTS, "prompt": "", "max_new_tokens": 5, "temperature": 0.0, "top_k": 0, "seed": 7}
    assert type(out["max_new_tokens"]) is int and type(out["top_k"]) is int and type(out["seed"]) is int
    assert type(out["temperature"]) is float


@pytest.mark.parametrize("row", [{}, {"prompt": None}, {"prompt": NAN}, {"prompt": 5}, {"prompt": ["a"]},
                                 {"max_new_tokens": 5}])
def test_prompt_is_required_and_must_be_a_string(row):
    rejected(row, "prompt")


@pytest.mark.parametrize("value", [0, -1, MAX_NEW_TOKENS + 1, 2.5, 2.7, "ten", "5", [4], True])
def test_bad_max_new_tokens_is_rejected(value):
    exc = rejected({"prompt": "x", "max_new_tokens": value}, "max_new_tokens")
    if value == MAX_NEW_TOKENS + 1:
        assert str(MAX_NEW_TOKENS) in exc.message  # the message says what is allowed


@pytest.mark.parametrize("value", [1, MAX_NEW_TOKENS])
def test_max_new_tokens_bounds_are_inclusive(value):
    assert request_settings({"prompt": "x", "max_new_tokens": value})["max_new_tokens"] == value


@pytest.mark.parametrize("value", [-0.1, -5, "hot", math.inf, True, "0.5"])
def test_bad_temperature_is_rejected(value):
    rejected({"prompt": "x", "temperature": value}, "temperature")


@pytest.mark.parametrize("value", [-1, 1.5, "many", False])
def test_bad_top_k_is_rejected(value):
    rejected({"prompt": "x", "top_k": value}, "top_k")


@pytest.mark.parametrize("value", [-1, 0.5, 2**63, 2**70, True, "7"])
def test_bad_seed_is_rejected(value):
    exc = rejected({"prompt": "x", "seed": value}, "seed")
    assert exc.message == f"field 'seed': {value!r} is invalid; expected an integer in 0..2**63-1"  # as sent


@pytest.mark.parametrize("value", [0, -0.1, 1.5, "0.9", True])
def test_bad_top_p_is_rejected(value):
    rejected({"prompt": "x", "top_p": value}, "top_p")


@pytest.mark.parametrize("value", [0, -1, 11, "1.2", False])
def test_bad_repetition_penalty_is_rejected(value):
    rejected({"prompt": "x", "repetition_penalty": value}, "repetition_penalty")


@pytest.mark.parametrize("value", ["\n", [], [""], [3], ["a"] * 9, ["x" * 65], {"a": 1}])
def test_stop_must_be_a_short_list_of_strings(value):
    exc = rejected({"prompt": "x", "stop": value}, "stop")
    assert exc.message.endswith("expected a list of 1..8 non-empty strings of at most 64 characters")


def test_stop_strings_end_the_text_before_the_first_of_them():
    from serving.text_pyfunc import cut_at_stop

    assert request_settings({"prompt": "x", "stop": ["\n\n", "END"]})["stop"] == ["\n\n", "END"]
    assert cut_at_stop("one END two\n\nthree", ["\n\n", "END"]) == "one "
    assert cut_at_stop("no stop here", ["END"]) == "no stop here" and cut_at_stop("abc", []) == "abc"


def test_unknown_fields_are_refused_naming_the_field_and_the_allowed_ones():
    with pytest.raises(BadRequest) as err:
        as_rows([TextRequest(prompt="x", max_tokens=5)], FIELDS, MAX_ROWS)
    assert err.value.message == ("field 'max_tokens' is unknown; allowed fields: prompt, max_new_tokens, "
                                 "temperature, top_k, top_p, repetition_penalty, stop, seed")
    assert as_rows([TextRequest(prompt="x", seed=3)], FIELDS, MAX_ROWS) == [
        {"prompt": "x", "max_new_tokens": None, "temperature": None, "top_k": None, "top_p": None,
         "repetition_penalty": None, "stop": None, "seed": 3}]


def test_an_empty_or_oversized_request_is_refused():
    with pytest.raises(BadRequest, match="no rows"):
        as_rows([], FIELDS, MAX_ROWS)
    with pytest.raises(BadRequest, match=f"at most {MAX_ROWS} per request"):
        as_rows([{"prompt": "x"}] * (MAX_ROWS + 1), FIELDS, MAX_ROWS)


def test_the_scoring_server_cannot_prefix_the_request_dump_to_the_message():
    exc = BadRequest("field 'seed': -1 is invalid")
    exc.message = f"Failed to predict data '{[{'seed': -1}]}'. \nError: {exc.message}"  # what the server does
    assert exc.message == "field 'seed': -1 is invalid" and str(exc) == exc.message
    assert json.loads(exc.serialize_as_json())["message"] == "field 'seed': -1 is invalid"


def test_nan_fields_count_as_missing():
    row = {"prompt": "x", "max_new_tokens": NAN, "temperature": NAN, "top_k": NAN, "seed": NAN}
    assert request_settings(row) == {"prompt": "x", **DEFAULTS}


def test_mixed_records_from_a_dataframe():
    # pandas fills NaN where a record lacks a field, and stores the present ints as floats
    frame = pd.DataFrame([{"prompt": "a", "max_new_tokens": 5, "seed": 3},
                          {"prompt": "b", "temperature": 0.0, "top_k": 2}])
    first, second = (request_settings(r) for r in frame.to_dict("records"))
    assert first == {**DEFAULTS, "prompt": "a", "max_new_tokens": 5, "seed": 3}
    assert second == {**DEFAULTS, "prompt": "b", "temperature": 0.0, "top_k": 2}
    assert type(first["max_new_tokens"]) is int and type(first["seed"]) is int
