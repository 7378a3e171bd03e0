"""The library version, and the code version (git commit) that produced a result.

Importing this module costs nothing: the command line's ``--version`` and every saved artifact read it.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from pathlib import Path

__version__ = "0.2.0"

# What benchmark runners write into the checkout: a changed results file is an output of the code, not a change to it
GENERATED = ("benchmarks/*/results.json", "benchmarks/*/report.md", "benchmarks/*/*.png", "benchmarks/*/choice.md",
             "benchmarks/*/drift.json", "benchmarks/*/paired.json", "benchmarks/*/lookalike.json")


@functools.cache
def code_version() -> str:
    """``<version>+g<commit>`` of the git checkout gslora runs from (``.dirty`` when it has uncommitted changes other
    than benchmark outputs); in a copy without ``.git`` (a container, another machine: move a stale ``.git`` aside
    there), the commit that ``GSLORA_COMMIT`` names, whose files the sender vouches for; else the plain version."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        told = os.environ.get("GSLORA_COMMIT", "").strip().lower()
        return f"{__version__}+g{told[:12]}" if re.fullmatch(r"[0-9a-f]{12,40}", told) else __version__
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                ".", *(f":(exclude){p}" for p in GENERATED)],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}{'.dirty' if dirty else ''}"
