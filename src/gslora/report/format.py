"""Formatting shared by the Markdown and HTML reports: numbers that may be missing, changes, intervals, verdicts."""

from __future__ import annotations

import math
from typing import Any


def num(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` when it is missing, not a number, or not finite."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def fmt(value: Any, digits: int = 2) -> str:
    """A number with ``digits`` decimals, or "-" when it is missing."""
    number = num(value)
    return "-" if number is None else f"{number:.{digits}f}"


def change(before: Any, after: Any, digits: int = 2) -> str:
    """``before -> after``, each formatted as :func:`fmt` does."""
    return f"{fmt(before, digits)} -> {fmt(after, digits)}"


def interval(bounds: Any) -> tuple[float, float] | None:
    """A ``[low, high]`` pair of numbers, or ``None``."""
    if not isinstance(bounds, list | tuple) or len(bounds) != 2:
        return None
    low, high = num(bounds[0]), num(bounds[1])
    return None if low is None or high is None else (low, high)


def ci(value: Any, bounds: Any, digits: int = 2) -> str:
    """``value [low, high]`` (the interval only when it is there)."""
    pair = interval(bounds)
    if num(value) is None or pair is None:
        return fmt(value, digits)
    return f"{fmt(value, digits)} [{pair[0]:.{digits}f}, {pair[1]:.{digits}f}]"


def accepted(record: dict[str, Any], *, detail: bool = False) -> str:
    """"yes", "partial" (with ``detail``: "partial: <missed thresholds>"), or "-" when the record has no verdict."""
    verdict = record.get("acceptance")
    if not isinstance(verdict, dict):
        return "-"
    misses = verdict.get("misses") or []
    if not misses:
        return "yes"
    return "partial: " + "; ".join(str(m) for m in misses) if detail else "partial"


def measured_on(verification: dict[str, Any]) -> str:
    """`` (DEVICE)`` naming what measured a verification, or nothing where its ledger did not record it (schema 1)."""
    return f" ({verification['device']})" if verification.get("device") else ""
