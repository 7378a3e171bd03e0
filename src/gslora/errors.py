"""Errors raised for bad user input and interruptions. The CLI turns each into one line and an exit code."""

from __future__ import annotations


class GSLoRAError(ValueError):
    """Bad input: the message names the problem and how to fix it. The CLI prints it as one line and exits
    with ``exit_code`` (2)."""

    exit_code = 2


class NonFiniteLossError(GSLoRAError):
    """The training loss became NaN or infinite."""


class RequestRejected(GSLoRAError):
    """A request ran but did not meet its acceptance thresholds (nothing forgotten, or too much lost); the run
    was left as it was. The CLI exits with 3."""

    exit_code = 3


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; the message says what state the run was left in.

    Args:
        signum: the signal (the CLI exits with 128 + signum: 130 for SIGINT, 143 for SIGTERM).
        message: one line for the user.
    """

    def __init__(self, signum: int, message: str = "interrupted") -> None:
        super().__init__(message)
        self.signum = signum
        self.message = message
