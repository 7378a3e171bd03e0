"""Run reports: ``metrics.json``, ``report.md`` (``report.markdown``), ``accuracy.png`` and ``group_norms.png``
(``report.plots``), and the comparison table and plot of several methods."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gslora.io import atomic_write_json, atomic_write_text
from gslora.metrics.paired import against_first
from gslora.report.format import fmt
from gslora.report.html import write_html
from gslora.report.markdown import detection_request_table, full_report, markdown_table
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
    return {"version": manifest["gslora_version"], "ledger_revision": manifest.get("ledger_revision"),
            "dataset": manifest["dataset"]["name"],
            "method": manifest["config"]["method"], "trainable_ratio": ratios[-1] if ratios else None,
            "hardware": manifest["hardware"], "tasks": rows}


def comparison_markdown(comparison: dict[str, Any], title: str = "Comparison") -> str:
    """The paper-style table: one row per method, one column per request, H / Acc_r / Acc_f / Acc_o cells."""
    methods = comparison["methods"]
    done = [r for r in methods.values() if r.get("tasks")]
    first = done[0]["tasks"] if done else []
    written = comparison.get("written") or {}
    version = comparison.get("version") or written.get("commit") or written.get("version", "?")
    lines = [f"# {title}", "", f"gslora {version}, {comparison.get('hardware') or written.get('hardware', '?')}.", "",
             "Cells: H / Acc_r / Acc_f / Acc_o (percent, top-1); Acc_o is '-' on the first request. "
             "H_exact (the H of an exact request: Acc_f to 0, Acc_r unchanged) in the last row. Parameters: the share "
             "of the base model's weights that train (masked: that SalUn's mask lets change; dampened: that SSD "
             "scaled down without training).", ""]
    header = [f"{' + '.join(t['forget_classes'][:3])}"  # 20 identities per request do not fit a column
              + (f" + {len(t['forget_classes']) - 3} more" if len(t["forget_classes"]) > 3 else "") + f" ({t['task']})"
              for t in first]
    lines.append("| method | " + " | ".join(header) + " | s / request | parameters |")
    lines.append("|---" * (len(first) + 3) + "|")
    for label, result in methods.items():
        if result.get("error"):
            lines.append(f"| {label} | failed: {result['error']} |")
            continue
        cells = [f"{fmt(t['h_mean'])} / {fmt(t['acc_r'])} / {fmt(t['acc_f'])} / {fmt(t.get('acc_o'))}"
                 + (f" / m {fmt(t['acc_m'])}" if t.get("acc_m") is not None else "") for t in result["tasks"]]
        ratio = result.get("trainable_ratio")
        seconds = sum(t["seconds"] for t in result["tasks"]) / len(result["tasks"])
        meaning = result.get("ratio_meaning", "trainable")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {seconds:.1f} | "
                     + (f"{100 * ratio:.2f}% {meaning} |" if ratio is not None else "- |"))
    if first:
        lines.append("| H_exact | " + " | ".join(fmt(t["h_exact"]) for t in first) + " | | |")
    lines += paired_lines(methods)
    return "\n".join(lines) + "\n"


def paired_lines(methods: dict[str, Any]) -> list[str]:
    """How far each method is from the first on the same evaluation images (a paired bootstrap of mean H, 95%
    interval), when the rows keep their per-image hits."""
    pairs = against_first(methods)
    if not pairs:
        return []
    reference = next(iter(pairs.values()))["reference"]
    resamples = next(iter(pairs.values()))["resamples"]
    lines = ["", f"Mean H over the requests against {reference}, on the same evaluation images: the difference and "
             f"its 95% interval over {resamples} paired resamples (each class's images redrawn with replacement; "
             "the interval leaves out the spread between training seeds). An interval that holds 0 does not tell "
             "the two apart.", "", f"| method | mean H | minus {reference} | 95% interval | resamples strictly ahead |",
             "|---|---|---|---|---|"]
    for label, pair in pairs.items():
        low, high = pair["ci95"]
        lines.append(f"| {label} | {fmt(pair['mean_h'][label])} | {pair['mean_h_difference']:+.2f} | "
                     f"{low:+.2f} .. {high:+.2f} | {100 * pair['share_a_ahead']:.0f}% |")
    return lines


def run_table(manifest: dict[str, Any]) -> str:
    """The per-request table of a run with its legend (what ``gslora forget`` prints)."""
    return markdown_table(manifest)


#: the files ``write_report`` writes (metrics.json last: its ledger revision says the others are current)
REPORT_FILES = ("report.md", "accuracy.png", "group_norms.png", "report.html", "metrics.json")


def write_report(manifest: dict[str, Any], directory: str | Path) -> None:
    """Write report.md, accuracy.png, group_norms.png, report.html and, last, metrics.json into ``directory``."""
    directory = Path(directory)
    atomic_write_text(directory / "report.md", full_report(manifest))
    norms = None
    if manifest["requests"]:
        plot_accuracies(manifest, directory / "accuracy.png")
        norms = plot_group_norms(manifest, directory / "group_norms.png")  # the page embeds the same heat maps
    write_html(manifest, directory / "report.html", norms=norms)
    atomic_write_json(directory / "metrics.json", metrics_summary(manifest))


__all__ = ["REPORT_FILES", "comparison_markdown", "detection_request_table", "full_report", "markdown_table",
           "metrics_summary",
           "plot_accuracies", "plot_comparison", "plot_group_norms", "run_table", "task_rows", "write_report"]
