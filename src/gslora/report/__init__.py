"""Run reports: ``metrics.json``, ``report.md`` (``report.markdown``), ``accuracy.png`` and ``group_norms.png``
(``report.plots``), and the comparison table and plot of several methods."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gslora.io import atomic_write_json, atomic_write_text
from gslora.report.markdown import detection_request_table, fmt, full_report, markdown_table
from gslora.report.plots import plot_accuracies, plot_comparison, plot_group_norms


def task_rows(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat record per request: classes, accuracies (percent), H-Means, seconds, group norms."""
    rows = []
    for r in manifest["requests"]:
        rows.append({"task": r["index"], "forget_classes": r["forget_classes"], "acc_m": None,
                     "forget_class_names": r["forget_class_names"], **r["metrics"], "seconds": r["seconds"],
                     "trainable_ratio": r.get("trainable_ratio"), "group_norms": r.get("group_norms", {}),
                     "delta_norms": r.get("delta_norms", {})})
    return rows


def metrics_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    rows = task_rows(manifest)
    ratios = [row["trainable_ratio"] for row in rows if row["trainable_ratio"] is not None]
    return {"version": manifest["gslora_version"], "dataset": manifest["dataset"]["name"],
            "method": manifest["config"]["method"], "trainable_ratio": ratios[-1] if ratios else None,
            "hardware": manifest["hardware"], "tasks": rows}


def comparison_markdown(comparison: dict[str, Any], title: str = "Comparison") -> str:
    """The paper-style table: one row per method, one column per request, H / Acc_r / Acc_f / Acc_o cells."""
    methods = comparison["methods"]
    done = [r for r in methods.values() if r.get("tasks")]
    first = done[0]["tasks"] if done else []
    lines = [f"# {title}", "", f"gslora {comparison.get('version', '?')}, {comparison.get('hardware', '?')}.", "",
             "Cells: H / Acc_r / Acc_f / Acc_o (percent, top-1); Acc_o is '-' on the first request. "
             "H_exact (the H of a perfect forget with Acc_r unchanged) in the last row.", ""]
    header = [f"{' + '.join(t['forget_classes'])} ({t['task']})" for t in first]
    lines.append("| method | " + " | ".join(header) + " | s / request | trainable |")
    lines.append("|---" * (len(first) + 3) + "|")
    for label, result in methods.items():
        if result.get("error"):
            lines.append(f"| {label} | failed: {result['error']} |")
            continue
        cells = [f"{fmt(t['h_mean'])} / {fmt(t['acc_r'])} / {fmt(t['acc_f'])} / {fmt(t.get('acc_o'))}"
                 + (f" / m {fmt(t['acc_m'])}" if t.get("acc_m") is not None else "") for t in result["tasks"]]
        ratio = result.get("trainable_ratio")
        seconds = sum(t["seconds"] for t in result["tasks"]) / len(result["tasks"])
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {seconds:.1f} | "
                     + (f"{100 * ratio:.2f}% |" if ratio is not None else "- |"))
    if first:
        lines.append("| H_exact | " + " | ".join(fmt(t["h_exact"]) for t in first) + " | | |")
    return "\n".join(lines) + "\n"


def run_table(manifest: dict[str, Any]) -> str:
    """The per-request table of a run with its legend (what ``gslora forget`` prints)."""
    return markdown_table(manifest)


def write_report(manifest: dict[str, Any], directory: str | Path) -> None:
    """Write metrics.json, report.md, accuracy.png and group_norms.png into ``directory``."""
    directory = Path(directory)
    atomic_write_json(directory / "metrics.json", metrics_summary(manifest))
    atomic_write_text(directory / "report.md", full_report(manifest))
    if manifest["requests"]:
        plot_accuracies(manifest, directory / "accuracy.png")
        plot_group_norms(manifest, directory / "group_norms.png")


__all__ = ["comparison_markdown", "detection_request_table", "full_report", "markdown_table", "metrics_summary",
           "plot_accuracies", "plot_comparison", "plot_group_norms", "run_table", "task_rows", "write_report"]
