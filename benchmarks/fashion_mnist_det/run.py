"""Detection benchmark: pre-train a Deformable DETR on composed Fashion-MNIST scenes, then forget classes.

Usage: python benchmarks/fashion_mnist_det/run.py [--device auto|cpu|cuda] [--methods gs_lora,gs_lora_pp]

The scenes (config ``data``) are composed under .cache/data and the detector is cached under
.cache/benchmarks/fashion_mnist_det/base. Writes results.json ({"pretrain", "methods": {name:
{"trainable_ratio", "tasks": [...]}}, "targets", "config", "version", "hardware"}) and report.md here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import CACHE, ROOT, load_config, setup_logging, write_results  # noqa: E402

from gslora.config import SequenceConfig, TrainConfig, from_dict, to_dict  # noqa: E402
from gslora.detection import (  # noqa: E402
    DetectionDataConfig,
    DetectionForgetConfig,
    DetectorConfig,
    load_detection_dataset,
    load_detector,
    pretrain_detector,
    run_detection_forgetting,
    save_detector,
)

TASK_KEYS = ("map50_f", "map50_r", "map50_o", "map50_f_before", "map50_r_before", "map50_f_original", "map_f",
             "map_r", "map_o", "map_f_before", "map_r_before", "h_mean", "h_exact")


def cached_detector(config: dict, device: str) -> tuple[Path, dict]:
    checkpoint = CACHE / HERE.name / "base"
    if not (checkpoint / "config.json").is_file():
        data = from_dict(DetectionDataConfig, config["data"], "data")
        dataset = load_detection_dataset(data)
        model_cfg = from_dict(DetectorConfig, {"num_classes": dataset.num_classes, **config["model"]}, "model")
        train = from_dict(TrainConfig, {**config["pretrain"], "device": device}, "pretrain")
        model, info = pretrain_detector(model_cfg, dataset, train)
        save_detector(model, checkpoint, classes=dataset.classes, replace=checkpoint.exists(),
                      extra={"pretrain": {k: v for k, v in info.items()}})
    _, meta = load_detector(checkpoint)
    return checkpoint, meta["pretrain"]


def summarize(manifest: dict) -> dict:
    tasks = [{"task": r["index"], "forget_classes": r["forget_class_names"],
              **{k: r["metrics"].get(k) for k in TASK_KEYS}, "seconds": r["seconds"]} for r in manifest["requests"]]
    return {"trainable_ratio": manifest["requests"][-1]["trainable_ratio"], "tasks": tasks}


def report(results: dict) -> str:
    pre = results["pretrain"]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines = ["# fashion_mnist_det", "",
             f"Base detector: test mAP@0.5 {fmt(pre['map50'])}%, mAP {fmt(pre['map'])}%, pre-trained in "
             f"{pre['seconds']:.0f}s.", "",
             "Cells: mAP50_f before -> after / mAP50_r before -> after / mAP50_o / H (percent).", ""]
    first = next(iter(results["methods"].values()))["tasks"]
    lines.append("| method | " + " | ".join(f"{' + '.join(t['forget_classes'])} ({t['task']})" for t in first)
                 + " | s / request | trainable |")
    lines.append("|---" * (len(first) + 3) + "|")
    for name, r in results["methods"].items():
        cells = [f"{fmt(t['map50_f_before'])} -> {fmt(t['map50_f'])} / {fmt(t['map50_r_before'])} -> "
                 f"{fmt(t['map50_r'])} / {fmt(t['map50_o'])} / {fmt(t['h_mean'])}" for t in r["tasks"]]
        seconds = sum(t["seconds"] for t in r["tasks"]) / len(r["tasks"])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {seconds:.1f} | {100 * r['trainable_ratio']:.2f}% |")
    return "\n".join(lines) + "\n"


def targets(methods: dict) -> dict:
    """Forget mAP@0.5 below 10% of its value before; retained mAP@0.5 within 10% of its value before."""
    return {name: {"map50_f_below_10pct_before": all(t["map50_f"] < 0.1 * t["map50_f_before"] for t in r["tasks"]),
                   "map50_r_within_10pct_before": all(t["map50_r"] >= 0.9 * t["map50_r_before"] for t in r["tasks"]),
                   "map50_f_over_before": [t["map50_f"] / t["map50_f_before"] for t in r["tasks"]],
                   "map50_r_over_before": [t["map50_r"] / t["map50_r_before"] for t in r["tasks"]]}
            for name, r in methods.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--methods", help="comma-separated subset of the config's methods")
    args = parser.parse_args()
    setup_logging()
    config = load_config(HERE)
    checkpoint, pre_info = cached_detector(config, args.device)
    wanted = args.methods.split(",") if args.methods else list(config["methods"])
    previous = json.loads((HERE / "results.json").read_text())["methods"] if (HERE / "results.json").exists() else {}
    methods = {}
    for name, spec in config["methods"].items():
        if name not in wanted:
            if name in previous:
                methods[name] = previous[name]
            continue
        run_dir = CACHE / HERE.name / name
        shutil.rmtree(run_dir, ignore_errors=True)
        forget = from_dict(DetectionForgetConfig, {
            "checkpoint": str(checkpoint), "data": config["data"], "sequence": config["sequence"], "method": spec,
            "train": {**config["train"], "device": args.device}})
        methods[name] = {**summarize(run_detection_forgetting(forget, run_dir)),
                         "run_dir": str(run_dir.relative_to(ROOT))}
    pre = {k: v for k, v in pre_info.items() if k != "history"}
    results = {"pretrain": pre, "methods": methods, "targets": targets(methods)}
    write_results(HERE, results, {**config, "sequence": to_dict(from_dict(SequenceConfig, config["sequence"]))})
    (HERE / "report.md").write_text(report(results))
    print((HERE / "report.md").read_text())
    print(json.dumps(results["targets"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
