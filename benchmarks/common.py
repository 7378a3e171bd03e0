"""Shared pieces of the benchmark scripts: cached pre-training and results in the committed shape."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import gslora
from gslora.config import DataConfig, ModelConfig, TrainConfig, from_dict, load_yaml
from gslora.data import load_dataset, load_embeddings
from gslora.engine import ForgetConfig, pretrain, run_forgetting
from gslora.engine.compare import summarize
from gslora.engine.provenance import hardware
from gslora.models import read_checkpoint_meta, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "benchmarks"


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)


def cached_base(config: dict[str, Any], name: str, *, device: str = "auto") -> tuple[Path, dict[str, Any]]:
    """Pre-train the model of ``config`` (sections data, model, train, optional distill) once; reuse it after."""
    checkpoint = CACHE / name / "base"
    if not (checkpoint / "config.json").is_file():
        dataset = load_dataset(from_dict(DataConfig, config.get("data"), "data"))
        model_cfg = from_dict(ModelConfig, config["model"], "model")
        train_cfg = from_dict(TrainConfig, {**config["train"], "device": device}, "train")
        distill = config.get("distill") or {}
        teacher = load_embeddings(distill["teacher"], distill.get("key", "train")) if distill.get("teacher") else None
        model, info = pretrain(model_cfg, dataset, train_cfg, teacher=teacher,
                               distill_weight=float(distill.get("weight", 10.0)))
        info.pop("history")
        save_checkpoint(model, checkpoint, classes=dataset.classes, replace=checkpoint.exists(),
                        extra={"pretrain": info})
    return checkpoint, read_checkpoint_meta(checkpoint)[1]["pretrain"]


def run_method(checkpoint: Path, forget: dict[str, Any], run_name: str, *, device: str = "auto") -> dict[str, Any]:
    """Run one forgetting sequence and return it in the foundation benchmark's shape."""
    forget = {**forget, "train": {**forget.get("train", {}), "device": device}}
    config = from_dict(ForgetConfig, {"checkpoint": str(checkpoint), **forget})
    run_dir = CACHE / run_name
    shutil.rmtree(run_dir, ignore_errors=True)
    return {**summarize(run_forgetting(config, run_dir)), "run_dir": str(run_dir.relative_to(ROOT))}


def write_results(folder: Path, results: dict[str, Any], config: dict[str, Any]) -> None:
    results = {**results, "config": config, "version": gslora.__version__, "hardware": hardware()}
    (folder / "results.json").write_text(json.dumps(results, indent=2) + "\n")


def load_config(folder: Path) -> dict[str, Any]:
    return load_yaml(folder / "config.yaml")
