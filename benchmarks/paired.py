"""How far apart two rows of a benchmark are: a paired bootstrap of their H difference over the evaluation images.

Usage: python benchmarks/paired.py benchmarks/<folder> "<label a>" "<label b>" [--resamples 2000] [--device cpu]

Both rows were measured on the same evaluation images (the test split, or a validation split carved from the training
data), so their difference is judged on the same resamples: each resample draws every class's evaluation images with
replacement (each class keeps its count), and every request of both rows is scored on it. Each request's H needs the
model before it (the row's previous request, or the original model) and after it; both are read from the rows' run
directories that ``benchmarks/run.py <folder>`` leaves under .cache/benchmarks/<folder>/runs, and predicted again.
The figures without resampling must equal the committed results.json's, or the script refuses (the cached runs are
not the committed rows). Writes the pair's entry, with its provenance, into ``<folder>/paired.json`` (other pairs
kept) and prints it: the mean-H difference (a - b) over the requests, its 95% percentile interval, the share of
resamples in which a is ahead, and the same per request.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from common import CACHE, load_config  # noqa: I001

from gslora.config import DataConfig, from_dict
from gslora.data import load_dataset
from gslora.engine.compare import slug
from gslora.engine.evaluate import predict
from gslora.engine.provenance import stamp
from gslora.io import atomic_write_text
from gslora.metrics import h_mean
from gslora.models import load_checkpoint


def class_sums(correct: torch.Tensor, draws: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(resamples, classes): correct predictions per class in each resample (``draws``: (resamples, images))."""
    hits = correct[draws].double()
    return torch.zeros(len(draws), num_classes, dtype=torch.float64).index_add_(1, labels, hits)


def stratified_draws(labels: torch.Tensor, resamples: int, generator: torch.Generator) -> torch.Tensor:
    """(resamples + 1, images) image indices: the first row the images themselves, then resamples that redraw each
    class's images with replacement at their positions (so a position keeps its class)."""
    draws = torch.arange(len(labels)).repeat(resamples + 1, 1)
    for c in labels.unique():
        members = torch.nonzero(labels == c).flatten()
        pick = torch.randint(len(members), (resamples, len(members)), generator=generator)
        draws[1:, members] = members[pick]
    return draws


def row_h(run_dir: Path, test, draws: torch.Tensor, num_classes: int, device: torch.device) -> torch.Tensor:
    """(resamples + 1, requests) H of each request of one row on each resample."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    labels = test.labels
    counts = torch.bincount(labels, minlength=num_classes).double()

    def sums(checkpoint: str | Path) -> torch.Tensor:
        model, _ = load_checkpoint(checkpoint)
        correct = predict(model.to(device), test, device=device).top1 == labels
        return class_sums(correct, draws, labels, num_classes)

    def accuracy(per_class: torch.Tensor, classes: list[int]) -> torch.Tensor:
        return 100.0 * per_class[:, classes].sum(1) / counts[classes].sum()

    before = sums(manifest["base"]["checkpoint"])
    columns = []
    for request in manifest["requests"]:
        after = sums(run_dir / request["checkpoint"])
        forget, retain = request["forget_classes"], request["retain_classes"]
        drop, acc_r = accuracy(before, forget) - accuracy(after, forget), accuracy(after, retain)
        columns.append(torch.tensor([h_mean(d, r) for d, r in zip(drop.tolist(), acc_r.tolist(), strict=True)],
                                    dtype=torch.float64))
        before = after
    return torch.stack(columns, dim=1)


def interval(values: torch.Tensor) -> list[float]:
    return [float(values.quantile(0.025)), float(values.quantile(0.975))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    folder = Path(args.folder).resolve()
    results = json.loads((folder / "results.json").read_text())
    for label in (args.a, args.b):
        if label not in results["methods"]:
            parser.error(f"{label!r} is not a row of {folder.name}/results.json; "
                         f"its rows: {', '.join(results['methods'])}")
        if not (CACHE / folder.name / "runs" / slug(label) / "manifest.json").exists():
            print(f"paired.py: no run directory for {label!r}; run python benchmarks/run.py benchmarks/{folder.name} "
                  f"--methods \"{label}\" first (it leaves the runs under .cache/benchmarks)", file=sys.stderr)
            return 2
    load_config(folder)  # the folder is a benchmark
    first = json.loads((CACHE / folder.name / "runs" / slug(args.a) / "manifest.json").read_text())
    dataset = load_dataset(from_dict(DataConfig, first["config"]["data"]))
    draws = stratified_draws(dataset.test.labels, args.resamples, torch.Generator().manual_seed(0))
    device = torch.device(args.device)
    h = {label: row_h(CACHE / folder.name / "runs" / slug(label), dataset.test, draws, dataset.num_classes, device)
         for label in (args.a, args.b)}
    for label, values in h.items():
        committed = [t["h_mean"] for t in results["methods"][label]["tasks"]]
        if not torch.allclose(values[0], torch.tensor(committed, dtype=torch.float64), atol=1e-4):
            print(f"paired.py: the cached run of {label!r} gives H {values[0].tolist()}, not the committed "
                  f"{committed}; re-run python benchmarks/run.py benchmarks/{folder.name} --methods \"{label}\"",
                  file=sys.stderr)
            return 2
    difference = h[args.a] - h[args.b]  # (resamples + 1, requests)
    mean = difference.mean(dim=1)
    entry = {"a": args.a, "b": args.b, "resamples": args.resamples, "seed": 0,
             "evaluation_images": len(dataset.test.labels),
             "mean_h": {args.a: float(h[args.a][0].mean()), args.b: float(h[args.b][0].mean())},
             "mean_h_difference": float(mean[0]), "ci95": interval(mean[1:]),
             "share_a_ahead": float((mean[1:] > 0).double().mean()),
             "per_request": [{"difference": float(difference[0, i]), "ci95": interval(difference[1:, i]),
                              "share_a_ahead": float((difference[1:, i] > 0).double().mean())}
                             for i in range(difference.shape[1])],
             **stamp()}
    path = folder / "paired.json"
    paired = json.loads(path.read_text()) if path.exists() else {"pairs": {}}
    paired["pairs"][f"{args.a} | {args.b}"] = entry
    atomic_write_text(path, json.dumps(paired, indent=2) + "\n")
    print(json.dumps(entry, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
