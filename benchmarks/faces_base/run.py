"""Face base model benchmark: which pre-training recipe gives a face model worth editing (issue 12, item 3)?

Usage: python benchmarks/faces_base/run.py [--device auto|cpu|cuda] [--jobs N]

Each candidate of config.yaml (overrides on the validation twin ``base``) is pre-trained on 15 training images per
identity and measured on the 5 held out: top-1, margin top-1, and TAR at FAR 1% / 0.1% by embedding cosine over all
pairs of held-out images. The rule in config.yaml picks one from those figures alone; its overrides on ``test_base``
(all 20 training images) give the test model, measured once on the test split, next to the current recipe's test
model. ``--jobs N`` pre-trains N candidates at a time in separate processes (on a GPU they share it; on a CPU each
takes cores / N threads). Finished pre-trainings are cached by their resolved config (``.cache/benchmarks/base-<key>``):
a run started again reuses them, restarts the unfinished ones from scratch and measures every row again. Writes
results.json (each row with its config, commit, time and hardware) and report.md here after each finished
candidate, so the files hold the candidates measured so far until the run ends.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import cached_base, load_config, merged, setup_logging, write_results  # noqa: E402

from gslora.config import PretrainConfig, from_dict, load_yaml, to_dict  # noqa: E402
from gslora.data import for_model, load_dataset  # noqa: E402
from gslora.engine.evaluate import logits_and_embeddings  # noqa: E402
from gslora.engine.loop import resolve_device  # noqa: E402
from gslora.engine.provenance import stamp  # noqa: E402
from gslora.io import atomic_write_text  # noqa: E402
from gslora.metrics import verification  # noqa: E402
from gslora.models import load_checkpoint  # noqa: E402

FARS = (0.01, 0.001)
TIE = 0.5  # held-out top-1 points within which an earlier-listed candidate wins (config.yaml's rule)


def measure(config: dict[str, Any], device: str) -> dict[str, Any]:
    """Pre-train ``config`` (cached) and measure its model on the config's evaluation split (the held-out images of
    a validation config, else the test split): top-1 and margin top-1 (pre-training measured them there), and TAR
    at each FAR over all pairs of that split."""
    checkpoint, pretrain = cached_base(config, device=device)
    resolved = from_dict(PretrainConfig, pretrain["config"])
    dataset = load_dataset(for_model(resolved.data, to_dict(resolved.model)))
    model, _ = load_checkpoint(checkpoint)
    target = resolve_device(device)
    _, embeddings = logits_and_embeddings(model.to(target), dataset.test.images, device=target)
    classes = range(dataset.num_classes)
    tars = verification(embeddings, dataset.test.labels, {"all": classes}, fars=FARS)["all"]  # all pairs
    return {"split": dataset.name, "images": len(dataset.test),
            "top1": pretrain["test_acc"], "top1_margin": pretrain.get("test_acc_margin"),
            "identities": len(dataset.test.labels.unique()), "tar": tars,
            "pretrain_seconds": pretrain["seconds"], "key": pretrain["key"],
            "pretrained": {k: pretrain[k] for k in ("commit", "time", "hardware") if k in pretrain},
            **stamp(), "config": pretrain["config"]}


def choose(rows: dict[str, dict[str, Any]]) -> str:
    """config.yaml's rule: the highest held-out top-1; an earlier-listed candidate within ``TIE`` points wins."""
    best = max(row["top1"] for row in rows.values())
    return next(label for label, row in rows.items() if row["top1"] >= best - TIE)


def run_children(jobs: list[tuple[str, dict[str, Any]]], parallel: int, *, device: str,
                 on_done: Callable[[str, dict[str, Any]], None]) -> dict[str, dict[str, Any]]:
    """Measure each (label, config) in its own process, ``parallel`` at a time; ``on_done(label, row)`` as each ends.
    Each child logs to its own file; a failed child's log tail is printed and the others are stopped."""
    rows: dict[str, dict[str, Any]] = {}
    threads = str(max(1, len(os.sched_getaffinity(0)) // min(parallel, len(jobs))))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    pending, running = list(enumerate(jobs)), []
    spool = Path(tempfile.mkdtemp(prefix="faces_base-"))
    try:
        while pending or running:
            while pending and len(running) < parallel:
                index, (label, config) = pending.pop(0)
                out, log = spool / f"{index}.json", spool / f"{index}.log"
                with open(log, "w") as sink:
                    process = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(config), "--device",
                                                device, "--row-out", str(out)], env=env, stdout=sink, stderr=sink)
                running.append((label, process, out, log))
            finished = next((job for job in running if job[1].poll() is not None), None)
            if finished is None:
                time.sleep(1)
                continue
            running.remove(finished)
            label, process, out, log = finished
            if process.returncode != 0:
                tail = "\n".join(log.read_text().splitlines()[-20:])
                raise SystemExit(f"{tail}\nfaces_base: candidate {label!r} failed (exit {process.returncode}); the "
                                 f"last lines of its log ({log}) are above")
            rows[label] = json.loads(out.read_text())
            on_done(label, rows[label])
    finally:  # an error or an interrupt: stop the children still running (finished pre-trainings stay cached)
        for _, process, _, _ in running:
            process.terminate()
        for _, process, _, _ in running:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    shutil.rmtree(spool, ignore_errors=True)
    return rows


def report(results: dict[str, Any]) -> str:
    def figures(row: dict[str, Any]) -> str:
        margin = "-" if row["top1_margin"] is None else f"{row['top1_margin']:.1f}"
        return (f"{row['top1']:.1f} | {margin} | {row['tar']['far=0.01']:.1f} | {row['tar']['far=0.001']:.1f} | "
                f"{row['pretrain_seconds']:.0f} | {row['pretrained'].get('hardware', '?')} |")

    head = "| top-1 | margin top-1 | TAR @ FAR 1% | TAR @ FAR 0.1% | pre-training s | hardware |"
    def split(rows: dict[str, dict[str, Any]]) -> str:
        row = next(iter(rows.values()), {})
        return f"{row.get('images', '?')} images of {row.get('identities', '?')} identities"

    lines = ["# faces_base", "", "Face base recipes (config.yaml says why each and the rule). Held-out figures: each "
             f"candidate trained without some of every identity's training images and measured on them "
             f"({split(results['candidates'])}); test figures: trained on all training images, measured once on the "
             f"test split ({split(results.get('test') or {})}). TAR: all pairs of those images, embedding cosine.", "",
             f"| candidate (held-out) {head}", "|---|---|---|---|---|---|---|"]
    for label, row in results["candidates"].items():
        mark = " (chosen)" if label == results.get("chosen") else ""
        lines.append(f"| {label}{mark} | {figures(row)}")
    if results.get("test"):
        lines += ["", f"| test model {head}", "|---|---|---|---|---|---|---|"]
        for label, row in results["test"].items():
            lines.append(f"| {label} | {figures(row)}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--jobs", type=int, default=1, help="candidates pre-trained at a time (default 1)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--row-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    setup_logging()
    if args.child:  # one candidate, in its own process
        atomic_write_text(Path(args.row_out), json.dumps(measure(json.loads(args.child), args.device)))
        return 0
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    config = load_config(HERE)
    base = load_yaml(HERE.parent / config["base"])
    test_base = load_yaml(HERE.parent / config["test_base"])
    results: dict[str, Any] = {"candidates": {}, "chosen": None, "test": {}}

    def save() -> None:
        write_results(HERE, results, config)
        atomic_write_text(HERE / "report.md", report(results))

    def done(label: str, row: dict[str, Any], section: str) -> None:
        results[section][label] = row
        save()

    reference = "current recipe (" + config["test_base"] + ")"
    jobs = [(label, merged(base, overrides)) for label, overrides in config["candidates"].items()]
    # the current recipe's test model chooses nothing: it runs beside the candidates, as the figure to beat
    rows = run_children([*jobs, (reference, test_base)], args.jobs, device=args.device,
                        on_done=lambda label, row: done(label, row, "test" if label == reference else "candidates"))
    results["candidates"] = {label: rows[label] for label, _ in jobs}  # config order
    results["chosen"] = choose(results["candidates"])
    save()
    chosen = "chosen: " + results["chosen"]
    run_children([(chosen, merged(test_base, config["candidates"][results["chosen"]]))], 1, device=args.device,
                 on_done=lambda label, row: done(label, row, "test"))
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
