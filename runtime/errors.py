"""Errors a user can fix: shown as one line, never as a traceback."""


class UserError(Exception):
    """A problem with the user's input (params, data, sources); `exit_code` is the process status."""

    exit_code = 1


class ParamsError(UserError):
    """params.yaml is malformed or holds a bad value."""

    exit_code = 2


class DataError(UserError):
    """Input data is missing, unreadable or unusable."""


class SourceUnavailable(DataError):
    """A network source could not be reached or answered 5xx/429: a later attempt may succeed (the flow retries)."""
