"""The report's plots (matplotlib, Agg): scales chosen to show the changes that matter, values printed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gslora.io import atomic_write_bytes, atomic_write_with


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, plt) -> None:
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def _bars(ax, groups: list[str], series: list[tuple[str, list[float | None], str]], *, zoom: bool) -> None:
    """Grouped bars with their values printed on top; ``zoom``: the y axis spans the values, not 0-100."""
    import numpy as np

    width = 0.8 / max(1, len(series))
    values = [v for _, vs, _ in series for v in vs if v is not None]
    for i, (label, vs, colour) in enumerate(series):
        xs = np.arange(len(groups)) + (i - (len(series) - 1) / 2) * width
        heights = [0.0 if v is None else v for v in vs]
        bars = ax.bar(xs, heights, width * 0.95, label=label, color=colour)
        for bar, v in zip(bars, vs):
            if v is not None:
                ax.annotate(f"{v:.1f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom",
                            fontsize=7, xytext=(0, 1), textcoords="offset points")
    ax.set_xticks(range(len(groups)), groups)
    if zoom and values:
        low, high = min(values), max(values)
        pad = max(1.0, (high - low) * 0.6)
        ax.set_ylim(max(0.0, low - pad), min(100.0, high + pad) + pad * 0.3)
    else:
        ax.set_ylim(0, 109)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left" if zoom else "upper right")


def plot_accuracies(manifest: dict[str, Any], path: Path) -> None:
    """Left: what each request forgot (before, after, and earlier requests' classes); right: what it kept, on an
    axis zoomed to the retained scores so a change of a point shows; values printed on every bar."""
    plt = _pyplot()
    detection = manifest.get("task") == "detection"
    f, r, o = ("map50_f", "map50_r", "map50_o") if detection else ("acc_f", "acc_r", "acc_o")
    unit = "mAP@0.5" if detection else "Acc"
    requests = manifest["requests"]
    groups = [str(req["index"]) for req in requests]
    m = [req["metrics"] for req in requests]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    forget_series = [(f"{unit}_f before", [x[f"{f}_before"] for x in m], "#9ecae1"),
                     (f"{unit}_f after", [x[f] for x in m], "#08519c")]
    if any(x.get(o) is not None for x in m):
        forget_series.append((f"{unit}_o (forgotten earlier)", [x.get(o) for x in m], "#a50f15"))
    _bars(left, groups, forget_series, zoom=False)
    left.set_title("Forgetting: forget classes (lower after is better)", fontsize=9)
    left.set_xlabel("request")
    left.set_ylabel("percent")
    keep_series = [(f"{unit}_r before", [x[f"{r}_before"] for x in m], "#a1d99b"),
                   (f"{unit}_r after", [x[r] for x in m], "#006d2c")]
    if not detection and any(x.get("acc_m") is not None for x in m):
        keep_series.append(("Acc_m after (no data)", [x.get("acc_m") for x in m], "#fd8d3c"))
    _bars(right, groups, keep_series, zoom=True)
    right.set_title("Retention: retained classes (axis zoomed to the values)", fontsize=9)
    right.set_xlabel("request")
    fig.suptitle(f"{manifest['config']['method']['name']} on {manifest['dataset']['name']}", fontsize=10)
    fig.tight_layout()
    _save(fig, path, plt)


def plot_group_norms(manifest: dict[str, Any], path: Path) -> bytes | None:
    """group_norms.png: the report page's heat maps, block x request, on colour scales that start at 0, of the
    penalised group norm and the norm of the weight edit it made, each value printed (``html.norms_png``), or a note
    that the method has no LoRA groups. Returns the heat maps' PNG bytes (``None`` for the note)."""
    from gslora.report.html import norms_png

    png = norms_png(manifest)
    if png is not None:
        atomic_write_bytes(path, png)
        return png
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.text(0.5, 0.5, "no adapter groups (a method without LoRA)", ha="center", va="center")
    ax.set_axis_off()
    _save(fig, path, plt)
    return None


def plot_comparison(comparison: dict[str, Any], path: Path) -> None:
    """One panel per request: each method's H as a labelled dot on a shared zoomed axis, so methods a point apart
    stay apart; GS-LoRA(++) highlighted."""
    plt = _pyplot()
    methods = [(label, r) for label, r in comparison["methods"].items() if r.get("tasks")]
    if not methods:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.text(0.5, 0.5, "no finished method", ha="center", va="center")
        _save(fig, path, plt)
        return
    requests = sorted({t["task"] for _, r in methods for t in r["tasks"]})
    values = [t["h_mean"] for _, r in methods for t in r["tasks"] if t.get("h_mean") is not None]
    low, high = min(values), max(values)
    fig, axes = plt.subplots(1, len(requests), figsize=(3.2 * len(requests) + 1.5, 0.32 * len(methods) + 1.6),
                             sharey=True, squeeze=False)
    for ax, index in zip(axes[0], requests):
        for y, (_, result) in enumerate(methods):
            task = next((t for t in result["tasks"] if t["task"] == index), None)
            if task is None or task.get("h_mean") is None:
                continue
            ours = result.get("name", "").startswith("gs_lora")
            ax.plot(task["h_mean"], y, "o", color="#d7301f" if ours else "#3182bd", markersize=6 if ours else 4)
            ax.annotate(f"{task['h_mean']:.1f}", (task["h_mean"], y), xytext=(4, -3), textcoords="offset points",
                        fontsize=7, fontweight="bold" if ours else "normal")
        ax.set_xlim(low - 0.05 * (high - low + 1), high + 0.18 * (high - low + 1))
        ax.set_title(f"request {index}", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel("H-Mean")
    axes[0][0].set_yticks(range(len(methods)), [label for label, _ in methods], fontsize=8)
    axes[0][0].invert_yaxis()
    fig.suptitle("H-Mean per request and method (GS-LoRA(++) in red)", fontsize=10)
    fig.tight_layout()
    _save(fig, path, plt)
