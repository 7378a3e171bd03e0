"""Detection benchmark: pre-train a Deformable DETR on composed Fashion-MNIST scenes, then forget classes.

Usage: python benchmarks/fashion_mnist_det/run.py [--device auto|cpu|cuda] [--methods a,b] [--folder DIR]

The scenes (config ``data``) are composed under .cache/data; the detector is cached under .cache/benchmarks,
keyed by a hash of its resolved pre-training config. Every request's model is measured on the test scenes the
settings were chosen on (``data.seed``) and, once, on held-out scenes composed with another seed
(``heldout_seed``), which no setting was chosen on. Writes results.json (each method's row with its own config,
commit, time and hardware) and report.md here. A method's ``train:`` entry overrides the shared ``train``
settings for that method. ``--methods`` measures only those rows and keeps the others from results.json, which
it accepts only when they ran on the same base detector (same pre-training key and test mAP); otherwise it
stops and asks for a full run. ``--folder DIR`` reads DIR's config.yaml and writes DIR's results.json and report.md
(a later round of settings on the same base detector: its folder's run.py passes it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import (  # noqa: E402
    CACHE,
    ROOT,
    config_key,
    load_config,
    portable,
    same_base,
    selected_methods,
    setup_logging,
    write_results,
)

from gslora.config import SequenceConfig, from_dict, to_dict  # noqa: E402
from gslora.data import build_requests  # noqa: E402
from gslora.detection import (  # noqa: E402
    DetectionForgetConfig,
    DetectionPretrainConfig,
    evaluate_detector,
    load_detection_dataset,
    load_detector,
    run_detection_forgetting,
    run_detector_pretraining,
)
from gslora.detection.metrics import detection_metrics, group_map  # noqa: E402
from gslora.engine.compare import method_and_train  # noqa: E402
from gslora.engine.loop import resolve_device  # noqa: E402
from gslora.engine.provenance import stamp  # noqa: E402

TASK_KEYS = ("map50_f", "map50_r", "map50_o", "map50_f_before", "map50_r_before", "map50_f_original", "map_f",
             "map_r", "map_o", "map_f_before", "map_r_before", "h_mean", "h_exact")


def cached_detector(config: dict, device: str, exclude: Sequence[str] = ()) -> tuple[Path, dict]:
    """The base detector of ``config``'s recipe or, with ``exclude``, its Retrain reference (the same recipe with
    those classes' objects as background), pre-trained on first use and cached by its resolved config."""
    resolved = to_dict(from_dict(DetectionPretrainConfig, {"data": config["data"], "model": config["model"],
                                                           "train": config["pretrain"],
                                                           "exclude_classes": list(exclude)}))
    if not exclude:
        del resolved["exclude_classes"]  # the base detector's key, as before the field existed
    key = config_key(portable(resolved))
    checkpoint = CACHE / f"detector-{key}"
    if not (checkpoint / "config.json").is_file():
        run = from_dict(DetectionPretrainConfig, {**resolved, "train": {**resolved["train"], "device": device}})
        run_detector_pretraining(run, checkpoint, overwrite=True)
    meta = json.loads((checkpoint / "config.json").read_text())["pretrain"]
    return checkpoint, {**{k: v for k, v in meta.items() if k != "config"}, "config": resolved, "key": key}


def heldout_metrics(manifest: dict, run_dir: Path, heldout, device: torch.device) -> list[dict]:
    """Each request's model measured on the held-out scenes, before -> after as on the tuning scenes."""
    base, _ = load_detector(manifest["base"]["checkpoint"])
    before = evaluate_detector(base.to(device), heldout.test, heldout.num_classes, device=device)
    rows = []
    for r in manifest["requests"]:
        model, _ = load_detector(run_dir / r["checkpoint"])
        after = evaluate_detector(model.to(device), heldout.test, heldout.num_classes, device=device)
        m = detection_metrics(after, before, forget=r["forget_classes"], retain=r["retain_classes"],
                              old=r["old_classes"])
        rows.append({**{k: m.get(k) for k in TASK_KEYS if k in m}, "ap50_per_class": after["ap50"]})
        before = after
    return rows


def summarize(manifest: dict, heldout_rows: list[dict]) -> dict:
    tasks = [{"task": r["index"], "forget_classes": r["forget_class_names"],
              **{k: r["metrics"].get(k) for k in TASK_KEYS}, "ap50_per_class": r["metrics"].get("ap50_per_class"),
              "seconds": r["seconds"], "heldout": held}
             for r, held in zip(manifest["requests"], heldout_rows)]
    return {"trainable_ratio": manifest["requests"][-1]["trainable_ratio"], "tasks": tasks}


def retrain_row(config: dict, base: Path, heldout, device: torch.device, device_name: str) -> dict:
    """Retrain: per request k, the base detector's recipe pre-trained without the objects of the classes forgotten
    by requests 0..k as targets (cached), measured like a method's model after request k: against Retrain after
    request k-1 (the base detector for k = 0), on the tuning and the held-out scenes, with its per-class AP@0.5."""
    data = load_detection_dataset(from_dict(DetectionForgetConfig, {"data": config["data"]}).data)
    requests = build_requests(from_dict(SequenceConfig, config["sequence"]), data.classes)
    def measure(checkpoint) -> dict[str, dict]:
        model, _ = load_detector(checkpoint)
        return {label: evaluate_detector(model.to(device), split.test, split.num_classes, device=device)
                for label, split in (("tuning", data), ("heldout", heldout))}

    before = measure(base)
    original = before["tuning"]
    tasks = []
    for request in requests:
        gone = [data.classes[c] for c in (*request.old, *request.forget)]
        checkpoint, info = cached_detector(config, device_name, exclude=gone)
        after = measure(checkpoint)
        sets = {"forget": request.forget, "retain": request.retain, "old": request.old}
        m = {label: {**{k: v for k, v in detection_metrics(after[label], before[label], **sets).items()
                        if k in TASK_KEYS}, "ap50_per_class": after[label]["ap50"]} for label in after}
        m["tuning"]["map50_f_original"] = group_map(original["ap50"], request.forget)
        tasks.append({"task": request.index, "forget_classes": [data.classes[c] for c in request.forget],
                      **m["tuning"], "seconds": info["seconds"], "heldout": m["heldout"],
                      "pretrain": {k: v for k, v in info.items() if k not in ("config", "ap50_per_class")}})
        before = after
    return {"trainable_ratio": 1.0, "tasks": tasks}


def report(results: dict, name: str) -> str:
    pre = results["pretrain"]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines = [f"# {name}", "",
             f"Base detector: test mAP@0.5 {fmt(pre['map50'])}%, mAP {fmt(pre['map'])}%, pre-trained in "
             f"{pre['seconds']:.0f}s.", "",
             "Cells: mAP50_f before -> after / mAP50_r before -> after / mAP50_o / H (percent), on the test scenes "
             "the settings were chosen on, then on held-out scenes (another seed) that nothing was chosen on.", ""]
    first = next(iter(results["methods"].values()))["tasks"]
    lines.append("| method | scenes | " + " | ".join(f"{' + '.join(t['forget_classes'])} ({t['task']})" for t in first)
                 + " | s / request | trainable |")
    lines.append("|---" * (len(first) + 4) + "|")
    for name, r in results["methods"].items():
        for label, pick in (("tuning", lambda t: t), ("held-out", lambda t: t["heldout"])):
            cells = [f"{fmt(pick(t)['map50_f_before'])} -> {fmt(pick(t)['map50_f'])} / "
                     f"{fmt(pick(t)['map50_r_before'])} -> {fmt(pick(t)['map50_r'])} / {fmt(pick(t)['map50_o'])} / "
                     f"{fmt(pick(t)['h_mean'])}" for t in r["tasks"]]
            seconds = sum(t["seconds"] for t in r["tasks"]) / len(r["tasks"])
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + f" | {seconds:.1f} | "
                         f"{100 * r['trainable_ratio']:.2f}% |")
    return "\n".join(lines) + "\n"


def targets(methods: dict) -> dict:
    """Forget mAP@0.5 below 10% of its value before; retained mAP@0.5 within 10% of its value before; classes
    forgotten by earlier requests below 2% of their original mAP@0.5 (the 'forgetting holds' target)."""
    out = {}
    for name, r in methods.items():
        row = {}
        for label, pick in (("tuning", lambda t: t), ("heldout", lambda t: t["heldout"])):
            tasks = [pick(t) for t in r["tasks"]]
            row[label] = {"map50_f_below_10pct_before": all(t["map50_f"] < 0.1 * t["map50_f_before"] for t in tasks),
                          "map50_r_within_10pct_before": all(t["map50_r"] >= 0.9 * t["map50_r_before"] for t in tasks),
                          "map50_f_over_before": [t["map50_f"] / t["map50_f_before"] for t in tasks],
                          "map50_r_over_before": [t["map50_r"] / t["map50_r_before"] for t in tasks],
                          "map50_o": [t["map50_o"] for t in tasks]}
        out[name] = row
    return out


def folder_config(folder: Path) -> dict:
    """``folder``'s config; one that names ``setup: NAME`` takes everything but its methods from benchmark NAME's
    config (the same scenes, requests, base-detector recipe, so the same cached detector, and training). A section
    it gives is laid over NAME's key by key (``pretrain: {seed: 1}``: NAME's recipe from another seed)."""
    config = load_config(folder)
    if "setup" not in config:
        return config
    shared = {k: v for k, v in load_config(HERE.parent / config["setup"]).items() if k != "methods"}
    return {**shared, **{k: {**shared[k], **v} if isinstance(v, dict) and isinstance(shared.get(k), dict) else v
                         for k, v in config.items()}}


def kept_rows(pre_info: dict, labels: list[str], folder: Path) -> dict:
    """The committed rows (``folder``'s results.json) of the methods not being measured, if they ran on this very
    base detector."""
    path = folder / "results.json"
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    old = earlier.get("pretrain", {})
    if not same_base(old, pre_info):
        print(f"--methods: the cached base detector (key {pre_info['key']}, test mAP@0.5 {pre_info['map50']:.2f}) "
                 f"is not the one results.json's rows ran on (key {old.get('key')}, test mAP@0.5 {old.get('map50')}); "
                 "run without --methods to measure every row on this base", file=sys.stderr)
        raise SystemExit(2)
    return {name: row for name, row in earlier.get("methods", {}).items() if name not in labels}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--methods", help="comma-separated subset of the config's methods; the other rows are kept "
                                          "from results.json (same base detector only)")
    parser.add_argument("--folder", type=Path, default=HERE, help="the benchmark folder whose config.yaml to run and "
                        "where results.json and report.md go (default: this script's)")
    args = parser.parse_args()
    setup_logging()
    folder = args.folder.resolve()
    config = folder_config(folder)
    labels = selected_methods(parser, args.methods, config)
    device = resolve_device(args.device)
    checkpoint, pre_info = cached_detector(config, args.device)
    kept = kept_rows(pre_info, labels, folder) if args.methods else {}
    heldout_data = {**config["data"], "seed": config["heldout_seed"], "scenes_train": 1,
                    "root": f"{config['data']['root']}-seed{config['heldout_seed']}"}
    heldout = load_detection_dataset(from_dict(DetectionForgetConfig, {"data": heldout_data}).data)
    methods = {}
    for name, spec in config["methods"].items():
        if name not in labels:
            if name in kept:
                methods[name] = kept[name]
            continue
        if spec.get("name") == "retrain":
            methods[name] = {**retrain_row(config, checkpoint, heldout, device, args.device), **stamp(),
                             "config": {"pretrain": config["pretrain"], "sequence": config["sequence"]}}
            continue
        run_dir = CACHE / folder.name / name
        shutil.rmtree(run_dir, ignore_errors=True)
        method, overrides = method_and_train(spec)
        forget = from_dict(DetectionForgetConfig, {
            "checkpoint": str(checkpoint), "data": config["data"], "sequence": config["sequence"], "method": method,
            "train": {**config["train"], **overrides, "device": args.device},
            "acceptance": {"accept_partial": True}})
        manifest = run_detection_forgetting(forget, run_dir)
        methods[name] = {**summarize(manifest, heldout_metrics(manifest, run_dir, heldout, device)),
                         "run_dir": str(run_dir.relative_to(ROOT)), **stamp(), "config": to_dict(forget)}
    results = {"pretrain": pre_info, "methods": methods, "targets": targets(methods)}
    write_results(folder, results, config)
    (folder / "report.md").write_text(report(results, folder.name))
    print((folder / "report.md").read_text())
    print(json.dumps(results["targets"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
