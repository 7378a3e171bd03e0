"""Foundation benchmark: GS-LoRA continual forgetting on Fashion-MNIST (see README.md here).

Usage: python benchmarks/fashion_mnist_continual/run.py [--device auto|cpu|cuda]
Writes results.json, report.md and the two plots next to this file.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import ROOT, cached_base, load_config, run_method, setup_logging, write_results  # noqa: E402

from gslora.config import load_yaml  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", help="write the results here instead of this folder (to compare a re-run)")
    args = parser.parse_args()
    out = Path(args.out).resolve() if args.out else HERE
    out.mkdir(parents=True, exist_ok=True)
    setup_logging()
    config = load_config(HERE)
    base_config = load_yaml(HERE.parent / config["base"])
    checkpoint, pre_info = cached_base(base_config, device=args.device)
    result = run_method(checkpoint, config["forget"], HERE.name, device=args.device)
    tasks = result["tasks"]
    targets = {
        "acc_f_le_2": all(t["acc_f"] <= 2 for t in tasks),
        "acc_o_le_2": all(t.get("acc_o") is None or t["acc_o"] <= 2 for t in tasks),
        "h_mean_ge_95pct_h_exact": all(t["h_mean"] >= 0.95 * t["h_exact"] for t in tasks),
        "seconds_le_tenth_of_pretrain": all(t["seconds"] <= pre_info["seconds"] / 10 for t in tasks),
    }
    write_results(out, {"pretrain": pre_info, "methods": {"gs_lora": result}, "targets": targets},
                  {**config, "base": pre_info["config"], "base_file": config["base"]})
    run_dir = ROOT / result["run_dir"]
    for name in ("report.md", "accuracy.png", "group_norms.png"):
        shutil.copy(run_dir / name, out / name)
    print(json.dumps(targets, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
