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


def user_error(exc: BaseException) -> GSLoRAError | None:
    """The one place where errors from reading data, configs, checkpoints, manifests and the file system become
    one-line ``GSLoRAError``s naming the path and the fix. ``None`` for anything else (a bug: exit 1)."""
    import json
    import pickle
    import sqlite3
    import zipfile

    if isinstance(exc, GSLoRAError):
        return exc
    path = getattr(exc, "filename", None)
    where = f" {str(path)!r}" if path else ""
    if isinstance(exc, PermissionError):
        return GSLoRAError(f"permission denied for{where or ' a file'}; choose a location you can write to, or fix "
                           "its permissions")
    if isinstance(exc, FileNotFoundError):
        return GSLoRAError(f"no such file or directory{where}; check the path")
    if isinstance(exc, OSError) and getattr(exc, "errno", None) == 28:
        return GSLoRAError(f"no space left on the device{where}; free some disk space and run the command again")
    if isinstance(exc, zipfile.BadZipFile | EOFError):
        return GSLoRAError(f"a data file is truncated or not a zip/npz archive ({exc}); re-create or re-download it")
    if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError):
        return GSLoRAError(f"a file that should hold JSON text does not ({exc}); restore it")
    if isinstance(exc, sqlite3.DatabaseError):
        return GSLoRAError(f"the run's ledger cannot be read or written ({exc}); check the run directory's "
                           "permissions and disk, or restore it")
    if isinstance(exc, pickle.UnpicklingError):
        return GSLoRAError(f"refused to unpickle a checkpoint that holds more than tensors ({exc}); convert it to "
                           ".safetensors with safetensors.torch.save_file")
    name = type(exc).__name__
    if name in ("UnidentifiedImageError", "DecompressionBombError", "SafetensorError", "YAMLError", "ScannerError",
                "ParserError"):
        return GSLoRAError(f"{name}: {str(exc).splitlines()[0] if str(exc) else ''}; the file is damaged or not of "
                           "the expected format")
    if isinstance(exc, OSError):
        return GSLoRAError(f"{exc.strerror or exc}{where}; check the path and the disk")
    return None
