"""How a finished detection benchmark's models score one class's objects against its look-alikes, state by state.

Usage: python benchmarks/lookalike.py benchmarks/<folder> [label ...] [--classes Pullover,Shirt,Coat]

Reads the runs that ``python benchmarks/run.py <folder>`` left (each row's ``run_dir``; run that first) and
writes ``<folder>/lookalike.json``: for each row (all, or the labels given) and each state (the base detector, then the
model after each request), on the tuning (test) scenes, every object of the first class named is matched to one query
(Hungarian, the detector's own costs, as its set loss matches), and that query's mean sigmoid score for each class
named is reported, with the share of objects on which a look-alike scores at least as high as the object's own class.
A retained class whose objects the model before a request already scores higher for a forget class is one that
request's forgetting takes with it. Each row carries its own provenance.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import torch
from common import ROOT, portable, run_models, setup_logging

from gslora.config import from_dict
from gslora.detection import DetectionDataConfig, load_detection_dataset, load_detector
from gslora.detection.model import match_queries
from gslora.engine.provenance import stamp
from gslora.io import atomic_write_text


@functools.cache
def scores(checkpoint: str, data: str, classes: tuple[int, ...]) -> dict:
    """The mean score of each class in ``classes`` on the query matched to each object of ``classes[0]``, and the
    share (%) of those objects on which another class of ``classes`` scores at least its own; cached per model."""
    model, _ = load_detector(checkpoint)
    model.eval()
    test = load_detection_dataset(from_dict(DetectionDataConfig, json.loads(data), "data")).test
    found = []
    with torch.no_grad():
        for start in range(0, len(test), 100):
            images = test.images[start:start + 100]
            out = model(images)
            targets = [{"labels": test.labels[i], "boxes": test.boxes[i]} for i in range(start, start + len(images))]
            queries, labels = match_queries(model, out, targets, images.shape[-1])
            queries = queries[labels == classes[0]]
            found.append(torch.sigmoid(out.logits[queries[:, 0], queries[:, 1]])[:, list(classes)])
    found = torch.cat(found)  # (objects, len(classes))
    return {"objects": len(found), "mean_score": found.mean(0).tolist(),
            "lookalike_at_least_own_percent": 100 * (found[:, 1:].max(1).values >= found[:, 0]).float().mean().item()}


def states(run_dir: Path, classes: tuple[int, ...]) -> list[dict]:
    _, checkpoints, data = run_models(run_dir)
    return [{"state": "base" if i == 0 else f"after request {i - 1}", **scores(str(c), data, classes)}
            for i, c in enumerate(checkpoints)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("labels", nargs="*", help="row labels of the benchmark's config (default: all but Retrain)")
    parser.add_argument("--classes", default="Pullover,Shirt,Coat",
                        help="the class whose objects are scored, then its look-alikes (default: %(default)s)")
    args = parser.parse_args()
    setup_logging()
    folder = Path(args.folder).resolve()
    results = json.loads((folder / "results.json").read_text())
    # the rows that kept a run directory (Retrain keeps none)
    with_runs = {label: row["run_dir"] for label, row in results["methods"].items() if row.get("run_dir")}
    labels = args.labels or list(with_runs)
    unknown = [label for label in labels if label not in with_runs]
    if unknown:
        print(f"error: {unknown} are not rows of {folder / 'results.json'} with a run; choose from {list(with_runs)}",
              file=sys.stderr)
        return 2
    runs = {label: ROOT / with_runs[label] for label in labels}
    absent = [label for label, run in runs.items() if not (run / "manifest.json").is_file()]
    if absent:
        print(f"error: no runs for {absent}; run python benchmarks/run.py {folder.name} first", file=sys.stderr)
        return 2
    names = [n.strip() for n in args.classes.split(",")]
    known = json.loads((runs[labels[0]] / "manifest.json").read_text())["dataset"]["classes"]
    if len(names) < 2 or any(n not in known for n in names):
        print(f"error: --classes {args.classes!r} must name a class and at least one look-alike of {known}",
              file=sys.stderr)
        return 2
    classes = tuple(known.index(n) for n in names)
    rows = {label: {"classes": names, "states": states(run, classes), **stamp()} for label, run in runs.items()}
    atomic_write_text(folder / "lookalike.json", json.dumps(portable({"methods": rows}), indent=2) + "\n")
    for label, row in rows.items():
        print(label)
        for s in row["states"]:
            means = " / ".join(f"{m:.3f}" for m in s["mean_score"])
            print(f"  {s['state']:>16}: {' / '.join(names)} {means} on {s['objects']} {names[0]} objects; a look-alike "
                  f"at least as high on {s['lookalike_at_least_own_percent']:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
