"""Where the missing classes go: a finished missing-class benchmark's models, state by state, seen from the head.

Usage: python benchmarks/drift.py benchmarks/<folder> [label ...]

Reads the runs that ``python benchmarks/run.py <folder>`` left under .cache/benchmarks/<folder>/runs (run that
first) and writes ``<folder>/drift.json``: for each row (all, or the labels given) and each state (the base model,
then the model after each request), top-1 accuracy on the missing classes' evaluation images and the mean cosine
between an evaluation image's embedding and its own class's head row, for the missing classes and for the retained
classes with data. The head is frozen during a request, so a class whose embeddings move off its row is lost even
when nothing trains it as a negative. Each row carries its own provenance.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from common import CACHE, portable, run_models, setup_logging

from gslora.config import DataConfig, from_dict
from gslora.data import load_dataset
from gslora.data.datasets import for_model
from gslora.engine.compare import slug
from gslora.engine.evaluate import predict
from gslora.engine.provenance import stamp
from gslora.io import atomic_write_text
from gslora.metrics import accuracy
from gslora.models import load_checkpoint


@functools.cache
def seen_from_head(checkpoint: str, data: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-1 predictions, labels and each image's cosine to its own class's head row, for one model on the evaluation
    split of ``data`` (a DataConfig as JSON); cached, so the base that every row starts from is evaluated once."""
    model, meta = load_checkpoint(checkpoint)
    split = load_dataset(for_model(from_dict(DataConfig, json.loads(data)), meta.get("model"))).test
    with torch.no_grad():
        seen = predict(model, split, device=torch.device("cpu"), embeddings=True)
        rows = F.normalize(model.head_module().weight.float(), dim=1)
        own = (F.normalize(seen.embeddings, dim=1) * rows[split.labels]).sum(dim=1)
    return seen.top1, split.labels, own


def states(run_dir: Path) -> list[dict]:
    """Per state: Acc_m and the mean own-row cosine of the missing and of the retained-with-data classes."""
    manifest, checkpoints, data = run_models(run_dir)
    requests = manifest["requests"]
    missing = requests[0]["missing_classes"]
    out = []
    for i, checkpoint in enumerate(checkpoints):
        top1, labels, own = seen_from_head(str(checkpoint), data)
        retained = torch.tensor(requests[max(i - 1, 0)]["retain_classes"])  # the base: the first request's
        is_missing = torch.isin(labels, torch.tensor(missing))
        with_data = torch.isin(labels, retained) & ~is_missing
        out.append({"state": "base" if i == 0 else f"after request {i - 1}",
                    "acc_m": accuracy(top1, labels, missing),
                    "cosine_own_row_missing": own[is_missing].mean().item(),
                    "cosine_own_row_retained_with_data": own[with_data].mean().item()})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("labels", nargs="*", help="row labels of the benchmark's config (default: all)")
    args = parser.parse_args()
    setup_logging()
    folder = Path(args.folder).resolve()
    results = json.loads((folder / "results.json").read_text())
    labels = args.labels or list(results["methods"])
    unknown = [label for label in labels if label not in results["methods"]]
    if unknown:
        print(f"error: {unknown} are not rows of {folder / 'results.json'}; choose from {list(results['methods'])}",
              file=sys.stderr)
        return 2
    runs = CACHE / folder.name / "runs"
    absent = [label for label in labels if not (runs / slug(label) / "manifest.json").is_file()]
    if absent:
        print(f"error: no runs for {absent} under {runs}; run python benchmarks/run.py {folder.name} first",
              file=sys.stderr)
        return 2
    rows = {label: {"states": states(runs / slug(label)), **stamp()} for label in labels}
    atomic_write_text(folder / "drift.json", json.dumps(portable({"methods": rows}), indent=2) + "\n")
    for label, row in rows.items():
        print(label)
        for s in row["states"]:
            print(f"  {s['state']:>16}: Acc_m {s['acc_m']:6.2f}  own-row cosine: missing "
                  f"{s['cosine_own_row_missing']:.3f}, retained with data {s['cosine_own_row_retained_with_data']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
