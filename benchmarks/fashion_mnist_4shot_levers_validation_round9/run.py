"""A choice over validation conditions: every setting of config.yaml at every training seed on every condition (a
validation base, class order and shot draw), one results file, decided by ``run_methods.condition_choice``. A folder
whose config names ``setup: fashion_mnist_4shot_levers_validation_round9`` and ``targets: condition_spread`` runs the
same way and only summarises (``run_methods.condition_spread``): a diagnostic, on the test split too.

Usage: python benchmarks/run.py fashion_mnist_4shot_levers_validation_round9 [--device auto|cpu|cuda] [--resume]

Each condition runs its rows through ``gslora.engine.compare`` (what ``gslora compare`` and ``run_methods`` run) on
its base (pre-trained once, cached) with its ``forget`` overrides; rows are named ``<setting> @ <condition> seed <n>``
and carry their own config, commit, time and hardware. ``--resume`` keeps a condition whose runs an earlier
invocation finished (the same rows, each with the same config) and measures only the rest. Writes results.json and
report.md here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import CACHE, cached_base, load_config, merged, resolve_paths, setup_logging, write_results  # noqa: E402
from run_methods import compare_config_for, condition_choice, condition_spread, fmt  # noqa: E402

from gslora.config import load_yaml, to_dict  # noqa: E402
from gslora.engine import compare  # noqa: E402
from gslora.report import comparison_markdown  # noqa: E402

#: what a config's ``targets`` makes of the rows: round 9's choice, or only its summary (a diagnostic)
RULES = {"condition_choice": condition_choice, "condition_spread": lambda rows: {"settings": condition_spread(rows)}}


def condition_rows(config: dict, condition: str) -> dict:
    """The method specs of one condition: every setting at every seed, labelled ``<setting> @ <condition> seed <n>``."""
    return {f"{setting} @ {condition} seed {seed}": merged(spec, {"train": {"seed": seed}})
            for setting, spec in config["settings"].items() for seed in config["seeds"]}


def run_condition(folder: Path, config: dict, condition: str, *, device: str, resume: bool) -> tuple[dict, dict]:
    """One condition's rows and its base's record; with ``resume``, an earlier invocation's finished rows."""
    spec = config["conditions"][condition]
    checkpoint, pretrain = cached_base(load_yaml(HERE.parent / spec.get("base", config["base"])), device=device)
    forget = resolve_paths(merged(config["forget"], spec.get("forget", {})))
    methods = condition_rows(config, condition)
    compare_config = compare_config_for(checkpoint, forget, methods, device=device)
    out = CACHE / folder.name / condition.replace(" ", "_")
    done = out / "comparison.json"
    if resume and done.is_file():
        rows = json.loads(done.read_text())["methods"]
        if set(rows) == set(methods) and all(
                r.get("tasks") and r["config"] == to_dict(compare_config.forget_config(label))
                for label, r in rows.items()):
            return rows, pretrain
    shutil.rmtree(out, ignore_errors=True)
    return compare(compare_config, out)["methods"], pretrain


def report(folder: Path, results: dict) -> str:
    """The choice's summary per setting and condition, then each condition's table with its paired intervals."""
    choice = results["targets"]
    if "reference" in choice:
        summary = (f"Rule: `run_methods.condition_choice`; reference: {choice['reference']}; "
                   f"winner: {choice['winner'] or 'none (the reference stays)'}.")
    else:
        summary = "A diagnostic (`run_methods.condition_spread`): nothing is chosen on this file."
    split = "validation" if results["config"]["forget"]["data"].get("validation") else "test"
    lines = [f"# {folder.name}", "", summary, "",
             "| setting | runs passing | mean H | " + " | ".join(results["config"]["conditions"]) + " |",
             "|---" * (3 + len(results["config"]["conditions"])) + "|"]
    for setting, s in choice["settings"].items():
        cells = [f"{fmt(c['mean_h'])} ({c['passing']}/{c['measured']}; Acc_f {fmt(c['worst_acc_f'])}, Acc_o "
                 f"{fmt(c['worst_acc_o'])}, kept {c['lowest_acc_r_last_over_first']:.2f}x)"
                 for c in s["conditions"].values()]
        lines.append(f"| {setting} | {s['runs_passing']}/{s['runs_measured']} | {fmt(s['mean_h'])} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Per condition: mean H over the seeds (runs passing the guards; worst Acc_f and Acc_o over the "
              "seeds' requests; lowest Acc_r after the last request over before the first).", ""]
    for condition in results["config"]["conditions"]:
        rows = {k: v for k, v in results["methods"].items() if f" @ {condition} seed " in k}
        pre = results["pretrains"][condition]
        lines += [comparison_markdown({"methods": rows, "written": results["written"]}, title=condition)
                  .replace("# ", "## ", 1).rstrip("\n"), "",
                  f"Base model: {split} top-1 {fmt(pre.get('test_acc'))}%, pre-trained in {pre['seconds']:.0f}s.",
                  ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", default=str(HERE))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--resume", action="store_true", help="keep the conditions an earlier invocation finished")
    args = parser.parse_args()
    setup_logging()
    folder = Path(args.folder).resolve()
    config = load_config(folder)
    if config.get("targets") not in RULES:
        parser.error(f"{folder / 'config.yaml'}: targets must be one of {', '.join(RULES)}, "
                     f"not {config.get('targets')!r}")
    methods: dict = {}
    pretrains: dict = {}
    for condition in config["conditions"]:
        rows, pretrains[condition] = run_condition(folder, config, condition, device=args.device, resume=args.resume)
        methods.update(rows)
    first = next(iter(config["conditions"]))
    results = {"pretrain": pretrains[first], "pretrains": pretrains, "methods": methods,
               "targets": RULES[config["targets"]](methods)}
    write_results(folder, results, config)
    saved = json.loads((folder / "results.json").read_text())
    (folder / "report.md").write_text(report(folder, saved))
    print((folder / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
