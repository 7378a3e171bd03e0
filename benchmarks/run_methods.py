"""Run several forgetting methods over one request sequence and commit the results.

Usage: python benchmarks/run_methods.py benchmarks/<folder> [--device auto|cpu|cuda] [--methods a,b]

``<folder>/config.yaml`` holds ``base`` (a pre-training config file, relative to benchmarks/, cached
under .cache/benchmarks), ``forget`` (data, sequence, train) and ``methods`` (name -> method spec;
a spec's ``train`` overrides the shared one). Writes ``<folder>/results.json`` shaped as
``{"pretrain": .., "methods": {name: {"trainable_ratio", "tasks": [..]}}, "config", "version",
"hardware"}`` and ``<folder>/report.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import cached_base, load_config, run_method, setup_logging, write_results  # noqa: I001

from gslora.config import load_yaml

HERE = Path(__file__).resolve().parent


def fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def report(folder: Path, results: dict) -> str:
    lines = [f"# {folder.name}", "", f"Base model: test top-1 {fmt(results['pretrain'].get('test_acc'))}%"
             + (f", margin-penalised {fmt(results['pretrain']['test_acc_margin'])}%"
                if "test_acc_margin" in results["pretrain"] else "")
             + f", pre-trained in {results['pretrain']['seconds']:.0f}s.", "",
             "Cells: H / Acc_r / Acc_f / Acc_o [/ Acc_m] (percent, plain top-1); H_max in the last row.", ""]
    methods = results["methods"]
    first = next(iter(methods.values()))["tasks"]
    lines.append("| method | " + " | ".join(f"request {t['task']}" for t in first) + " | s/request | trainable |")
    lines.append("|---" * (len(first) + 3) + "|")
    for name, result in methods.items():
        cells = []
        for t in result["tasks"]:
            cell = f"{fmt(t['h_mean'])} / {fmt(t['acc_r'])} / {fmt(t['acc_f'])} / {fmt(t.get('acc_o'))}"
            cells.append(cell + (f" / {fmt(t['acc_m'])}" if "acc_m" in t else ""))
        seconds = sum(t["seconds"] for t in result["tasks"]) / len(result["tasks"])
        ratio = result.get("trainable_ratio")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {seconds:.1f} | "
                     + (f"{100 * ratio:.2f}% |" if ratio is not None else "- |"))
    lines.append("| H_max | " + " | ".join(fmt(t["h_max"]) for t in first) + " | | |")
    if any("tar_f" in t for t in first):
        lines += ["", "Verification (TAR at FAR 1%, embedding cosine): forgotten / retained identities, "
                  "before -> after.", ""]
        for name, result in methods.items():
            parts = [f"{fmt(t['tar_f_before']['far=0.01'])}->{fmt(t['tar_f']['far=0.01'])} / "
                     f"{fmt(t['tar_r_before']['far=0.01'])}->{fmt(t['tar_r']['far=0.01'])}" for t in result["tasks"]]
            lines.append(f"- {name}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def check_targets(kind: str, methods: dict) -> dict:
    """The issue's targets for this kind of benchmark, with the measured margins."""
    out: dict = {}
    if kind == "full":
        for name, r in methods.items():
            out[name] = {
                "acc_f_le_2": all(t["acc_f"] <= 2 for t in r["tasks"]),
                "h_mean_ge_95pct_h_max": all(t["h_mean"] >= 0.95 * t["h_max"] for t in r["tasks"]),
                "worst_h_over_h_max": min(t["h_mean"] / t["h_max"] for t in r["tasks"]),
                "worst_acc_f": max(t["acc_f"] for t in r["tasks"]),
            }
    elif kind == "fewshot":
        pp, plain = methods["gs_lora_pp"]["tasks"], methods["gs_lora"]["tasks"]
        out = {"pp_h_ge_gs_lora_h": all(a["h_mean"] >= b["h_mean"] for a, b in zip(pp, plain)),
               "pp_h_ge_85pct_h_max": all(t["h_mean"] >= 0.85 * t["h_max"] for t in pp),
               "pp_minus_gs_lora_h": [a["h_mean"] - b["h_mean"] for a, b in zip(pp, plain)],
               "pp_h_over_h_max": [t["h_mean"] / t["h_max"] for t in pp]}
    elif kind == "missing":
        for name, r in methods.items():
            first, last = r["tasks"][0]["acc_m_before"], r["tasks"][-1]["acc_m"]
            out[name] = {"acc_m_last_ge_half_first": last >= 0.5 * first, "acc_m_before_first": first,
                         "acc_m_after_last": last}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--methods", help="comma-separated subset of the config's methods")
    args = parser.parse_args()
    setup_logging()
    folder = Path(args.folder).resolve()
    config = load_config(folder)
    base_config = load_yaml(HERE / config["base"])
    checkpoint, pre_info = cached_base(base_config, Path(config["base"]).stem, device=args.device)
    wanted = args.methods.split(",") if args.methods else list(config["methods"])
    previous = json.loads((folder / "results.json").read_text())["methods"] if (folder / "results.json").exists() \
        else {}
    methods = {}
    for name in config["methods"]:
        if name not in wanted:
            if name in previous:
                methods[name] = previous[name]
            continue
        spec = dict(config["methods"][name])
        train = {**config["forget"].get("train", {}), **spec.pop("train", {})}
        forget = {**config["forget"], "method": spec, "train": train}
        methods[name] = run_method(checkpoint, forget, f"{folder.name}/{name}", device=args.device)
    results = {"pretrain": pre_info, "methods": methods}
    if config.get("targets"):
        results["targets"] = check_targets(config["targets"], methods)
    write_results(folder, results, {"base": base_config, **config})
    (folder / "report.md").write_text(report(folder, results))
    print((folder / "report.md").read_text())
    if "targets" in results:
        print(json.dumps(results["targets"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
