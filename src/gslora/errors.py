"""Errors raised for bad user input. The CLI turns each into a message and exit code 2."""

from __future__ import annotations


class GSLoRAError(ValueError):
    """Bad input: the message names the problem and how to fix it."""


class NonFiniteLossError(GSLoRAError):
    """The training loss became NaN or infinite."""
