"""Shared pieces of the benchmark scripts: cached pre-training keyed by its resolved config, results rows that carry
their own config and provenance, and results files written whole by their runner (never edited by hand)."""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from gslora.config import PretrainConfig, from_dict, load_yaml, to_dict
from gslora.engine import ForgetConfig, run_forgetting, run_pretraining
from gslora.engine.compare import summarize
from gslora.engine.provenance import stamp
from gslora.io import atomic_write_text
from gslora.models import read_checkpoint_meta

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "benchmarks"


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)


def config_key(resolved: dict[str, Any]) -> str:
    """A short hash of a resolved config: what a cached artefact was made from."""
    return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:16]


def resolve_paths(tree: Any) -> Any:
    """Paths in benchmark configs are relative to the repository root (``../shared/...``): make them absolute so the
    config hash does not depend on the working directory."""
    if isinstance(tree, dict):
        return {k: resolve_paths(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [resolve_paths(v) for v in tree]
    if isinstance(tree, str) and (tree.startswith("../") or tree.startswith("./")):
        return str((ROOT / tree).resolve())
    return tree


def run_models(run_dir: Path) -> tuple[dict[str, Any], list[Path], str]:
    """A finished run's manifest, its models state by state (the base, then the model after each request) and its data
    config as sorted JSON (a cache key for what the models are measured on)."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    checkpoints = [Path(manifest["base"]["checkpoint"])] + [run_dir / r["checkpoint"] for r in manifest["requests"]]
    return manifest, checkpoints, json.dumps(manifest["config"]["data"], sort_keys=True)


def portable(tree: Any) -> Any:
    """A config as it is recorded: absolute paths next to the repository (its cache, ``../shared``) written relative
    to the repository root, so that a results file and a cache key are the same on every machine and checkout."""
    if isinstance(tree, dict):
        return {k: portable(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [portable(v) for v in tree]
    if isinstance(tree, str) and tree.startswith(str(ROOT.parent) + os.sep):
        return os.path.relpath(tree, ROOT)
    return tree


def cached_base(config: dict[str, Any], *, device: str = "auto") -> tuple[Path, dict[str, Any]]:
    """Pre-train the model of ``config`` (a ``PretrainConfig`` mapping) once, cached under a hash of its resolved
    config; returns the checkpoint and ``{"config": resolved, "key", "test_acc", "seconds", commit, time, ...}``.
    A shipped `gslora pretrain` config's ``out`` is left out: the cache decides where the model goes."""
    config = {k: v for k, v in config.items() if k != "out"}
    resolved = to_dict(from_dict(PretrainConfig, resolve_paths(config)))
    key = config_key(portable(resolved))
    checkpoint = CACHE / f"base-{key}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"base-{key}.lock", "w") as lock:  # two benchmark processes wait for one pre-training
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (checkpoint / "config.json").is_file():
            run_config = from_dict(PretrainConfig, {**resolved, "train": {**resolved["train"], "device": device}})
            run_pretraining(run_config, checkpoint, overwrite=True)
    pretrain = read_checkpoint_meta(checkpoint)[1]["pretrain"]
    return checkpoint, {**{k: v for k, v in pretrain.items() if k != "config"}, "config": resolved, "key": key}


def same_base(earlier: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether two pre-training records (``cached_base``'s or a detector's) are the same base model: the same config
    key and the same test figure. The key alone is not enough: the same config trained again on another machine, or
    with other CPU pins, gives other weights under the same key."""
    figures = ("key", "test_acc", "map50")
    return bool(earlier) and all(earlier.get(f) == now.get(f) for f in figures)


def run_method(checkpoint: Path, forget: dict[str, Any], run_name: str, *, device: str = "auto") -> dict[str, Any]:
    """Run one forgetting sequence and return its results row (with its own config and provenance)."""
    forget = resolve_paths({**forget, "train": {**forget.get("train", {}), "device": device}})
    config = from_dict(ForgetConfig, {"checkpoint": str(checkpoint), **forget})
    run_dir = CACHE / run_name
    shutil.rmtree(run_dir, ignore_errors=True)
    return {**summarize(run_forgetting(config, run_dir)), "run_dir": str(run_dir.relative_to(ROOT)), **stamp(),
            "config": to_dict(config)}


def below(value: float, bound: float) -> bool:
    """value < bound, to 6 decimals: the figures are float32, and a ratio of exactly 0.97 must count as met (so
    compare ratios, not products)."""
    return round(value, 6) < round(bound, 6)


def write_results(folder: Path, results: dict[str, Any], config: dict[str, Any]) -> None:
    """``results.json``: the rows (each with its config, commit, time, hardware), the benchmark's config and when
    this file was written. Runners only; never edit it by hand."""
    results = portable({**results, "config": config, "written": stamp()})
    atomic_write_text(folder / "results.json", json.dumps(results, indent=2) + "\n")


def merged(tree: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``tree`` with ``overrides`` applied: a mapping merges into a mapping, any other value replaces."""
    out = copy.deepcopy(tree)
    for key, value in overrides.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if both else copy.deepcopy(value)
    return out


def load_config(folder: Path) -> dict[str, Any]:
    return load_yaml(folder / "config.yaml")


def selected_methods(parser: Any, value: str | None, config: dict[str, Any]) -> list[str]:
    """The labels of ``--methods a,b`` (every method of the config without it); an unknown label is a usage error."""
    labels = value.split(",") if value else list(config["methods"])
    unknown = sorted(set(labels) - set(config["methods"]))
    if unknown:
        parser.error(f"--methods: {', '.join(unknown)} not in the config; its methods: {', '.join(config['methods'])}")
    return labels
