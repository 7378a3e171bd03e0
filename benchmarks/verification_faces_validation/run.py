"""The verification runner (../verification/run.py) on this folder's config, then the config's rule: results.json,
report.md and choice.md land here.

Usage: python benchmarks/verification_faces_validation/run.py [--device ...] [--methods ...] [--report-only]
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import below  # noqa: E402

# each round's setting and the reference of its retained-TAR guard (config.yaml states both rules): round 1 compares
# with the original model, round 2 (the issue's own target) with the model before each request; round 2 decides
ROUNDS = {"faces_full_validation": "original", "faces_full_validation_order7": "before"}
DECIDES = "faces_full_validation_order7"
RECIPE = "GS-LoRA++"
TIE = 2.0  # points of forgotten-identity TAR: an earlier-listed candidate this close to the best wins
GAIN = 2.0  # points the winner must beat the recipe by to be adopted


def tars(figures: dict, k: int) -> tuple[float, float]:
    """(forgotten identities' TAR, retained identities' TAR) at FAR 1% of request k, from the suite's figures."""
    from gslora.verification import headlines

    f = figures[str(k)]
    f = f if "tar_far_1e-2" in f else headlines(f)
    return f["tar_far_1e-2"], f["tar_retained_far_1e-2"]


def choose(setting: dict, guard: str = "original", candidates: list[str] | None = None) -> dict:
    """The config's rule on one setting's rows: eligibility per candidate, the winner and whether it is adopted.
    ``guard`` says what the retained identities' TAR is compared with: the original model's (round 1) or the model's
    before each request, where Acc_r must also keep 0.97x its value before the request (round 2: the issue's
    targets). Only the ``candidates`` (every row without them) compete."""
    methods = {label: m["per_request"] for label, m in setting["methods"].items()
               if m.get("per_request") and (candidates is None or label in candidates)}
    if RECIPE not in methods:
        raise SystemExit(f"{RECIPE} has no rows in results.json: run it first (--methods {RECIPE})")
    original = setting["original"]
    n = len(original)
    recipe = methods[RECIPE]
    # round 1's reference, read once: the original model's retained TAR per request
    kept_before = [tars(original[str(k)]["figures"], k)[1] for k in range(n)] if guard == "original" else None
    rows = {}
    for label, per in methods.items():
        forgotten = [tars(per[k]["figures"], k)[0] for k in range(n)]
        misses = [f"Acc_f {per[k]['acc_f']:.2f} on request {k}" for k in range(n)
                  if below(1.0, per[k]["acc_f"])]
        misses += [f"Acc_r {per[k]['acc_r']:.2f} < 0.97 x {recipe[k]['acc_r']:.2f} on request {k}" for k in range(n)
                   if below(per[k]["acc_r"] / recipe[k]["acc_r"], 0.97)]
        for k in range(n):
            if guard == "before":  # both from the request's own record: the same images before and after
                task = setting["methods"][label]["tasks"][k]
                kept, before = task["tar_r"]["far=0.01"], task["tar_r_before"]["far=0.01"]
                if below(task["acc_r"] / task["acc_r_before"], 0.97):
                    misses.append(f"Acc_r {task['acc_r']:.2f} < 0.97 x {task['acc_r_before']:.2f} before, request {k}")
            else:
                kept, before = tars(per[k]["figures"], k)[1], kept_before[k]
            if before > 0 and below(kept / before, 0.9):
                misses.append(f"retained TAR {kept:.2f} < 0.9 x {before:.2f} on request {k}")
        rows[label] = {"forgotten_tar": forgotten, "mean": sum(forgotten) / n, "misses": misses}
    eligible = [label for label in methods if not rows[label]["misses"]]
    winner = None
    if eligible:
        best = min(rows[label]["mean"] for label in eligible)
        winner = next(label for label in eligible if not below(best + TIE, rows[label]["mean"]))
    adopted = winner is not None and winner != RECIPE and below(GAIN, rows[RECIPE]["mean"] - rows[winner]["mean"])
    return {"rows": rows, "winner": winner, "adopted": winner if adopted else None}


def choice_section(choice: dict, *, outcome: str = "Adopted") -> list[str]:
    """One round's table (per candidate: forgotten TAR, its mean, the guards it missed) and its outcome, introduced
    by ``outcome``."""
    lines = ["| candidate | forgotten TAR at FAR 1% per request | mean | eligible |", "|---|---|---|---|"]
    for label, row in choice["rows"].items():
        tar = " / ".join(f"{v:.2f}" for v in row["forgotten_tar"])
        eligible = "; ".join(row["misses"]) or "yes"
        lines.append(f"| {label} | {tar} | {row['mean']:.2f} | {eligible} |")
    if choice["winner"] is None:
        adopted = f"nothing: no candidate passed every guard, {RECIPE} included; the default stays {RECIPE}"
    else:
        adopted = choice["adopted"] or f"nothing: {RECIPE} stays (the winner does not beat it by more than {GAIN})"
    return lines + ["", f"Winner: {choice['winner'] or 'none eligible'}. {outcome}: {adopted}.", ""]


GUARDS = {"original": "the retained identities' TAR at FAR 1% >= 0.9x the original model's on every request",
          "before": "Acc_r and the retained identities' TAR at FAR 1% >= 0.97x / 0.9x their values before each request"}


def choice_md(settings: dict, config: dict) -> str:
    """Every round under its own rule among its candidates (the setting's ``methods`` in config.yaml), once all of
    them have rows; round 1 again under round 2's rule, for the record (it was seen before that rule was written, so
    it does not decide)."""
    lines = ["# verification_faces_validation: the rules' outcomes", "",
             "Generated by run.py from results.json (the rules are in config.yaml); never edited by hand. Every round "
             "also guards Acc_f <= 1 and Acc_r >= 0.97x the recipe's on every request.", ""]
    for name, guard in ROUNDS.items():
        candidates = config["settings"][name].get("methods", list(config["methods"]))
        rows = (settings.get(name) or {}).get("methods", {})
        missing = [label for label in candidates if not rows.get(label, {}).get("per_request")]
        rule = "round 1's rule" if guard == "original" else "round 2's rule (the issue's targets)"
        lines += [f"## {name}, {rule}", "", f"Guard: {GUARDS[guard]}. Candidates: {', '.join(candidates)}.", ""]
        if missing:
            lines += [f"Incomplete: no rows yet for {', '.join(missing)}; no outcome.", ""]
            continue
        outcome = "Adopted" if name == DECIDES else "Adopted by this round (it decided before round 2 existed)"
        lines += choice_section(choose(settings[name], guard, candidates), outcome=outcome)
        if guard == "original":
            lines += [f"## {name} under round 2's rule (for the record; seen before that rule was written, does not "
                      "decide)", "", *choice_section(choose(settings[name], "before", candidates),
                                                     outcome="Would adopt, had this round decided")]
    return "\n".join(lines)


if __name__ == "__main__":
    from gslora.config import load_yaml

    sys.argv = [str(HERE.parent / "verification" / "run.py"), "--config", str(HERE / "config.yaml"), *sys.argv[1:]]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as stop:
        if stop.code:
            raise
    results = json.loads((HERE / "results.json").read_text())
    (HERE / "choice.md").write_text(choice_md(results["settings"], load_yaml(HERE / "config.yaml")))
    print((HERE / "choice.md").read_text())
