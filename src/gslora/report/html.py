"""The HTML report of a run (``report.html``): one self-contained page, readable offline.

Sections, in order: the run's header (method, data set, base model, versions), the per-request table with its
column definitions, the accuracy matrix (class group x model after each request), the LoRA group norms, the latest
verification (membership inference, linear probe, relearn time, face verification, against a Retrain reference
when one was measured), and the ledger with its events. Each section opens with a paragraph on what it shows and
how to read it, so the page explains itself without the README.

Nothing is fetched: there are no scripts, style sheets, fonts or remote images; plots are PNG files drawn with
matplotlib's Agg backend and embedded as ``data:`` URIs. Every string from the manifest is HTML-escaped, and any
number may be missing (``None``) in older runs, detection runs or runs without verification.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gslora.io import atomic_write_text
from gslora.report.format import accepted, change, ci, fmt, interval, measured_on, num

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: above this many cells a heat map does not print its values (they would not fit); the tables still hold them
MAX_PRINTED_CELLS = 600

#: longest class-name label drawn in a plot (the tables show names in full)
MAX_LABEL = 48

STYLE = """
body { font-family: sans-serif; max-width: 1200px; margin: 1em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; margin-top: 2em; }
h3 { font-size: 1.05em; }
p.explain { background: #f5f7fa; border-left: 4px solid #5b8bd0; padding: 0.5em 0.8em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #eef1f5; }
dl.legend dt { font-weight: bold; } dl.legend dd { margin: 0 0 0.4em 1.5em; }
figure { margin: 1em 0; } figcaption { font-size: 0.9em; max-width: 60em; }
img { max-width: 100%; height: auto; }
code { font-size: 0.95em; word-break: break-all; }
nav a { margin-right: 1em; }
"""

#: column -> definition, shown under the request table (only for the columns shown)
DEFINITIONS = {
    "Acc_f": "top-1 accuracy (percent) on the classes this request forgets, before -> after it (lower after is "
             "better).",
    "Acc_r": "top-1 accuracy (percent) on every class still retained, before -> after the request (higher is "
             "better).",
    "Acc_o": "top-1 accuracy (percent) on the classes forgotten by earlier requests (lower is better: they must "
             "stay forgotten).",
    "Acc_m": "top-1 accuracy (percent) on retained classes that had no training data (the missing-class setting), "
             "before -> after.",
    "mAP50_f": "mAP@0.5 (percent) on the classes this request forgets, before -> after it (lower after is better).",
    "mAP50_r": "mAP@0.5 (percent) on every retained class, before -> after the request (higher is better).",
    "mAP50_o": "mAP@0.5 (percent) on the classes forgotten by earlier requests (lower is better).",
    "H": "H-Mean, H = 2 dAcc_f Acc_r / (dAcc_f + Acc_r), where dAcc_f is the drop of Acc_f from the model before "
         "the request (for detection: mAP@0.5 in place of accuracy). High only when the request both forgets and "
         "keeps.",
    "H (vs original)": "the same H with dAcc_f measured from the original (pre-trained) model, the papers' tables.",
    "H_exact": "the H of an exact request (Acc_f to 0, Acc_r unchanged); H above it means Acc_r rose.",
    "accepted": "whether the request met the acceptance thresholds: yes, or partial (committed anyway) with the "
                "thresholds it missed.",
    "seconds": "wall-clock time of the request (training and evaluation).",
}

#: verification headline -> (label, digits), for the "versus Retrain reference" table
HEADLINES = {
    "mia_auc": ("membership-inference AUC", 3),
    "mia_member_share": ("share of forget images called members", 3),
    "probe_accuracy": ("probe accuracy on held-out train images (%)", 1),
    "relearn_steps": ("steps to relearn (capped: the cap)", 0),
    "tar_far_1e-2": ("TAR at FAR 1e-2 (%)", 1),
    "prototype_similarity": ("similarity to the original prototypes", 3),
}


# --- formatting ---------------------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    """Escape any value for HTML text or an attribute; ``None`` shows as "-"."""
    return "-" if value is None else html.escape(str(value), quote=True)












def _auto(value: Any) -> str:
    """Integers as they are, small numbers with 3 decimals, others with 2."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    number = num(value)
    return "-" if number is None else f"{number:.3f}" if abs(number) < 1 else f"{number:.2f}"


def _plot_text(text: Any, limit: int = MAX_LABEL) -> str:
    """A label for matplotlib: shortened, and with ``$`` escaped so that it is not read as mathtext."""
    text = str(text)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text.replace("$", r"\$")


def _names(values: Any) -> str:
    """A list of names as one comma-separated string (plain text; the caller escapes it)."""
    if isinstance(values, list | tuple):
        return ", ".join(str(v) for v in values)
    return "-" if values is None else str(values)


# --- HTML building blocks -----------------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A table of plain-text cells (every cell escaped here)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "\n".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _legend(terms: Iterable[tuple[str, str]]) -> str:
    """A definition list: each term and what it means."""
    items = "".join(f"<dt>{_e(term)}</dt><dd>{_e(text)}</dd>" for term, text in terms)
    return f'<dl class="legend">{items}</dl>'


def _paragraph(text: str, css: str = "") -> str:
    """A paragraph of plain text, with an optional CSS class."""
    attribute = f' class="{css}"' if css else ""
    return f"<p{attribute}>{_e(text)}</p>"


def _section(anchor: str, title: str, explanation: str, *parts: str) -> str:
    """A section: heading, the paragraph that explains it, then its body."""
    body = "\n".join(p for p in parts if p)
    return (f'<section id="{_e(anchor)}">\n<h2>{_e(title)}</h2>\n{_paragraph(explanation, "explain")}\n'
            f"{body}\n</section>")


def _numbers(table: str, summary: str = "The numbers") -> str:
    """The numbers behind a plot, folded away under a summary line."""
    return f"<details><summary>{_e(summary)}</summary>\n{table}\n</details>"


def _figure_block(image: str, caption: str) -> str:
    """An image with its caption (the caption is plain text)."""
    return f"<figure>\n{image}\n<figcaption>{_e(caption)}</figcaption>\n</figure>"


# --- matplotlib ---------------------------------------------------------------------------------------------------


def _new_figure(width: float, height: float, columns: int = 1) -> tuple[Figure, list[Axes]]:
    """A figure on the Agg canvas (no pyplot state, no display) with ``columns`` axes side by side."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(min(width, 30.0), min(height, 30.0)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, columns, squeeze=False)[0]
    return figure, list(axes)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _image(figure: Figure | bytes, alt: str) -> str:
    """The figure (or its PNG bytes) as an ``<img>`` with an embedded PNG."""
    data = base64.b64encode(figure if isinstance(figure, bytes) else _png(figure)).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _heatmap(figure: Figure, ax: Axes, values: list[list[float | None]], rows: Sequence[str],
             columns: Sequence[str], *, vmax: float, digits: str) -> None:
    """A heat map from 0 to ``vmax`` (viridis; missing cells grey and "-") with its values printed and a colour bar.

    Args:
        figure: the figure that holds ``ax`` (for the colour bar).
        ax: the axes to draw on.
        values: one list per row, one entry per column.
        rows: row labels (top to bottom).
        columns: column labels.
        vmax: the top of the colour scale.
        digits: format of the printed values, e.g. ``".1f"``.
    """
    import matplotlib
    import numpy as np

    grid = np.array([[math.nan if v is None else v for v in row] for row in values], dtype=float)
    colours = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
    shown = ax.imshow(np.ma.masked_invalid(grid), cmap=colours, vmin=0.0, vmax=vmax, aspect="auto")
    figure.colorbar(shown, ax=ax)
    if grid.size <= MAX_PRINTED_CELLS:
        for (i, j), v in np.ndenumerate(grid):
            light = math.isnan(v) or v > 0.6 * vmax
            ax.text(j, i, "-" if math.isnan(v) else format(v, digits), ha="center", va="center", fontsize=7,
                    color="black" if light else "white")
    ax.set_xticks(range(len(columns)), [_plot_text(c) for c in columns], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [_plot_text(r) for r in rows], fontsize=8)


def _bars(ax: Axes, groups: Sequence[str], series: Sequence[dict[str, Any]]) -> None:
    """Grouped bars, one group per entry of ``groups``, each bar's text printed on top.

    Args:
        ax: the axes to draw on.
        groups: the x labels.
        series: one dict per bar in a group: ``label``, ``colour``, ``values`` (``None``: no bar, "-" printed),
            optional ``errors`` (``(low, high)`` intervals or ``None``), ``hatched`` (bools) and ``texts`` (the
            printed labels, default the values).
    """
    from matplotlib.patches import Patch

    width = 0.8 / max(1, len(series))
    handles, any_hatched = [], False
    for k, item in enumerate(series):
        offset = (k - (len(series) - 1) / 2) * width
        errors, hatched, texts = (item.get(key) or [None] * len(groups) for key in ("errors", "hatched", "texts"))
        for i, value in enumerate(item["values"]):
            number = num(value)
            text = texts[i] or ("-" if number is None else f"{number:.1f}")
            if number is None:
                ax.annotate(text, (i + offset, 0), ha="center", va="bottom", fontsize=7)
                continue
            _bar(ax, i + offset, number, width, item["colour"], hatched=bool(hatched[i]),
                 interval=interval(errors[i]), text=text)
            any_hatched = any_hatched or bool(hatched[i])
        if any(num(v) is not None for v in item["values"]):
            handles.append(Patch(facecolor=item["colour"], label=item["label"]))
    if any_hatched:
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="capped (> N: never reached)"))
    ax.set_xticks(range(len(groups)), [_plot_text(g) for g in groups], fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    if handles:
        ax.legend(handles=handles, fontsize=7)


def _bar(ax: Axes, x: float, height: float, width: float, colour: str, *, hatched: bool,
         interval: tuple[float, float] | None, text: str) -> None:
    """One bar of :func:`_bars`, with its error bar and its printed text."""
    ax.bar(x, height, width * 0.95, color=colour, hatch="//" if hatched else None,
           edgecolor="black" if hatched else None)
    top = height
    if interval is not None:
        ax.errorbar(x, height, yerr=[[max(0.0, height - interval[0])], [max(0.0, interval[1] - height)]],
                    color="black", capsize=3, linewidth=1)
        top = max(height, interval[1])
    ax.annotate(text, (x, top), ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")


# --- the manifest ---------------------------------------------------------------------------------------------------


def _requests(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The committed request records (none when the manifest has none)."""
    return [r for r in manifest.get("requests") or [] if isinstance(r, dict)]


def _detection(manifest: dict[str, Any]) -> bool:
    """Whether the run is an object-detection run (mAP@0.5 in place of accuracy)."""
    return manifest.get("task") == "detection"


def _class_names(manifest: dict[str, Any]) -> list[str]:
    """The data set's class names, by class id."""
    return [str(c) for c in (manifest.get("dataset") or {}).get("classes") or []]


def _request_names(record: dict[str, Any], classes: Sequence[str]) -> str:
    """The class names of a request (from the record, else from the data set's names)."""
    names = record.get("forget_class_names")
    if names:
        return _names(names)
    ids = record.get("forget_classes") or []
    return ", ".join(classes[c] if isinstance(c, int) and 0 <= c < len(classes) else str(c) for c in ids)


def _metrics(record: dict[str, Any]) -> dict[str, Any]:
    """A request's metrics (``{}`` when missing)."""
    return record.get("metrics") or {}


# --- sections -----------------------------------------------------------------------------------------------------


def _header(manifest: dict[str, Any]) -> str:
    """The title and the run's facts: method, data set, base model and its score, versions, hardware."""
    method = ((manifest.get("config") or {}).get("method") or {}).get("name", "?")
    dataset = (manifest.get("dataset") or {}).get("name", "?")
    base, score = manifest.get("base") or {}, manifest.get("base_metrics") or {}
    base_score = "-"
    if num(score.get("score")) is not None:
        base_score = f"{score.get('metric', 'score')}: {fmt(score.get('score'))}%"
        if num(score.get("margin_score")) is not None:
            base_score += f" (margin-penalised: {fmt(score.get('margin_score'))}%)"
    facts = [("method", method), ("data set", dataset), ("task", manifest.get("task", "classification")),
             ("classes", len(_class_names(manifest))), ("base model checkpoint", base.get("checkpoint")),
             ("base model sha256", base.get("sha256")), ("base model test score", base_score),
             ("requests committed", len(_requests(manifest))), ("gslora version", manifest.get("gslora_version")),
             ("code version", manifest.get("code_version")), ("hardware", manifest.get("hardware")),
             ("run created", manifest.get("created"))]
    explanation = ("This page reports a gslora run: a base model and the erasure requests (forget classes) applied "
                   "to it one after the other. The table below says which method edited which model on which data; "
                   "the base model's checkpoint hash identifies the exact weights the run started from, and the "
                   "code version and hardware say what produced the numbers. Scores are percentages unless stated.")
    title = f"gslora report: {method} on {dataset}"
    return (f"<header>\n<h1>{_e(title)}</h1>\n{_paragraph(explanation, 'explain')}\n"
            f"{_table(['field', 'value'], facts)}\n</header>")


def _request_rows(manifest: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Column names and rows of the request table (classification or detection)."""
    requests, classes = _requests(manifest), _class_names(manifest)
    unit, prefix = ("mAP50", "map50") if _detection(manifest) else ("Acc", "acc")
    has_o = any(num(_metrics(r).get(f"{prefix}_o")) is not None for r in requests)
    has_m = not _detection(manifest) and any(num(_metrics(r).get("acc_m")) is not None for r in requests)
    has_original = any(num(_metrics(r).get("h_mean_original")) is not None for r in requests)
    columns = ["request", "forget classes", f"{unit}_f", f"{unit}_r", *([f"{unit}_o"] if has_o else []),
               *(["Acc_m"] if has_m else []), "H", *(["H (vs original)"] if has_original else []), "H_exact",
               "accepted", "seconds"]
    rows = []
    for r in requests:
        m = _metrics(r)
        cells = [str(r.get("index", "-")), _request_names(r, classes),
                 change(m.get(f"{prefix}_f_before"), m.get(f"{prefix}_f")),
                 change(m.get(f"{prefix}_r_before"), m.get(f"{prefix}_r"))]
        cells += [fmt(m.get(f"{prefix}_o"))] if has_o else []
        cells += [change(m.get("acc_m_before"), m.get("acc_m"))] if has_m else []
        cells += [fmt(m.get("h_mean"))] + ([fmt(m.get("h_mean_original"))] if has_original else [])
        cells += [fmt(m.get("h_exact")), accepted(r, detail=True), fmt(r.get("seconds"), 1)]
        rows.append(cells)
    return columns, rows




def _request_section(manifest: dict[str, Any]) -> str:
    """One row per committed request, and the definition of every column shown."""
    columns, rows = _request_rows(manifest)
    unit = "mAP@0.5" if _detection(manifest) else "top-1 accuracy"
    explanation = (f"One row per committed request, in order. Each score is a test-set {unit} in percent, shown as "
                   "the value on the model before the request -> the value after it. A good request drives the "
                   "forget classes (_f) to about 0 while the retained classes (_r) stay where they were, and earlier "
                   "forgotten classes (_o) stay near 0. H summarises both; compare it with H_exact, the H a perfect "
                   "request would reach.")
    legend = [(c, DEFINITIONS[c]) for c in columns if c in DEFINITIONS]
    if _detection(manifest):
        legend = [(c, t.replace("Acc_f", "mAP50_f").replace("Acc_r", "mAP50_r")) for c, t in legend]
    return _section("requests", "Requests", explanation, _table(columns, rows), _legend(legend))


def _class_groups(manifest: dict[str, Any]) -> list[tuple[str, list[int]]]:
    """The matrix's columns: each request's forget classes, then the classes no request forgot ("retained")."""
    classes = _class_names(manifest)
    groups: list[tuple[str, list[int]]] = []
    forgotten: set[int] = set()
    for r in _requests(manifest):
        ids = [c for c in r.get("forget_classes") or [] if isinstance(c, int)]
        if ids:
            groups.append((f"forgot at request {r.get('index', '?')}: {_request_names(r, classes)}", ids))
            forgotten.update(ids)
    sizes = [len(per) for r in _requests(manifest) for per in _per_class(r) if per is not None]
    total = len(classes) or max(sizes, default=0)
    retained = [c for c in range(total) if c not in forgotten]
    if retained:
        groups.append(("retained", retained))
    return groups


def _per_class(record: dict[str, Any]) -> tuple[list[Any] | None, list[Any] | None]:
    """A request's per-class scores (before, after), each ``None`` when the record does not hold it."""
    per = _metrics(record).get("per_class")
    if not isinstance(per, dict):
        return None, None
    before, after = per.get("before"), per.get("after")
    return (before if isinstance(before, list) else None), (after if isinstance(after, list) else None)


def _group_mean(scores: list[Any] | None, ids: Sequence[int]) -> float | None:
    """Mean of the classes' scores that are known; ``None`` when none is."""
    if scores is None:
        return None
    values = [num(scores[c]) for c in ids if 0 <= c < len(scores)]
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def accuracy_matrix(manifest: dict[str, Any]) -> tuple[list[str], list[str], list[list[float | None]]] | None:
    """The accuracy matrix: row labels, column labels and mean per-class scores (percent).

    Rows are the model before request 0 and after each request; columns are the classes each request forgot and
    the classes never forgotten. ``None`` when no request holds per-class scores (runs that predate them).
    """
    requests = _requests(manifest)
    if not any(after is not None for r in requests for after in _per_class(r)[1:]):
        return None
    groups = _class_groups(manifest)
    models = [(f"before request {requests[0].get('index', 0)}", _per_class(requests[0])[0])]
    models += [(f"after {'rollback ' if r.get('kind') == 'rollback' else 'request '}{r.get('index', '?')}",
                _per_class(r)[1]) for r in requests]
    values = [[_group_mean(scores, ids) for _, ids in groups] for _, scores in models]
    return [label for label, _ in models], [label for label, _ in groups], values


def _matrix_section(manifest: dict[str, Any]) -> str:
    """The accuracy matrix as a heat map (values printed) and as a table."""
    unit = "AP@0.5" if _detection(manifest) else "top-1 accuracy"
    title = "Accuracy matrix" if not _detection(manifest) else "AP@0.5 matrix"
    matrix = accuracy_matrix(manifest)
    if matrix is None:
        return _section("matrix", title, "This run's records hold no per-class scores (a run from before they were "
                        "recorded), so the accuracy matrix cannot be drawn.")
    rows, columns, values = matrix
    explanation = (f"Each row is the model after one request or approximate rollback (the first row: the model "
                   f"before the first request the run still applies); "
                   f"each column is a group of classes: the classes a request forgot, and the classes no request "
                   f"forgot (retained). A cell is the mean per-class test {unit} (percent) of that group on that "
                   f"model, printed in the cell; the colours run from 0 (dark) to 100 (bright). Read down a column: a "
                   f"group should stay bright until the row of the request that forgets it, turn dark there, and "
                   f"stay dark on every later row, while the retained column stays bright throughout. Grey cells "
                   f"and '-' are scores the run did not record.")
    figure, (ax,) = _new_figure(2.2 + 1.3 * len(columns), 1.4 + 0.45 * len(rows))
    _heatmap(figure, ax, values, rows, columns, vmax=100.0, digits=".1f")
    ax.set_xlabel("class group")
    ax.set_ylabel("model")
    ax.set_title(f"Mean per-class {unit} (percent) per class group and model", fontsize=10)
    image = _image(figure, f"Heat map of the mean per-class {unit} per class group after each request")
    table = _table(["model", *columns], [[row, *(fmt(v) for v in cells)] for row, cells in zip(rows, values)])
    return _section("matrix", title, explanation, image, _numbers(table))


def _norm_grid(requests: list[dict[str, Any]], key: str) -> tuple[list[str], list[list[float | None]]]:
    """Block names (in order of first appearance) and a block x request grid of ``record[key]``."""
    blocks: list[str] = []
    for r in requests:
        blocks += [b for b in r.get(key) or {} if b not in blocks]
    grid = [[num((r.get(key) or {}).get(b)) for r in requests] for b in blocks]
    return blocks, grid


def _norm_panels(manifest: dict[str, Any]) -> tuple[list[str], list[tuple[str, list[str], list[list[float | None]]]]]:
    """The request labels and, per recorded norm (group norm, edit norm), its label, block names and block x request
    grid; no panels when no request recorded group norms (a baseline, or a run from before they were recorded)."""
    requests = [r for r in _requests(manifest) if isinstance(r.get("group_norms"), dict) and r["group_norms"]]
    panels = [(key, label) for key, label in (("group_norms", "group norm ||theta_g||_2 (penalised)"),
                                              ("delta_norms", "weight edit ||scaling B A||_F"))
              if any(r.get(key) for r in requests)]
    return [f"request {r.get('index', '?')}" for r in requests], [(label, *_norm_grid(requests, key))
                                                                  for key, label in panels]


def norms_png(manifest: dict[str, Any]) -> bytes | None:
    """The heat maps of the LoRA group norms and edit norms, block x request, as PNG bytes (report.html embeds them,
    ``write_report`` saves them as group_norms.png); ``None`` when no request recorded group norms."""
    labels, grids = _norm_panels(manifest)
    if not grids:
        return None
    height = 1.6 + 0.35 * max(len(blocks) for _, blocks, _ in grids)
    figure, axes = _new_figure(1.0 + len(grids) * (2.5 + 0.8 * len(labels)), height, columns=len(grids))
    for ax, (label, blocks, grid) in zip(axes, grids):
        top = max((v for row in grid for v in row if v is not None), default=0.0)
        _heatmap(figure, ax, grid, blocks, labels, vmax=max(top, 1e-12), digits=".3g")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("request")
        ax.set_ylabel("block (group)")
    return _png(figure)


def _norms_section(manifest: dict[str, Any], png: bytes | None = None) -> str:
    """Heat maps, block x request, of the penalised group norms and of the norms of the edits they made (``png``:
    ``norms_png(manifest)`` when the caller has drawn it already)."""
    labels, grids = _norm_panels(manifest)
    title = "LoRA group norms"
    if not grids:
        return _section("norms", title, "No group norms were recorded: this method has no LoRA groups (a baseline), "
                        "or the run predates them.")
    tables = [f"<h3>{_e(label)}</h3>\n" + _table(["block", *labels], [[b, *(_auto(v) for v in row)]
                                                                      for b, row in zip(blocks, grid)])
              for label, blocks, grid in grids]
    explanation = ("GS-LoRA puts one LoRA adapter group on each transformer block and penalises the group's norm, "
                   "so that a request edits as few blocks as it can. Each heat map has the blocks as rows and the "
                   "requests as columns, with the value printed in the cell; the colours start at 0 (dark, the group "
                   "is switched off) and the brightest cell is the largest value. Left: the norm of the group's "
                   "LoRA weights (the penalised quantity); right, when recorded: the norm of the weight change the "
                   "group makes to the model. A sparse edit shows as a few bright rows and many dark ones.")
    image = _image(png or norms_png(manifest), "Heat maps of the LoRA group norms and edit norms per block and request")
    return _section("norms", title, explanation, image, _numbers("\n".join(tables)))


# --- verification -------------------------------------------------------------------------------------------------


def _verification_labels(manifest: dict[str, Any], results: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Request id (as in the results) -> (request index, class names), from the run's request records."""
    classes = _class_names(manifest)
    by_id = {str(r.get("id")): r for r in _requests(manifest) if "id" in r}
    labels = {}
    for name, group in results.items():
        record = by_id.get(str(name))
        if record is not None:
            labels[name] = (str(record.get("index", name)), _request_names(record, classes))
        else:
            ids = (group or {}).get("classes") or []
            labels[name] = (f"id {name}", ", ".join(classes[c] if isinstance(c, int) and 0 <= c < len(classes)
                                                    else str(c) for c in ids))
    return labels


def _part(group: Any, key: str) -> dict[str, Any]:
    """One check's results in a group (``mia``, ``probe``, ``relearn``, ``faces``), ``{}`` when absent."""
    part = group.get(key) if isinstance(group, dict) else None
    return part if isinstance(part, dict) else {}


def _roc_figure(results: dict[str, Any], labels: dict[str, tuple[str, str]]) -> str:
    """The membership-inference ROC curves, one per request, and the diagonal of a coin toss."""
    curves = [(name, _part(g, "mia")) for name, g in results.items()
              if isinstance(_part(g, "mia").get("roc"), dict)]
    if not curves:
        return ""
    figure, (ax,) = _new_figure(5.5, 4.5)
    for name, mia in curves:
        roc = mia["roc"]
        points = [(num(f), num(t)) for f, t in zip(roc.get("fpr") or [], roc.get("tpr") or [])]
        points = [(f, t) for f, t in points if f is not None and t is not None]
        index, names = labels[name]
        ax.plot([f for f, _ in points], [t for _, t in points], linewidth=1.5,
                label=_plot_text(f"request {index} ({names}): AUC {fmt(mia.get('auc'), 3)}", 60))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance (AUC 0.5)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("false-positive rate (test images called members)")
    ax.set_ylabel("true-positive rate (forget training images called members)")
    ax.set_title("Membership inference on the forget classes", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    caption = ("Membership inference: an attack tries to tell the forget classes' training images (members) from "
               "their test images (non-members) using the model's outputs. Each line is the attack's ROC curve for "
               "one request, with its area under the curve (AUC) in the legend. A curve on the dashed diagonal "
               "(AUC 0.5) means the attack does no better than a coin toss, which is what a model that never "
               "trained on those images gives; a curve bowing towards the top left means the model still "
               "remembers which images it was trained on.")
    return _figure_block(_image(figure, "ROC curves of the membership-inference attack per request"), caption)


def _series(results: dict[str, Any], names: list[str], key: str, value: str, label: str, colour: str,
            ci: str | None = None) -> dict[str, Any]:
    """A bar series of ``results[name][key][value]`` (with its interval ``ci``) for each request name."""
    parts = [_part(results.get(name), key) for name in names]
    return {"label": label, "colour": colour, "values": [p.get(value) for p in parts],
            "errors": [p.get(ci) for p in parts] if ci else None}


def _probe_figure(results: dict[str, Any], reference: dict[str, Any], labels: dict[str, tuple[str, str]]) -> str:
    """Probe accuracy on held-out training images per request, with intervals, next to the reference's."""
    names = [name for name, g in results.items() if _part(g, "probe")]
    if not names:
        return ""
    series = [_series(results, names, "probe", "accuracy", "this model", "#3182bd", "accuracy_ci")]
    if reference:
        series.append(_series(reference, names, "probe", "accuracy", "Retrain reference", "#bdbdbd", "accuracy_ci"))
    figure, (ax,) = _new_figure(2.5 + 1.4 * len(names), 4.0)
    _bars(ax, [f"request {labels[n][0]}" for n in names], series)
    ax.set_ylim(0, 110)
    ax.set_ylabel("probe accuracy (percent)")
    ax.set_title("Linear probe on the forget classes (held-out train)", fontsize=10)
    caption = ("Linear probe: a linear classifier is fitted on the model's frozen features to tell the forget "
               "classes apart, then scored on held-out training images of those classes. Each bar is one "
               "request's probe accuracy (percent), the black line its 95% bootstrap interval. A high bar means "
               "the features still separate the forgotten classes: the head was edited but the knowledge is "
               "still in the body. The grey bar, when present, is the same probe on the Retrain reference (a model "
               "trained without those classes): a bar no higher than the reference's means no more is left than "
               "if the classes had never been learnt.")
    return _figure_block(_image(figure, "Bar chart of the probe accuracy per request"), caption)


def _relearn_series(results: dict[str, Any], names: list[str], label: str, colour: str) -> dict[str, Any]:
    """Relearn steps per request; a capped run drawn at its cap, hatched and labelled "> N"."""
    values, hatched, texts = [], [], []
    for name in names:
        relearn = _part(results.get(name), "relearn")
        capped = bool(relearn.get("capped"))
        steps = relearn.get("max_steps") if capped else relearn.get("steps")
        values.append(steps)
        hatched.append(capped)
        texts.append(f"> {_auto(steps)}" if capped else _auto(steps))
    return {"label": label, "colour": colour, "values": values, "hatched": hatched, "texts": texts}


def _relearn_figure(results: dict[str, Any], reference: dict[str, Any], labels: dict[str, tuple[str, str]]) -> str:
    """Fine-tuning steps until the forget classes come back, per request, next to the reference's."""
    names = [name for name, g in results.items() if _part(g, "relearn")]
    if not names:
        return ""
    series = [_relearn_series(results, names, "this model", "#31a354")]
    if reference:
        series.append(_relearn_series(reference, names, "Retrain reference", "#bdbdbd"))
    figure, (ax,) = _new_figure(2.5 + 1.4 * len(names), 4.0)
    _bars(ax, [f"request {labels[n][0]}" for n in names], series)
    ax.set_ylim(0, None)
    ax.margins(y=0.15)
    ax.set_ylabel("fine-tuning steps")
    ax.set_title("Steps to relearn the forget classes from a few images", fontsize=10)
    caption = ("Relearn time: the model is fine-tuned on a few images of the forget classes and the number of "
               "steps until their accuracy reaches the target is counted. Each bar is one request; a hatched bar "
               "labelled '> N' never reached the target within N steps (the cap). Few steps mean the knowledge "
               "was only hidden and comes back at once; a model that truly forgot needs about as many steps as "
               "the grey Retrain reference, when present, which never learnt the classes.")
    return _figure_block(_image(figure, "Bar chart of the steps to relearn per request"), caption)


def _faces_figure(results: dict[str, Any], labels: dict[str, tuple[str, str]]) -> str:
    """TAR at FAR 1e-2 and 1e-3 on the forgotten and the retained identities, per request."""
    names = [name for name, g in results.items() if _part(g, "faces")]
    if not names:
        return ""
    series = []
    for far, light, dark in (("far=0.01", "#fc9272", "#de2d26"), ("far=0.001", "#9ecae1", "#3182bd")):
        shown = far.replace("far=0.01", "1e-2").replace("far=0.001", "1e-3")
        for key, label, colour in (("tar", "forgotten", dark), ("tar_retained", "retained", light)):
            values = [(_part(results[n], "faces").get(key) or {}).get(far) for n in names]
            series.append({"label": f"{label}, FAR {shown}", "colour": colour, "values": values})
    figure, (ax,) = _new_figure(3.0 + 2.0 * len(names), 4.0)
    _bars(ax, [f"request {labels[n][0]}" for n in names], series)
    ax.set_ylim(0, 110)
    ax.set_ylabel("TAR (percent)")
    ax.set_title("Face verification: true-accept rate at a fixed false-accept rate", fontsize=10)
    caption = ("Face verification: pairs of test images are accepted as the same person when their embeddings' "
               "cosine similarity is above the threshold at which 1% (FAR 1e-2) or 0.1% (FAR 1e-3) of "
               "different-person pairs are accepted. Each bar is the share of same-person pairs accepted (TAR, "
               "percent): dark bars for the identities a request forgot, light bars for the retained identities. "
               "Forgetting should bring the dark bars near 0 while the light bars stay high.")
    return _figure_block(_image(figure, "Bar chart of TAR at FAR 1e-2 and 1e-3 per request"), caption)


def _verification_table(results: dict[str, Any], labels: dict[str, tuple[str, str]]) -> str:
    """Every verification figure per request, with its 95% interval in brackets."""
    faces = any(_part(g, "faces") for g in results.values())
    headers = ["request", "classes", "MIA AUC", "called members (share)", "attack AUC on retained",
               "probe, held-out train (%)", "probe, test (%)", "probe, retained (%)", "relearn steps (target %)"]
    if faces:
        headers += ["TAR@1e-2 forgotten / retained", "TAR@1e-3 forgotten / retained",
                    "prototype similarity forgotten / retained"]
    rows = []
    for name, group in results.items():
        mia, probe, relearn, face = (_part(group, k) for k in ("mia", "probe", "relearn", "faces"))
        steps = "-"
        if relearn:
            capped = relearn.get("capped")
            steps = (f"> {_auto(relearn.get('max_steps'))}" if capped else _auto(relearn.get("steps"))) + \
                f" ({fmt(relearn.get('target'), 1)})"
        row = [*labels[name], ci(mia.get("auc"), mia.get("auc_ci"), 3),
               ci(mia.get("member_share"), mia.get("member_share_ci"), 3), fmt(mia.get("attack_auc_on_retained"), 3),
               ci(probe.get("accuracy"), probe.get("accuracy_ci"), 1),
               ci(probe.get("test_accuracy"), probe.get("test_accuracy_ci"), 1),
               fmt(probe.get("retained_accuracy"), 1), steps]
        if faces:
            tar, kept = face.get("tar") or {}, face.get("tar_retained") or {}
            row += [f"{fmt(tar.get(f), 1)} / {fmt(kept.get(f), 1)}" for f in ("far=0.01", "far=0.001")]
            row.append(f"{ci(face.get('prototype_similarity'), face.get('prototype_similarity_ci'), 3)} / "
                       f"{fmt(face.get('prototype_similarity_retained'), 3)}")
        rows.append(row)
    return _table(headers, rows)


def _versus_cell(figures: dict[str, Any], side: str, key: str, group: Any, digits: int) -> str:
    """One side (``method`` or ``reference``) of a headline; relearn steps of a capped run shown as "> N"."""
    relearn = _part(group, "relearn")
    if key == "relearn_steps" and relearn.get("capped"):
        return f"> {_auto(relearn.get('max_steps', figures.get(side)))}"
    return fmt(figures.get(side), digits)


def _versus_table(versus: dict[str, Any], results: dict[str, Any], reference: dict[str, Any],
                  labels: dict[str, tuple[str, str]]) -> str:
    """The headline figures of this model next to the Retrain reference's, and their differences."""
    rows = []
    for name, headlines in versus.items():
        index = labels.get(str(name), (f"id {name}", ""))[0]
        for key, figures in (headlines or {}).items():
            figures = figures if isinstance(figures, dict) else {}
            if num(figures.get("method")) is None and num(figures.get("reference")) is None:
                continue
            label, digits = HEADLINES.get(key, (key, 3))
            rows.append([index, label, _versus_cell(figures, "method", key, results.get(str(name)), digits),
                         _versus_cell(figures, "reference", key, reference.get(str(name)), digits),
                         fmt(figures.get("difference"), digits)])
    if not rows:
        return _paragraph("The reference was measured, but no headline figure could be compared.")
    return _table(["request", "figure", "this model", "Retrain reference", "difference"], rows)


def _verification_section(manifest: dict[str, Any]) -> str:
    """The latest verification: the figures, a table of every number, and the comparison with the reference."""
    entries = [v for v in manifest.get("verification") or [] if isinstance(v, dict)]
    title = "Verification"
    if not entries:
        return _section("verification", title, "No verification has been run on this run yet, so there is no "
                        "membership-inference, probe or relearn evidence to show.")
    latest = entries[-1]
    results = {str(k): v for k, v in (latest.get("results") or {}).items() if isinstance(v, dict)}
    reference = latest.get("reference") if isinstance(latest.get("reference"), dict) else {}
    ref_results = {str(k): v for k, v in (reference.get("results") or {}).items() if isinstance(v, dict)}
    labels = _verification_labels(manifest, results)
    explanation = (f"Accuracy on the test set only shows that the forget classes are no longer predicted; the "
                   f"checks below ask whether the model still holds them. They were measured at "
                   f"{latest.get('time', '?')}{measured_on(latest)} on the model after request id "
                   f"{latest.get('after_request', '?')} "
                   f"(the latest of {len(entries)} verification(s)), for every request so far, because forgetting "
                   f"must survive later edits. Intervals are 95% bootstrap intervals"
                   + (f"; grey bars and the reference tables are the Retrain reference "
                      f"({reference.get('checkpoint', '?')}), a model trained without the forgotten classes."
                      if reference else "; no Retrain reference was measured."))
    if not results:
        return _section("verification", title, explanation, _paragraph("This verification holds no results."))
    parts = [_roc_figure(results, labels), _probe_figure(results, ref_results, labels),
             _relearn_figure(results, ref_results, labels), _faces_figure(results, labels),
             "<h3>All figures</h3>", _verification_table(results, labels)]
    if ref_results:
        ref_labels = _verification_labels(manifest, ref_results)
        parts += ["<h3>Retrain reference, same checks</h3>", _verification_table(ref_results, ref_labels)]
    if isinstance(reference.get("versus"), dict):
        parts += ["<h3>Versus Retrain reference</h3>",
                  _paragraph("Each headline figure of this model, the reference's, and this model's minus the "
                             "reference's. Close to 0 is best: the edited model then looks like one that never "
                             "learnt the classes. A capped relearn run shows as '> N': it did not relearn within N "
                             "steps."),
                  _versus_table(reference["versus"], results, ref_results, labels)]
    return _section("verification", title, explanation, *parts)


# --- ledger -------------------------------------------------------------------------------------------------------


def _detail(value: Any) -> str:
    """A ledger or event value as plain text (dicts and lists as JSON)."""
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, default=str)
    return "-" if value is None else str(value)


def _ledger_section(manifest: dict[str, Any]) -> str:
    """Every request the run received, with its state, and the run's events."""
    ledger = [row for row in manifest.get("ledger") or [] if isinstance(row, dict)]
    events = [row for row in manifest.get("events") or [] if isinstance(row, dict)]
    explanation = ("The ledger lists every request the run has received, in order, whatever became of it: done "
                   "(committed; its model is in the tables above), failed (with its error; the run was left as it "
                   "was), or still waiting, with who asked, why, and when it was received and finished."
                   + (" The events below record what happened to the run over time (for example commits, "
                      "failures, verifications), with the request they concern." if events else ""))
    if not ledger:
        parts = [_paragraph("The ledger is empty: no request has been received.")]
    else:
        headers = ["id", "kind", "classes", "status", "requester", "reason", "received", "finished", "error"]
        rows = [[_detail(row.get("id")), _detail(row.get("kind")), _names(row.get("class_names") or []),
                 *(_detail(row.get(k)) for k in headers[3:])] for row in ledger]
        parts = [_table(headers, rows)]
    if events:
        parts += ["<h3>Events</h3>", _table(["time", "kind", "request id", "detail"],
                                            [[_detail(e.get(k)) for k in ("time", "kind", "request_id", "detail")]
                                             for e in events])]
    return _section("ledger", "Ledger", explanation, *parts)


# --- the page -----------------------------------------------------------------------------------------------------


def render_html(manifest: dict[str, Any], *, norms: bytes | None = None) -> str:
    """The report page of a run's manifest, as one self-contained HTML document.

    Args:
        manifest: the run's manifest (what ``manifest.json`` holds); optional keys may be missing or ``None``.
        norms: ``norms_png(manifest)``, when the caller has drawn it already (drawn here otherwise).

    Returns:
        The HTML text.
    """
    method = ((manifest.get("config") or {}).get("method") or {}).get("name", "?")
    dataset = (manifest.get("dataset") or {}).get("name", "?")
    if _requests(manifest):
        sections = [_request_section(manifest), _matrix_section(manifest), _norms_section(manifest, norms),
                    _verification_section(manifest)]
        matrix = "AP@0.5 matrix" if _detection(manifest) else "Accuracy matrix"
        links = [("requests", "Requests"), ("matrix", matrix), ("norms", "Group norms"),
                 ("verification", "Verification"), ("ledger", "Ledger")]
    else:
        sections = [_section("requests", "Requests", "No request has been committed yet, so there is nothing to "
                             "plot: the tables and figures appear once the first erasure request is committed.")]
        links = [("requests", "Requests"), ("ledger", "Ledger")]
    nav = "<nav>" + "".join(f'<a href="#{anchor}">{_e(text)}</a>' for anchor, text in links) + "</nav>"
    body = "\n".join([_header(manifest), nav, *sections, _ledger_section(manifest)])
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{_e(f'gslora report: {method} on {dataset}')}</title>\n<style>{STYLE}</style>\n</head>\n"
            f"<body>\n{body}\n</body>\n</html>\n")


def write_html(manifest: dict[str, Any], path: str | Path, *, norms: bytes | None = None) -> None:
    """Write the run's report page (see :func:`render_html`) to ``path``, atomically.

    Args:
        manifest: the run's manifest.
        path: where to write the page, usually ``<run>/report.html``.
        norms: as for :func:`render_html`.
    """
    atomic_write_text(path, render_html(manifest, norms=norms))


__all__ = ["accuracy_matrix", "norms_png", "render_html", "write_html"]
