"""Atomic file output: a file or directory appears whole or not at all, with the permissions the user's umask
gives (``tempfile`` alone would leave files 0600 and directories 0700, unreadable to a colleague or a server)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gslora.errors import GSLoRAError


def umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def default_mode(*, directory: bool) -> int:
    """The mode ``open``/``mkdir`` would give a new file or directory under the current umask."""
    return (0o777 if directory else 0o666) & ~umask()


def make_dir(path: str | Path) -> Path:
    """``mkdir -p`` that names the path and the fix when it cannot."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_error(exc, path, "create") from exc
    return path


def os_error(exc: OSError, path: str | Path, action: str) -> GSLoRAError:
    """A file-system error as one line: what could not be done to which path, why, and the fix."""
    reason = exc.strerror or type(exc).__name__
    if isinstance(exc, PermissionError):
        fix = "choose a directory you can write to, or fix its permissions"
    elif isinstance(exc, FileNotFoundError):
        fix = "check the path"
    elif getattr(exc, "errno", None) == 28:
        fix = "free some disk space"
    else:
        fix = "check the path and the disk"
    return GSLoRAError(f"cannot {action} {str(exc.filename or path)!r}: {reason}; {fix}")


def apply_umask(root: str | Path) -> None:
    """Give ``root`` and everything under it the modes the umask gives new files and directories (some writers,
    such as safetensors, create their files 0600)."""
    root = Path(root)
    files, dirs = default_mode(directory=False), default_mode(directory=True)
    for path in [root, *root.rglob("*")]:
        os.chmod(path, dirs if path.is_dir() else files)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    atomic_write_with(path, write)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


@contextmanager
def atomic_directory(path: str | Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``path`` when the block ends without error.

    Args:
        path: the final directory.
        replace: swap out an existing ``path``; otherwise an existing ``path`` is an error.
    """
    path = Path(path)
    make_dir(path.parent)
    if path.exists() and not replace:
        raise FileExistsError(path)
    try:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        os.chmod(tmp, default_mode(directory=True))
    except OSError as exc:
        raise os_error(exc, path, "write") from exc
    try:
        yield tmp
        apply_umask(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_with(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and move the file it wrote to ``path``."""
    path = Path(path)
    make_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    except OSError as exc:
        raise os_error(exc, path, "write") from exc
    os.close(fd)
    try:
        writer(Path(tmp))
        os.chmod(tmp, default_mode(directory=False))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
