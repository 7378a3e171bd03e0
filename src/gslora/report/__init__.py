"""Run reports: ``metrics.json``, a Markdown table and two PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gslora.io import atomic_write_json, atomic_write_text, atomic_write_with


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


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _run_header(manifest: dict[str, Any], title: str) -> list[str]:
    return [f"# {title}: {manifest['config']['method']['name']} on {manifest['dataset']['name']}", "",
            f"Base checkpoint sha256 `{manifest['base']['sha256'][:16]}`, gslora {manifest['gslora_version']}, "
            f"{manifest['hardware']}.", ""]


def markdown_table(manifest: dict[str, Any]) -> str:
    """The per-request table: accuracies in percent; H vs the model before the request and vs the original."""
    classes = manifest["dataset"]["classes"]
    lines = [*_run_header(manifest, "gslora run"),
             "| request | forget | Acc_f before -> after | Acc_r before -> after | Acc_o | H | H (vs original) "
             "| H_max | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in manifest["requests"]:
        m = r["metrics"]
        names = ", ".join(classes[c] for c in r["forget_classes"])
        names = names if len(names) <= 60 else f"{len(r['forget_classes'])} classes"
        lines.append(f"| {r['index']} | {names} | {_fmt(m['acc_f_before'])} -> {_fmt(m['acc_f'])} | "
                     f"{_fmt(m['acc_r_before'])} -> {_fmt(m['acc_r'])} | {_fmt(m['acc_o'])} | {_fmt(m['h_mean'])} | "
                     f"{_fmt(m['h_mean_original'])} | {_fmt(m['h_max'])} | {r['seconds']:.1f} |")
    extra = [r for r in manifest["requests"] if r["metrics"].get("acc_m") is not None or "margin" in r["metrics"]
             or "tar_f" in r["metrics"]]
    if extra:
        lines += ["", "| request | Acc_m before -> after | margin-penalised Acc_f / Acc_r / H | TAR@FAR=1% forgotten "
                  "before -> after | TAR@FAR=1% retained before -> after |", "|---|---|---|---|---|"]
        for r in extra:
            m = r["metrics"]
            margin = m.get("margin") or {}
            tar = {k: (m.get(k) or {}).get("far=0.01") for k in ("tar_f_before", "tar_f", "tar_r_before", "tar_r")}
            lines.append(f"| {r['index']} | {_fmt(m.get('acc_m_before'))} -> {_fmt(m.get('acc_m'))} | "
                         f"{_fmt(margin.get('acc_f'))} / {_fmt(margin.get('acc_r'))} / {_fmt(margin.get('h_mean'))} | "
                         f"{_fmt(tar['tar_f_before'])} -> {_fmt(tar['tar_f'])} | "
                         f"{_fmt(tar['tar_r_before'])} -> {_fmt(tar['tar_r'])} |")
    ratio = manifest["requests"][-1].get("trainable_ratio") if manifest["requests"] else None
    if ratio is not None:
        lines += ["", f"Trainable parameters: {100 * ratio:.2f}% of the base model."]
    lines += ["", "Acc_f: current forget classes (lower is better); Acc_r: classes still retained (with the missing "
              "ones); Acc_o: classes forgotten by earlier requests (lower is better); Acc_m: retained classes without "
              "training data. H = 2 dAcc_f Acc_r / (dAcc_f + Acc_r). TAR: share of same-person test pairs accepted "
              "at the cosine threshold where 1% of different-person pairs are accepted.", ""]
    return "\n".join(lines)


ACCURACY_SERIES = (("acc_r", "Acc_r (retained)", "o-"), ("acc_f", "Acc_f (forgotten now)", "s-"),
                   ("acc_o", "Acc_o (forgotten before)", "^-"), ("acc_m", "Acc_m (no data)", "v-"),
                   ("h_mean", "H-Mean", "d--"), ("acc_f_before", "Acc_f before request", "x:"))
DETECTION_SERIES = (("map50_r", "mAP@0.5 retained", "o-"), ("map50_f", "mAP@0.5 forgotten now", "s-"),
                    ("map50_o", "mAP@0.5 forgotten before", "^-"), ("h_mean", "H-Mean (mAP@0.5)", "d--"),
                    ("map50_f_before", "mAP@0.5 forget classes before", "x:"))


def detection_table(manifest: dict[str, Any]) -> str:
    """The per-request table of a detection run: mAP@0.5 and mAP (percent) per class group."""
    classes = manifest["dataset"]["classes"]
    lines = [*_run_header(manifest, "gslora detection run"),
             "| request | forget | mAP50_f before -> after | mAP50_r before -> after | mAP50_o | mAP_f | mAP_r | H "
             "| H_max | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in manifest["requests"]:
        m = r["metrics"]
        names = ", ".join(classes[c] for c in r["forget_classes"])
        lines.append(f"| {r['index']} | {names} | {_fmt(m['map50_f_before'])} -> {_fmt(m['map50_f'])} | "
                     f"{_fmt(m['map50_r_before'])} -> {_fmt(m['map50_r'])} | {_fmt(m['map50_o'])} | "
                     f"{_fmt(m['map_f'])} | {_fmt(m['map_r'])} | {_fmt(m['h_mean'])} | {_fmt(m['h_max'])} | "
                     f"{r['seconds']:.1f} |")
    ratio = manifest["requests"][-1].get("trainable_ratio") if manifest["requests"] else None
    if ratio is not None:
        lines += ["", f"Trainable parameters: {100 * ratio:.2f}% of the base detector."]
    lines += ["", "mAP: COCO AP over IoU 0.50:0.95, mAP50: AP at IoU 0.5 (torchmetrics, pycocotools backend), "
              "averaged over the forget (f), retained (r) and earlier forgotten (o) classes. H = 2 dmAP50_f mAP50_r / "
              "(dmAP50_f + mAP50_r).", ""]
    return "\n".join(lines)


def plot_accuracies(manifest: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = task_rows(manifest)
    x = [row["task"] for row in rows]
    detection = manifest.get("task") == "detection"
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for key, label, style in DETECTION_SERIES if detection else ACCURACY_SERIES:
        points = [(t, row.get(key)) for t, row in zip(x, rows) if row.get(key) is not None]
        if points:
            ax.plot(*zip(*points), style, label=label)
    ax.set_xlabel("request")
    ax.set_ylabel("percent")
    ax.set_ylim(-2, 102)
    ax.set_xticks(x)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("mAP per request" if detection else "Accuracy per request")
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def plot_group_norms(manifest: dict[str, Any], path: Path) -> None:
    """Heat maps, block x request: the penalised group norm and the norm of the weight edit it made."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [row for row in task_rows(manifest) if row["group_norms"]]
    panels = (("group_norms", "group norm ||theta_g||_2 (penalised)"), ("delta_norms", "edit ||scaling B A||_F"))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (key, title) in zip(axes, panels):
        if rows and rows[0][key]:
            blocks = list(rows[0][key])
            norms = np.array([[row[key].get(b, 0.0) for b in blocks] for row in rows])
            image = ax.imshow(norms.T, aspect="auto", cmap="viridis", origin="lower")
            fig.colorbar(image, ax=ax)
            ax.set_xticks(range(len(rows)), [str(row["task"]) for row in rows])
            ax.set_yticks(range(len(blocks)), [str(i) for i in range(len(blocks))])
            ax.set_ylabel("block (group)")
        else:
            ax.text(0.5, 0.5, "no adapter groups", ha="center", va="center")
        ax.set_xlabel("request")
        ax.set_title(title, fontsize=10)
    fig.suptitle("LoRA groups per block and request")
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def comparison_markdown(comparison: dict[str, Any], title: str = "Comparison") -> str:
    """The paper-style table: one row per method, one column per request, H / Acc_r / Acc_f / Acc_o cells."""
    methods = comparison["methods"]
    done = [r for r in methods.values() if r.get("tasks")]
    first = done[0]["tasks"] if done else []
    lines = [f"# {title}", "", f"gslora {comparison.get('version', '?')}, {comparison.get('hardware', '?')}.", "",
             "Cells: H / Acc_r / Acc_f / Acc_o (percent, top-1); Acc_o is '-' on the first request. "
             "H_max (the H of a perfect forget with Acc_r unchanged) in the last row.", ""]
    header = [f"{' + '.join(t['forget_classes'])} ({t['task']})" for t in first]
    lines.append("| method | " + " | ".join(header) + " | s / request | trainable |")
    lines.append("|---" * (len(first) + 3) + "|")
    for label, result in methods.items():
        if result.get("error"):
            lines.append(f"| {label} | failed: {result['error']} |")
            continue
        cells = [f"{_fmt(t['h_mean'])} / {_fmt(t['acc_r'])} / {_fmt(t['acc_f'])} / {_fmt(t.get('acc_o'))}"
                 + (f" / m {_fmt(t['acc_m'])}" if t.get("acc_m") is not None else "") for t in result["tasks"]]
        ratio = result.get("trainable_ratio")
        seconds = sum(t["seconds"] for t in result["tasks"]) / len(result["tasks"])
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {seconds:.1f} | "
                     + (f"{100 * ratio:.2f}% |" if ratio is not None else "- |"))
    if first:
        lines.append("| H_max | " + " | ".join(_fmt(t["h_max"]) for t in first) + " | | |")
    return "\n".join(lines) + "\n"


def plot_comparison(comparison: dict[str, Any], path: Path) -> None:
    """H-Mean per request, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8))
    markers = "os^vd<>ph*xP"
    colours = plt.get_cmap("tab20").colors
    requests: set[int] = set()
    for i, (label, result) in enumerate(comparison["methods"].items()):
        tasks = result.get("tasks") or []
        if tasks:
            requests.update(t["task"] for t in tasks)
            ours = result.get("name", "").startswith("gs_lora")
            ax.plot([t["task"] for t in tasks], [t["h_mean"] for t in tasks], f"{markers[i % len(markers)]}-",
                    color=colours[i % len(colours)], label=label, linewidth=2.8 if ours else 1.2,
                    zorder=3 if ours else 2)
    ax.set_xlabel("request")
    ax.set_ylabel("H-Mean (percent)")
    ax.set_ylim(-2, 102)
    ax.set_xticks(sorted(requests))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title("H-Mean per request")
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def run_table(manifest: dict[str, Any]) -> str:
    """The per-request table of a run, for its task."""
    return detection_table(manifest) if manifest.get("task") == "detection" else markdown_table(manifest)


def write_report(manifest: dict[str, Any], directory: str | Path) -> None:
    """Write metrics.json, report.md, accuracy.png and group_norms.png into ``directory``."""
    directory = Path(directory)
    atomic_write_json(directory / "metrics.json", metrics_summary(manifest))
    atomic_write_text(directory / "report.md", run_table(manifest))
    plot_accuracies(manifest, directory / "accuracy.png")
    plot_group_norms(manifest, directory / "group_norms.png")
