"""What both pyfuncs share when reading a request: the HTTP 400 error, strict field checks, unknown fields refused.

Requests reach `predict` as MLflow's type-hinted rows (serving/signatures.py): the values exactly as the client sent
them (JSON integers stay integers of any size, floats stay floats), plus any field the client added. So these
checks see what was asked, and refuse instead of converting: `2.5` for an integer field, `true` for a number, a
seed too large for 64 bits, a misspelt field name.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE


class BadRequest(MlflowException):
    """The error `mlflow models serve` answers with HTTP 400 (INVALID_PARAMETER_VALUE), carrying one line.

    The scoring server prefixes every model error's message with a dump of the whole request ("Failed to predict
    data ..."); this error keeps its own line, so a client reads what was wrong and nothing else."""

    def __init__(self, message: str) -> None:
        self._line = message
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._line

    @message.setter
    def message(self, value: str) -> None:  # MlflowException.__init__ and the scoring server assign it
        pass


def bad_request(message: str) -> BadRequest:
    return BadRequest(message)


def missing(value: Any) -> bool:
    """True for an absent optional field: None, or NaN (how pandas fills a column some rows lack)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def as_rows(model_input: Any, fields: Iterable[str], max_rows: int) -> list[dict[str, Any]]:
    """The request rows as plain dicts of the fields the client set; refuse unknown fields and too many rows."""
    if hasattr(model_input, "to_dict"):  # a DataFrame given to the Python API without type-hint conversion
        model_input = model_input.to_dict("records")
    rows = []
    for item in model_input:
        row = dict(item) if isinstance(item, dict) else {**item.model_dump(), **(item.model_extra or {})}
        unknown = sorted(set(row) - set(fields))
        if unknown:
            raise bad_request(f"field {unknown[0]!r} is unknown; allowed fields: {', '.join(fields)}")
        rows.append(row)
    if not rows:
        raise bad_request("the request has no rows; send at least one")
    if len(rows) > max_rows:
        raise bad_request(f"the request has {len(rows)} rows; at most {max_rows} per request")
    return rows


def integer(row: dict[str, Any], key: str, default: int | None, low: int, high: int, allowed: str) -> int | None:
    """Return the integer field `key` of `row` in [low, high], `default` when absent; refuse anything else.

    A float is accepted only when it is a whole number (pandas stores the integers of a column that some rows lack
    as floats); booleans and strings are refused."""
    value = row.get(key)
    if missing(value):
        return default
    number = value.item() if hasattr(value, "item") and not isinstance(value, (bool, str)) else value  # numpy
    if isinstance(number, bool) or not isinstance(number, (int, float)) or \
            (isinstance(number, float) and not number.is_integer()) or not low <= number <= high:
        raise bad_request(f"field {key!r}: {value!r} is invalid; expected {allowed}")
    return int(number)


def number(row: dict[str, Any], key: str, default: float, low: float, high: float, allowed: str) -> float:
    """Return the numeric field `key` of `row` in [low, high], `default` when absent; booleans are refused."""
    value = row.get(key)
    if missing(value):
        return default
    num = value.item() if hasattr(value, "item") and not isinstance(value, (bool, str)) else value
    if isinstance(num, bool) or not isinstance(num, (int, float)) or not low <= num <= high:
        raise bad_request(f"field {key!r}: {value!r} is invalid; expected {allowed}")
    return float(num)
