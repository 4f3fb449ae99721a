"""User-facing errors: the CLI prints these as one clear line and exits non-zero."""


class SimganError(Exception):
    """Bad input or configuration: the message names the file, field or key."""

    exit_code = 2


class GateFailed(SimganError):
    """The validation gate failed: a verdict, not a crash."""

    exit_code = 3
