"""Foundation benchmark: GS-LoRA continual forgetting on Fashion-MNIST (see README.md here).

Usage: python benchmarks/fashion_mnist_continual/run.py [--cache DIR] [--device cpu|cuda]
Writes results.json and report.md next to this file.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import gslora
from gslora.config import DataConfig, ModelConfig, TrainConfig, from_dict, load_yaml
from gslora.data import load_dataset
from gslora.engine import ForgetConfig, pretrain, run_forgetting
from gslora.engine.continual import hardware
from gslora.models import read_checkpoint_meta, save_checkpoint

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache", default=str(HERE.parents[1] / ".cache" / "bench_fashion_mnist"))
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    config = load_yaml(HERE / "config.yaml")
    cache = Path(args.cache)
    checkpoint = cache / "base"
    pre_train = from_dict(TrainConfig, {**config["pretrain"]["train"], "device": args.device}, "pretrain.train")
    if not (checkpoint / "config.json").is_file():
        dataset = load_dataset(DataConfig())
        model, info = pretrain(from_dict(ModelConfig, config["pretrain"]["model"], "pretrain.model"), dataset,
                               pre_train)
        save_checkpoint(model, checkpoint, classes=dataset.classes,
                        extra={"pretrain": {"seconds": info["seconds"], "test_acc": info["test_acc"]}})
    pre_info = read_checkpoint_meta(checkpoint)[1]["pretrain"]
    forget_cfg = dict(config["forget"])
    forget_cfg["train"] = {**forget_cfg["train"], "device": args.device}
    forget = from_dict(ForgetConfig, {"checkpoint": str(checkpoint), **forget_cfg})
    run_dir = cache / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    manifest = run_forgetting(forget, run_dir)
    tasks = []
    for r in manifest["requests"]:
        m = r["metrics"]
        tasks.append({"task": r["index"], "forget_classes": r["forget_class_names"], **m, "seconds": r["seconds"],
                      "group_norms": r["group_norms"]})
    results = {
        "pretrain": pre_info,
        "trainable_ratio": manifest["requests"][-1]["trainable_ratio"],
        "tasks": tasks,
        "targets": {
            "acc_f_le_2": all(t["acc_f"] <= 2 for t in tasks),
            "acc_o_le_2": all(t["acc_o"] is None or t["acc_o"] <= 2 for t in tasks),
            "h_mean_ge_95pct_h_max": all(t["h_mean"] >= 0.95 * t["h_max"] for t in tasks),
            "seconds_le_tenth_of_pretrain": all(t["seconds"] <= pre_info["seconds"] / 10 for t in tasks),
        },
        "config": config,
        "version": gslora.__version__,
        "hardware": hardware(),
    }
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    shutil.copy(run_dir / "report.md", HERE / "report.md")
    for name in ("accuracy.png", "group_norms.png"):
        shutil.copy(run_dir / name, HERE / name)
    print(json.dumps(results["targets"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
