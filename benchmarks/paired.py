"""How far apart two rows of a benchmark are: a paired bootstrap of their H difference over the evaluation images.

Usage: python benchmarks/paired.py benchmarks/<folder> ["<label a>" "<label b>" ...] [--resamples 2000] [--device cpu]
(labels in pairs, the other pairs of paired.json kept; without labels it re-creates every pair already in the folder's
paired.json: one command per file)

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
from typing import NoReturn

import torch
from common import CACHE  # noqa: I001

from gslora.config import DataConfig, from_dict
from gslora.data import for_model, load_dataset
from gslora.engine.compare import slug
from gslora.engine.evaluate import predict
from gslora.engine.provenance import stamp
from gslora.errors import GSLoRAError
from gslora.io import atomic_write_text
from gslora.metrics import h_mean
from gslora.models import load_checkpoint, read_checkpoint_meta
from gslora.tasks.classification import labels_digest


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


def row_h(manifest: dict, run_dir: Path, test, draws: torch.Tensor, num_classes: int, device: torch.device,
          scored: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[dict[str, float]]]:
    """(resamples + 1, requests) H of each request of one row on each resample, and each request's accuracies without
    resampling (``acc_f``, ``acc_r``, ``acc_f_before``, ``acc_r_before``: what results.json holds). ``scored`` keeps
    each checkpoint's per-class hits, so a model the rows share (the original) is predicted once."""
    labels = test.labels
    counts = torch.bincount(labels, minlength=num_classes).double()

    def sums(checkpoint: str | Path) -> torch.Tensor:
        key = str(Path(checkpoint).resolve())
        if key not in scored:
            model, _ = load_checkpoint(checkpoint)
            correct = predict(model.to(device), test, device=device).top1 == labels
            scored[key] = class_sums(correct, draws, labels, num_classes)
        return scored[key]

    def accuracy(per_class: torch.Tensor, classes: list[int]) -> torch.Tensor:
        return 100.0 * per_class[:, classes].sum(1) / counts[classes].sum()

    before = sums(manifest["base"]["checkpoint"])
    columns, figures = [], []
    for request in manifest["requests"]:
        after = sums(run_dir / request["checkpoint"])
        forget, retain = request["forget_classes"], request["retain_classes"]
        acc = {"acc_f": accuracy(after, forget), "acc_r": accuracy(after, retain),
               "acc_f_before": accuracy(before, forget), "acc_r_before": accuracy(before, retain)}
        drop = acc["acc_f_before"] - acc["acc_f"]
        columns.append(torch.tensor([h_mean(d, r) for d, r in zip(drop.tolist(), acc["acc_r"].tolist(), strict=True)],
                                    dtype=torch.float64))
        figures.append({"h_mean": float(columns[-1][0]), **{k: float(v[0]) for k, v in acc.items()}})
        before = after
    return torch.stack(columns, dim=1), figures


def interval(values: torch.Tensor) -> list[float]:
    return [float(values.quantile(0.025)), float(values.quantile(0.975))]


def refuse(reason: str) -> NoReturn:
    """One line naming the problem and the fix, exit code 2."""
    print(f"paired.py: {reason}", file=sys.stderr)
    raise SystemExit(2)


def evaluation_images(manifests: dict[str, dict]):
    """The evaluation split the rows were measured on, decoded for their base model as the run decoded it; refused
    when the rows' data differ or the split's labels are not the ones their runs recorded."""
    configs = {json.dumps(m["config"]["data"], sort_keys=True) for m in manifests.values()}
    if len(configs) > 1:
        refuse(f"the rows {', '.join(map(repr, manifests))} were measured on different data; compare rows of one "
               "benchmark")
    manifest = next(iter(manifests.values()))
    try:
        model = read_checkpoint_meta(manifest["base"]["checkpoint"])[1].get("model")
        dataset = load_dataset(for_model(from_dict(DataConfig, manifest["config"]["data"]), model))
    except (GSLoRAError, OSError) as error:
        refuse(f"cannot load the rows' base model or data ({error}); re-run the benchmark with benchmarks/run.py")
    for label, m in manifests.items():
        if m["dataset"]["test_labels_sha256"] != labels_digest(dataset.test.labels):
            refuse(f"the evaluation labels differ from those {label!r} was measured on; "
                   "re-run it with benchmarks/run.py")
    return dataset


def scored_rows(folder: Path, results: dict, labels: list[str], *, resamples: int, device: torch.device
                ) -> tuple[dict[str, torch.Tensor], int]:
    """Each row's (resamples + 1, requests) H on the same draws, every model predicted once, and the number of
    evaluation images; refused when a row's run is missing or is not the committed row."""
    manifests = {}
    for label in labels:
        if not results["methods"].get(label, {}).get("tasks"):
            refuse(f"{label!r} is not a measured row of {folder.name}/results.json; its rows: "
                   f"{', '.join(k for k, r in results['methods'].items() if r.get('tasks'))}")
        path = CACHE / folder.name / "runs" / slug(label) / "manifest.json"
        if not path.exists():
            refuse(f"no run directory for {label!r}; run python benchmarks/run.py benchmarks/{folder.name} "
                   f"--methods \"{label}\" first (it leaves the runs under .cache/benchmarks)")
        manifests[label] = json.loads(path.read_text())
    dataset = evaluation_images(manifests)
    draws = stratified_draws(dataset.test.labels, resamples, torch.Generator().manual_seed(0))
    h, scored = {}, {}
    for label, manifest in manifests.items():
        h[label], figures = row_h(manifest, CACHE / folder.name / "runs" / slug(label), dataset.test, draws,
                                  dataset.num_classes, device, scored)
        committed = [{k: t[k] for k in figures[0]} for t in results["methods"][label]["tasks"]]
        same = len(figures) == len(committed) and all(
            abs(x[k] - y[k]) <= 1e-4 for x, y in zip(figures, committed, strict=False) for k in x)
        if not same:
            refuse(f"the cached run of {label!r} is not the committed row (per request {figures}, committed "
                   f"{committed}); re-run python benchmarks/run.py benchmarks/{folder.name} --methods \"{label}\"")
    return h, len(dataset.test.labels)


def pair_entry(h: dict[str, torch.Tensor], a: str, b: str, *, resamples: int, images: int) -> dict:
    """The pair's entry of paired.json, from both rows' H on the same draws."""
    difference = h[a] - h[b]  # (resamples + 1, requests)
    mean = difference.mean(dim=1)
    return {"a": a, "b": b, "resamples": resamples, "seed": 0, "evaluation_images": images,
            "mean_h": {a: float(h[a][0].mean()), b: float(h[b][0].mean())},
            "mean_h_difference": float(mean[0]), "ci95": interval(mean[1:]),
            "share_a_ahead": float((mean[1:] > 0).double().mean()),
            "per_request": [{"difference": float(difference[0, i]), "ci95": interval(difference[1:, i]),
                             "share_a_ahead": float((difference[1:, i] > 0).double().mean())}
                            for i in range(difference.shape[1])],
            **stamp()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("labels", nargs="*", help="row labels in pairs: a b [a b ...] (none: every pair already in "
                        "paired.json)")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    folder = Path(args.folder).resolve()
    if not (folder / "config.yaml").exists() or not (folder / "results.json").exists():
        refuse(f"{args.folder} is not a benchmark folder with results (config.yaml and results.json); "
               "run python benchmarks/run.py on it first")
    results = json.loads((folder / "results.json").read_text())
    path = folder / "paired.json"
    paired = json.loads(path.read_text()) if path.exists() else {"pairs": {}}
    if len(args.labels) % 2:
        parser.error("give row labels in pairs (a b [a b ...]), or none to re-create every pair in paired.json")
    pairs = (list(zip(args.labels[::2], args.labels[1::2], strict=True)) if args.labels
             else [(p["a"], p["b"]) for p in paired["pairs"].values()])
    if not pairs:
        parser.error(f"{folder.name} has no paired.json yet: give two row labels")
    for a, b in pairs:
        if a == b:
            refuse(f"{a!r} against itself: give two different rows")
    labels = list(dict.fromkeys(label for pair in pairs for label in pair))
    h, images = scored_rows(folder, results, labels, resamples=args.resamples, device=torch.device(args.device))
    for a, b in pairs:
        entry = pair_entry(h, a, b, resamples=args.resamples, images=images)
        paired["pairs"][f"{a} | {b}"] = entry
        print(json.dumps(entry, indent=2))
    atomic_write_text(path, json.dumps(paired, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
