"""Run several forgetting methods over the same request sequence and tabulate them side by side.

A comparison directory holds::

    comparison.json    {"methods": {label: {"name", "trainable_ratio", "seconds_per_request", "tasks": [..],
                        "config", "version", "commit", "time", "hardware"}}, "config", "version", "hardware"}
                       (each method's row carries its own config and provenance: rows kept from an earlier
                       ``--methods`` run keep theirs)
    comparison.md      one row per method, one column per request: H / Acc_r / Acc_f / Acc_o
    comparison.png     H per request, one line per method
    runs/<label>/      each method's run directory (manifest, adapters or models, report)

Every method gets the same checkpoint, data, requests, per-request training subsets and ``train``
settings; a method's ``train`` mapping overrides the shared one (its paper's learning rate, for example).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gslora.config import AdaptersConfig, DataConfig, ForgetTrainConfig, SequenceConfig, from_dict, to_dict
from gslora.engine.continual import ForgetConfig, run_forgetting
from gslora.engine.loop import ProgressFactory, no_progress
from gslora.engine.provenance import hardware, stamp
from gslora.errors import GSLoRAError, NonFiniteLossError
from gslora.io import atomic_write_json, atomic_write_text
from gslora.report import comparison_markdown, plot_comparison
from gslora.verification import VerifyConfig, headlines
from gslora.version import __version__

log = logging.getLogger(__name__)

RESULTS = "comparison.json"
TASK_KEYS = ("acc_f", "acc_r", "acc_o", "acc_m", "acc_f_before", "acc_r_before", "acc_m_before", "acc_f_original",
             "h_mean", "h_mean_original", "h_exact")


def method_and_train(spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """One ``methods:`` entry split into the method's own settings and its overrides of the shared ``train``."""
    return {k: v for k, v in spec.items() if k != "train"}, spec.get("train") or {}


@dataclass
class CompareConfig:
    """The shared set-up and the methods to compare.

    Args:
        checkpoint, data, sequence, train, eval_batch_size, verification, verify, adapters: as in ``ForgetConfig``.
        methods: label -> method spec (``name`` of a registered method, its hyper-parameters and an
            optional ``train`` mapping that overrides the shared ``train`` for that method).
    """

    checkpoint: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    train: ForgetTrainConfig = field(default_factory=ForgetTrainConfig)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    eval_batch_size: int = 512
    verification: bool | None = None
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    adapters: AdaptersConfig = field(default_factory=AdaptersConfig)

    def __post_init__(self) -> None:
        self.train = ForgetTrainConfig.of(self.train)
        if not self.methods or not isinstance(self.methods, dict):
            raise GSLoRAError("methods: name at least one method to compare, for example "
                              "methods: {gs_lora: {name: gs_lora}, ewc: {name: ewc}}")
        slugs = [slug(label) for label in self.methods]
        if len(set(slugs)) != len(slugs):
            raise GSLoRAError(f"methods: labels {list(self.methods)} map to the same run directory names; rename them")
        for label in self.methods:
            self.forget_config(label)  # validates names, hyper-parameters and train overrides now

    def forget_config(self, label: str) -> ForgetConfig:
        """The ``ForgetConfig`` of one method: the shared settings plus the method's own."""
        spec = self.methods[label]
        if not isinstance(spec, dict) or "name" not in spec:
            raise GSLoRAError(f"methods.{label} must be a mapping with a 'name' (a registered method), got {spec!r}")
        method, overrides = method_and_train(spec)
        train = {**to_dict(self.train), **overrides}
        try:
            return from_dict(ForgetConfig, {"checkpoint": self.checkpoint, "data": to_dict(self.data),
                                            "sequence": to_dict(self.sequence), "method": method, "train": train,
                                            "eval_batch_size": self.eval_batch_size,
                                            "verification": self.verification, "verify": to_dict(self.verify),
                                            "adapters": to_dict(self.adapters),
                                            # a comparison measures every method, whether it forgets or not
                                            "acceptance": {"accept_partial": True}})
        except GSLoRAError as exc:
            raise GSLoRAError(f"methods.{label}: {exc}") from exc


def slug(label: str) -> str:
    """A directory name for a method label (``EWC*`` -> ``EWC_star``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label.replace("*", "_star").replace("+", "_plus")).strip("_") or "method"


def summarize(manifest: dict[str, Any]) -> dict[str, Any]:
    """One method's run in the foundation benchmark's shape: trainable ratio and per-request metrics."""
    tasks = []
    for r in manifest["requests"]:
        m = r["metrics"]
        task = {"task": r["index"], "forget_classes": r["forget_class_names"],
                **{k: m[k] for k in TASK_KEYS if m.get(k) is not None}, "seconds": r["seconds"],
                "trainable_ratio": r.get("trainable_ratio"), "ratio_meaning": r.get("ratio_meaning", "trainable")}
        for key in ("tar_f", "tar_r", "tar_f_before", "tar_r_before", "margin", "hits"):
            if key in m:
                task[key] = m[key]
        if r.get("delta_norms"):
            task["delta_norms"] = r["delta_norms"]
        right_after = [v for v in manifest.get("verification") or [] if v["after_request"] == r.get("id")]
        if right_after and str(r.get("id")) in right_after[-1]["results"]:
            task["verification"] = headlines(right_after[-1]["results"][str(r.get("id"))])
        tasks.append(task)
    ratios = [t["trainable_ratio"] for t in tasks if t["trainable_ratio"] is not None]
    final = (manifest.get("verification") or [None])[-1]
    ids = {str(r.get("id")): r["index"] for r in manifest["requests"]}
    final_figures = {ids.get(k, k): headlines(v) for k, v in final["results"].items()} if final else None
    return {"name": manifest["config"]["method"]["name"], "trainable_ratio": max(ratios) if ratios else None,
            "final_verification": final_figures,
            "ratio_meaning": tasks[0]["ratio_meaning"] if tasks else "trainable",
            "seconds_per_request": sum(t["seconds"] for t in tasks) / max(len(tasks), 1), "tasks": tasks}


def compare(config: CompareConfig, out_dir: str | Path, *, only: list[str] | None = None,
            progress: ProgressFactory = no_progress) -> dict[str, Any]:
    """Run every method of ``config`` (or the labels in ``only``, keeping the others' earlier results in
    ``out_dir``) and write the comparison files; returns the comparison.

    A method whose loss becomes non-finite is recorded with its error instead of stopping the others.
    """
    out_dir = Path(out_dir)
    labels = list(config.methods)
    unknown = [label for label in only or [] if label not in config.methods]
    if unknown:
        raise GSLoRAError(f"--methods {unknown}: not in the config's methods {labels}")
    if (out_dir / RESULTS).is_file():
        if only is None:
            raise GSLoRAError(f"{out_dir} already holds a comparison; pass --methods to re-run some of its methods, "
                              "or choose a new --out")
        try:
            if not isinstance(json.loads((out_dir / RESULTS).read_text())["methods"], dict):
                raise TypeError("its methods are not a mapping")
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise GSLoRAError(f"{out_dir / RESULTS} is not a gslora comparison ({exc}); choose a new --out") from exc
    results: dict[str, Any] = {}
    comparison: dict[str, Any] = {}
    for label in labels:
        if only is not None and label not in only:
            continue
        run_dir = out_dir / "runs" / slug(label)
        shutil.rmtree(run_dir, ignore_errors=True)
        log.info("comparing %s", label)
        try:
            manifest = run_forgetting(config.forget_config(label), run_dir, progress=progress)
        except NonFiniteLossError as exc:
            results[label] = {"name": config.methods[label]["name"], "error": str(exc), "tasks": [], **stamp(),
                              "config": to_dict(config.forget_config(label))}
            log.warning("%s failed: %s", label, exc)
        else:
            results[label] = {**summarize(manifest), "run_dir": str(Path("runs") / slug(label)), **stamp(),
                              "config": to_dict(config.forget_config(label))}
        comparison = commit_row(config, out_dir, label, results[label])
    if not comparison:  # nothing ran (every label of ``only`` unknown is refused above, so ``only`` was empty)
        comparison = commit_row(config, out_dir, None, None)
    return comparison


def commit_row(config: CompareConfig, out_dir: Path, label: str | None, row: dict[str, Any] | None) -> dict[str, Any]:
    """Add one finished method's row to the comparison files at once, so that an interrupted comparison keeps the
    methods that finished, and two processes running disjoint ``--methods`` of one comparison compose: the files are
    re-read and re-written under an exclusive lock on the comparison directory, each keeping the other's rows."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        rows: dict[str, Any] = {}
        if (out_dir / RESULTS).is_file():
            rows = json.loads((out_dir / RESULTS).read_text())["methods"]
        if label is not None:
            rows[label] = row
        comparison = {"methods": {k: rows[k] for k in config.methods if k in rows}, "config": to_dict(config),
                      "version": __version__, "hardware": hardware()}
        write_comparison(comparison, out_dir)
    finally:
        os.close(fd)  # closing releases the lock
    return comparison


def write_comparison(comparison: dict[str, Any], out_dir: str | Path) -> None:
    """comparison.json, comparison.md and comparison.png in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / RESULTS, comparison)
    atomic_write_text(out_dir / "comparison.md", comparison_markdown(comparison))
    plot_comparison(comparison, out_dir / "comparison.png")
