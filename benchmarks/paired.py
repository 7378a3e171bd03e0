"""How far apart two rows of a benchmark are: a paired bootstrap of their H difference over the evaluation images.

Usage: python benchmarks/paired.py benchmarks/<folder> ["<label a>" "<label b>" ...] [--resamples 2000]
(labels in pairs, the other pairs of paired.json kept; without labels it re-creates every pair already in the folder's
paired.json, as ``benchmarks/run.py <folder>`` does after re-creating the rows)

Both rows were measured on the same evaluation images (the test split, or a validation split carved from the training
data), so their difference is judged on the same resamples (``gslora.metrics.paired``): each resample draws every
class's evaluation images with replacement (each class keeps its count), and every request of both rows is scored on
it, from the per-image hits before and after each request that results.json keeps. The figures without resampling
must equal the row's committed ones, or the script refuses. Writes the pair's entry, with its provenance, into
``<folder>/paired.json`` (other pairs kept) and prints it: the mean-H difference (a - b) over the requests, its 95%
percentile interval, the share of resamples in which a is ahead, and the same per request.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NoReturn

import torch

from gslora.engine.provenance import stamp
from gslora.io import atomic_write_text
from gslora.metrics.paired import has_hits, pair, rows_h


def refuse(reason: str) -> NoReturn:
    """One line naming the problem and the fix, exit code 2."""
    print(f"paired.py: {reason}", file=sys.stderr)
    raise SystemExit(2)


def row_hits(folder: Path, results: dict, labels: list[str]) -> dict[str, list[dict]]:
    """Each row's per-request hits, as results.json keeps them; refused for a row that is not measured or keeps no
    hits."""
    hits = {}
    for label in labels:
        row = results["methods"].get(label, {})
        if not row.get("tasks"):
            refuse(f"{label!r} is not a measured row of {folder.name}/results.json; its rows: "
                   f"{', '.join(k for k, r in results['methods'].items() if r.get('tasks'))}")
        if not has_hits(row):
            refuse(f"{label!r} keeps no per-image hits (measured before rows kept them, or not a classification "
                   f"row); re-create the folder with python benchmarks/run.py {folder.name}")
        hits[label] = [t["hits"] for t in row["tasks"]]
    return hits


def scored_rows(folder: Path, results: dict, labels: list[str], *, resamples: int
                ) -> tuple[dict[str, torch.Tensor], int]:
    """Each row's (resamples + 1, requests) H on the same resamples, and the number of evaluation images; refused
    when the rows were measured on different images or a row's hits do not give its committed figures."""
    hits = row_hits(folder, results, labels)
    try:
        scored = rows_h(hits, resamples=resamples)
    except ValueError as error:
        refuse(f"{error}; compare rows of one benchmark")
    for label, (_, figures) in scored.items():
        committed = [{k: t[k] for k in figures[0]} for t in results["methods"][label]["tasks"]]
        same = len(figures) == len(committed) and all(
            abs(x[k] - y[k]) <= 1e-4 for x, y in zip(figures, committed, strict=False) for k in x)
        if not same:
            refuse(f"the hits of {label!r} do not give the committed row (per request {figures}, committed "
                   f"{committed}); re-run python benchmarks/run.py {folder.name} --methods \"{label}\"")
    return {label: h for label, (h, _) in scored.items()}, sum(next(iter(hits.values()))[0]["class_counts"])


def pair_entry(h: dict[str, torch.Tensor], a: str, b: str, *, resamples: int, images: int) -> dict:
    """The pair's entry of paired.json, from both rows' H on the same resamples."""
    return {"a": a, "b": b, "resamples": resamples, "seed": 0, "evaluation_images": images, **pair(h, a, b),
            **stamp()}


def write_pairs(folder: Path, results: dict, pairs: list[tuple[str, str]], *, resamples: int = 2000) -> dict:
    """Score ``pairs`` of ``results``'s rows and write them into ``folder``/paired.json (its other pairs kept)."""
    path = folder / "paired.json"
    paired = json.loads(path.read_text()) if path.exists() else {"pairs": {}}
    for a, b in pairs:
        if a == b:
            refuse(f"{a!r} against itself: give two different rows")
    labels = list(dict.fromkeys(label for pair in pairs for label in pair))
    h, images = scored_rows(folder, results, labels, resamples=resamples)
    for a, b in pairs:
        paired["pairs"][f"{a} | {b}"] = pair_entry(h, a, b, resamples=resamples, images=images)
    atomic_write_text(path, json.dumps(paired, indent=2) + "\n")
    return paired


def committed_pairs(folder: Path) -> list[tuple[str, str]]:
    """The pairs ``folder``/paired.json holds (none without the file)."""
    path = folder / "paired.json"
    return [(p["a"], p["b"]) for p in json.loads(path.read_text())["pairs"].values()] if path.exists() else []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("labels", nargs="*", help="row labels in pairs: a b [a b ...] (none: every pair already in "
                        "paired.json)")
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()
    folder = Path(args.folder).resolve()
    if not (folder / "config.yaml").exists() or not (folder / "results.json").exists():
        refuse(f"{args.folder} is not a benchmark folder with results (config.yaml and results.json); "
               "run python benchmarks/run.py on it first")
    if len(args.labels) % 2:
        parser.error("give row labels in pairs (a b [a b ...]), or none to re-create every pair in paired.json")
    pairs = list(zip(args.labels[::2], args.labels[1::2], strict=True)) if args.labels else committed_pairs(folder)
    if not pairs:
        parser.error(f"{folder.name} has no paired.json yet: give two row labels")
    paired = write_pairs(folder, json.loads((folder / "results.json").read_text()), pairs, resamples=args.resamples)
    for a, b in pairs:
        print(json.dumps(paired["pairs"][f"{a} | {b}"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
