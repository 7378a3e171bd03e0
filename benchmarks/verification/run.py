"""Verification benchmark: does forgetting hold beyond top-1 accuracy, and how close is each method to Retrain?

Usage: python benchmarks/verification/run.py [--device auto|cpu|cuda] [--settings fashion_full,faces_full]
                                            [--methods GS-LoRA,LwF] [--resume]

Runs of disjoint ``--settings``, or of disjoint ``--methods`` of one setting (e.g. two processes, or a CPU and a GPU
machine), compose: each keeps the rows that results.json holds for the other settings and methods when it finishes,
and reuses a setting's Retrain and original rows measured by an earlier run on the same base (same config key and
test accuracy: the same config pre-trained again elsewhere is another base) and suite. ``--resume`` keeps the methods'
runs that an earlier invocation finished in its runs folder (same setting, methods and config; their rows keep the
commit and time they ran at) and only measures what is missing.

For each setting of config.yaml: the methods run through ``gslora.engine.compare`` with the verification suite on
(membership inference, linear probe, relearn time, face figures; after every request, for every request so far);
"Retrain (converged)" is the base model's pre-training recipe without the classes forgotten so far (``gslora
pretrain --exclude-classes``), cached per request; "Original" is the untouched base model. Every figure of a method
is also reported as the difference from Retrain's. Writes results.json (each row with its config, commit, time and
hardware) and report.md here.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import (  # noqa: E402
    CACHE,
    cached_base,
    config_key,
    load_config,
    resolve_paths,
    same_base,
    selected_methods,
    setup_logging,
    write_results,
)

from gslora.config import DataConfig, SequenceConfig, from_dict, load_yaml, to_dict  # noqa: E402
from gslora.data import build_requests, load_dataset  # noqa: E402
from gslora.engine import CompareConfig, compare, predict  # noqa: E402
from gslora.engine.loop import resolve_device  # noqa: E402
from gslora.engine.provenance import stamp  # noqa: E402
from gslora.metrics import accuracy  # noqa: E402
from gslora.models import load_checkpoint  # noqa: E402
from gslora.verification import VerifyConfig, headlines, verify  # noqa: E402
from gslora.verification import compare as versus  # noqa: E402


def method_specs(config: dict, setting: dict) -> dict[str, dict]:
    """The methods of the benchmark that run on the setting (those its ``methods`` list names; every one without it)
    with the setting's GS-LoRA(++) hyper-parameters; a value the method's own entry names (``bnd: auto``) wins over the
    setting's."""
    unknown = [label for label in setting.get("methods", []) if label not in config["methods"]]
    if unknown:
        raise SystemExit(f"verification config: a setting's methods list names {', '.join(unknown)}, which the "
                         "methods section does not define; add them there or fix the name")
    specs = {}
    for label, spec in config["methods"].items():
        if label not in setting.get("methods", [label]):
            continue
        if spec["name"] == "gs_lora":
            spec = {**setting["gs_lora"], **spec}
        elif spec["name"] == "gs_lora_pp":
            spec = {**setting["gs_lora"], **setting["gs_lora_pp"], **spec}
        specs[label] = spec
    return specs


def retrain_requests(setting: dict, requests: int) -> int:
    """How many requests, from the first, get a Retrain row: all (``retrain: true``, the default), none (``false``)
    or the first N (``retrain: N``)."""
    value = setting.get("retrain", True)
    if isinstance(value, bool):
        return requests if value else 0
    if isinstance(value, int) and value >= 0:
        return min(value, requests)
    raise SystemExit(f"verification config: retrain must be true, false or a number of requests, not {value!r}")


def reference_rows(setting: dict, checkpoint: Path, verify_config: VerifyConfig, device: torch.device
                   ) -> tuple[dict, dict]:
    """Per request k: Retrain (converged) without the classes of requests 0..k, and the original model, each with
    its accuracy and the suite's figures for every request so far. Each Retrain is a full pre-training, so a setting
    may limit them: ``retrain: false`` has none (the report then shows the original model's figures only), ``retrain:
    N`` only the first N requests'."""
    base_config = load_yaml(HERE.parent / setting["base"])
    forget = resolve_paths(setting["forget"])
    dataset = load_dataset(from_dict(DataConfig, forget["data"], "data"))
    requests = build_requests(from_dict(SequenceConfig, forget["sequence"], "sequence"), dataset.classes)
    original, _ = load_checkpoint(checkpoint)
    original = original.to(device)
    labels = dataset.test.labels
    original_top1 = predict(original, dataset.test, device=device).top1
    references, originals = {}, {}
    retrained = retrain_requests(setting, len(requests))
    for k, request in enumerate(requests):
        groups = {str(j): list(requests[j].forget) for j in range(k + 1)}
        before = {str(j): accuracy(original_top1, labels, requests[j].forget) for j in range(k + 1)}
        excluded = [c for j in range(k + 1) for c in requests[j].forget]
        if k < retrained:
            ref_checkpoint, ref_pretrain = cached_base({**base_config, "exclude_classes": excluded},
                                                       device=str(device))
            model, _ = load_checkpoint(ref_checkpoint)
            model = model.to(device)
            top1 = predict(model, dataset.test, device=device).top1
            figures = verify(model, dataset, groups, list(request.retain), config=verify_config, device=device,
                             acc_before=before, original=original)
            references[str(k)] = {"pretrain": ref_pretrain, "figures": figures,
                                  "acc_f": accuracy(top1, labels, request.forget),
                                  "acc_r": accuracy(top1, labels, request.retain),
                                  "acc_o": accuracy(top1, labels, request.old) if request.old else None}
        original_figures = verify(original, dataset, groups, list(request.retain), config=verify_config,
                                  device=device, acc_before=before, original=original)
        originals[str(k)] = {"figures": original_figures, "acc_f": before[str(k)],
                        "acc_r": accuracy(original_top1, labels, request.retain),
                        "acc_o": accuracy(original_top1, labels, request.old) if request.old else None}
    return references, originals


def reusable(earlier: dict, pre: dict, row_config: dict) -> bool:
    """Whether the Retrain and original rows that an earlier run measured for a setting (``earlier``, its entry in
    results.json) hold for this run: the same base model (``pre``, this run's pre-training record) and the same
    setting and suite (``row_config``)."""
    return same_base(earlier.get("pretrain", {}), pre) and earlier.get("config") == row_config


def per_request(runs_dir: Path, label: str, references: dict) -> list[dict[str, Any]]:
    """A method's figures right after each request, for every request so far, and their differences from Retrain."""
    from gslora.engine.compare import slug

    manifest = json.loads((runs_dir / "runs" / slug(label) / "manifest.json").read_text())
    rows = []
    for k, record in enumerate(manifest["requests"]):
        after = [v for v in manifest.get("verification") or [] if v["after_request"] == record["id"]]
        results = after[-1]["results"] if after else {}
        index_of = {str(r["id"]): str(r["index"]) for r in manifest["requests"]}
        figures = {index_of[g]: fig for g, fig in results.items()}
        m = record["metrics"]
        rows.append({"request": k, "acc_f": m["acc_f"], "acc_r": m["acc_r"], "acc_o": m.get("acc_o"),
                     "h_mean": m["h_mean"], "figures": {g: headlines(f) for g, f in figures.items()},
                     "versus_retrain": versus(figures, references[str(k)]["figures"]) if str(k) in references else {}})
    return rows


def cell(figures: dict, group: str) -> str:
    f = figures.get(group) or {}

    def show(v, digits=2):
        return "-" if v is None else f"{v:.{digits}f}"

    steps = f.get("relearn_steps")
    relearn = "-" if steps is None else (f">{steps}" if f.get("relearn_capped") else str(steps))
    return f"{show(f.get('mia_auc'))} / {show(f.get('probe_accuracy'), 1)} / {relearn}"


def finished(runs_dir: Path, config: Any) -> dict | None:
    """The comparison an earlier invocation left in ``runs_dir`` if it ran ``config`` exactly and every method
    finished (its measuring after the runs may have stopped), else None."""
    from gslora.engine.compare import RESULTS

    try:
        comparison = json.loads((runs_dir / RESULTS).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    same = json.loads(json.dumps(to_dict(config))) == comparison.get("config")
    complete = set(comparison.get("methods") or {}) == set(config.methods)
    return comparison if same and complete else None


def settings_so_far(out: Path) -> dict:
    """The settings' rows that results.json holds now (none before the first run)."""
    return json.loads((out / "results.json").read_text())["settings"] if (out / "results.json").exists() else {}


def report(results: dict, title: str = "verification") -> str:
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines = [f"# {title}", "",
             "Per setting and request k: Acc_f / Acc_r of the model right after request k, then the suite's figures "
             "for request k's classes on that model: membership-inference AUC (0.5: the training images look unseen) "
             "/ linear-probe accuracy on held-out training images of the classes (residual knowledge) / k-shot "
             "relearn steps to half the accuracy before (more: less left to relearn; > cap: not relearned). "
             "The second table measures every request again on the model after the last request (does forgetting "
             "hold?), and the last gives each method's difference from Retrain (converged) right after each "
             "request (settings with a Retrain only).", ""]
    for name, setting in results["settings"].items():
        pre = setting["pretrain"]
        n, retrained = len(setting["original"]), len(setting["references"])
        retrain = (f"Retrain (converged): the same recipe without the forgotten classes, test top-1 "
                   f"{', '.join(fmt(r['pretrain'].get('test_acc')) for r in setting['references'].values())}% over "
                   "all classes (those it never saw count as 0)" if retrained else
                   "No Retrain in this setting (`retrain: false`): each would be a full pre-training.")
        if 0 < retrained < n:
            retrain += (f", for the first {retrained} of the {n} requests only (`retrain: {retrained}`: each is a full "
                        "pre-training; '-' where there is none).")
        elif retrained:
            retrain += "."
        lines += [f"## {name}", "", f"Base model: test top-1 {fmt(pre.get('test_acc'))}%. {retrain}", "",
                  "| method | " + " | ".join(f"request {k}: Acc_f / Acc_r; AUC / probe / relearn" for k in range(n))
                  + " |", "|---" * (n + 1) + "|"]
        references = {"Original": setting["original"], "Retrain (converged)": setting["references"]}
        # a row per model, a state per request (None: no Retrain after that request)
        rows = [(label, [ref[str(k)] | {"figures": {g: headlines(f) for g, f in ref[str(k)]["figures"].items()}}
                         if str(k) in ref else None for k in range(n)]) for label, ref in references.items() if ref]
        rows += [(label, m["per_request"]) for label, m in setting["methods"].items() if m.get("per_request")]
        for label, per in rows:
            cells = [f"{fmt(r['acc_f'])} / {fmt(r['acc_r'])}; {cell(r['figures'], str(k))}" if r else "-"
                     for k, r in enumerate(per)]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        last = n - 1
        lines += ["", f"After the last request, every request again: AUC / probe / relearn for request 0..{last}.", "",
                  "| method | " + " | ".join(f"request {k}" for k in range(n)) + " |", "|---" * (n + 1) + "|"]
        for label, per in rows:
            final = per[last]["figures"] if per[last] else {}
            lines.append(f"| {label} | " + " | ".join(cell(final, str(k)) for k in range(n)) + " |")
        if any(r and r["figures"].get(str(k), {}).get("tar_far_1e-2") is not None for _, per in rows
               for k, r in enumerate(per)):
            lines += ["", "Face verification right after each request k: TAR at FAR 1e-2 (%) of request k's "
                      "identities / of the retained identities; cosine similarity of request k's embeddings to "
                      "their prototypes from the original model.", "",
                      "| method | " + " | ".join(f"request {k}" for k in range(n)) + " |", "|---" * (n + 1) + "|"]
            for label, per in rows:
                cells = []
                for k, r in enumerate(per):
                    f = (r["figures"].get(str(k)) if r else None) or {}
                    cells.append(f"{fmt(f.get('tar_far_1e-2'))} / {fmt(f.get('tar_retained_far_1e-2'))}; "
                                 f"{fmt(f.get('prototype_similarity'))}")
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
        if not retrained:
            lines.append("")
            continue
        lines += ["", "Difference from Retrain (converged), right after each request: AUC / probe points / relearn "
                  "steps.", "", "| method | " + " | ".join(f"request {k}" for k in range(n)) + " |",
                  "|---" * (n + 1) + "|"]
        for label, m in setting["methods"].items():
            cells = []
            for k, r in enumerate(m.get("per_request") or []):
                v = r["versus_retrain"].get(str(k)) or {}
                cells.append(" / ".join(fmt((v.get(key) or {}).get("difference"))
                                        for key in ("mia_auc", "probe_accuracy", "relearn_steps")))
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--settings", help="comma-separated subset of the config's settings")
    parser.add_argument("--methods", help="comma-separated subset of the config's methods (labels)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the methods' runs already finished in the runs folder with the same config")
    parser.add_argument("--config", help="another config file (a quick check); results then go next to it")
    parser.add_argument("--report-only", action="store_true", help="only write report.md again from results.json")
    args = parser.parse_args()
    setup_logging()
    config = load_yaml(args.config) if args.config else load_config(HERE)
    out = Path(args.config).resolve().parent if args.config else HERE
    if args.report_only:
        (out / "report.md").write_text(report(json.loads((out / "results.json").read_text()), out.name))
        return 0
    device = resolve_device(args.device)
    verify_config = from_dict(VerifyConfig, config["verify"], "verify")
    wanted = args.settings.split(",") if args.settings else list(config["settings"])
    settings = {}
    labels = selected_methods(parser, args.methods, config)
    for name, setting in config["settings"].items():
        if name not in wanted:
            continue
        specs = {label: spec for label, spec in method_specs(config, setting).items() if label in labels}
        if not specs:  # none of the --methods runs on this setting
            continue
        checkpoint, pre = cached_base(load_yaml(HERE.parent / setting["base"]), device=args.device)
        forget = resolve_paths(setting["forget"])
        compare_config = from_dict(CompareConfig, {
            "checkpoint": str(checkpoint), "data": forget["data"], "sequence": forget["sequence"],
            "train": {**forget["train"], "device": args.device}, "methods": specs, "verify": config["verify"]})
        # one folder per method subset: runs of disjoint subsets side by side do not clear each other's
        runs_dir = CACHE / HERE.name / (name if not args.methods else f"{name}-{config_key(sorted(labels))}")
        comparison = finished(runs_dir, compare_config) if args.resume else None
        if comparison is None:
            shutil.rmtree(runs_dir, ignore_errors=True)
            comparison = compare(compare_config, runs_dir)
        # what the reference rows depend on: not which methods run on the setting
        row_config = {**{k: v for k, v in setting.items() if k != "methods"}, "verify": to_dict(verify_config)}
        earlier = settings_so_far(out).get(name) or {}
        # another --methods subset of this setting measured the references already
        reused = reusable(earlier, pre, row_config)
        if reused:
            references, originals = earlier["references"], earlier["original"]
        else:
            references, originals = reference_rows(setting, checkpoint, verify_config, device)
        methods = {label: {**row, "per_request": per_request(runs_dir, label, references) if row.get("tasks") else []}
                   for label, row in comparison["methods"].items()}
        settings[name] = {"pretrain": pre, "methods": methods, "references": references, "original": originals,
                          "reference_stamp": earlier.get("reference_stamp") if reused else stamp(),
                          "config": row_config}
    # the other settings' and methods' rows as they are now (read at the end, under a lock, so that runs of disjoint
    # settings or methods compose)
    with open(CACHE / f"{out.name}-results.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        previous = settings_so_far(out)
        for name, fresh in settings.items():
            before = previous.get(name) or {}
            kept = {**(before["methods"] if same_base(before.get("pretrain", {}), fresh["pretrain"]) else {}),
                    **fresh["methods"]}
            fresh["methods"] = {label: kept[label] for label in config["methods"] if label in kept}
        settings = {name: settings.get(name, previous.get(name)) for name in config["settings"]
                    if name in settings or name in previous}
        write_results(out, {"settings": json.loads(json.dumps(settings))}, config)
    saved = json.loads((out / "results.json").read_text())
    (out / "report.md").write_text(report(saved, out.name))
    print((out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
