"""The library version, and the code version (git commit) that produced a result.

Importing this module costs nothing: the command line's ``--version`` and every saved artifact read it.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

__version__ = "0.2.0"

# What benchmark runners write into the checkout: a changed results file is an output of the code, not a change to it
GENERATED = ("benchmarks/*/results.json", "benchmarks/*/report.md", "benchmarks/*/*.png")


@functools.cache
def code_version() -> str:
    """``<version>+g<commit>``: the commit that ``GSLORA_COMMIT`` names when it is set (a copy of a commit on
    another machine, whose ``.git`` may be missing or stale: a device copy once stamped rows with its session's
    first commit plus ``.dirty``), else the git checkout's (``.dirty`` when it has uncommitted changes other than
    benchmark outputs), else the plain version."""
    told = os.environ.get("GSLORA_COMMIT", "").strip()
    if told:
        return f"{__version__}+g{told[:12]}"
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return __version__
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                ".", *(f":(exclude){p}" for p in GENERATED)],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}{'.dirty' if dirty else ''}"
