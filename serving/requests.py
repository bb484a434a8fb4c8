"""What both pyfuncs share when reading a request row: the HTTP 400 error and what counts as an absent field."""

from __future__ import annotations

import math
from typing import Any


def bad_request(message: str) -> Exception:
    """Return the error `mlflow models serve` answers with HTTP 400 (INVALID_PARAMETER_VALUE) and `message`."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def missing(value: Any) -> bool:
    """True for an absent optional field: None, or NaN (how pandas fills a column some rows lack)."""
    return value is None or (isinstance(value, float) and math.isnan(value))
