"""Errors a user can act on, kept apart from bugs so the CLI can show them without a traceback."""


class InputError(ValueError):
    """The many-body input cannot be run as given; the message says what to change."""


class RunFailed(RuntimeError):
    """Some fragment calculations failed for good; finished results stay in the checkpoint."""

    def __init__(self, message: str, failures: dict[str, str]) -> None:
        super().__init__(message)
        self.failures = failures
