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
from targets import RETRAIN_TOLERANCE  # noqa: E402

# each round's setting and its rule (config.yaml states them): round 1 guards the retained TAR against the original
# model's, round 2 (the issue's own targets) against the model's before each request, both ranking by forgotten TAR;
# round 3 keeps round 2's guards, lets Acc_r fall as far as Retrain's, and ranks by the distance to Retrain; it decides
ROUNDS = {"faces_full_validation": "original", "faces_full_validation_order7": "before",
          "faces_full_validation_order23": "retrain"}
DECIDES = list(ROUNDS)[-1]  # the last round decides
RECIPE = "GS-LoRA++"
TIE = 2.0  # points of forgotten-identity TAR: an earlier-listed candidate this close to the best wins
GAIN = 2.0  # points of mean forgotten TAR the winner must beat the recipe by to be adopted
RETRAIN_TIE = 0.2  # round 3: the tie on the distance to Retrain, in units of the tolerances


def tars(figures: dict, k: int) -> tuple[float, float]:
    """(forgotten identities' TAR, retained identities' TAR) at FAR 1% of request k, from the suite's figures."""
    from gslora.verification import headlines

    f = figures[str(k)]
    f = f if "tar_far_1e-2" in f else headlines(f)
    return f["tar_far_1e-2"], f["tar_retained_far_1e-2"]


def retrain_gap(row: dict, k: int) -> float | None:
    """How far a method's request k is from Retrain's: the larger of its probe and MIA AUC differences, each in units
    of the issue's tolerance (<= 1 meets both targets); None where a difference was not measured."""
    versus = row.get("versus_retrain", {}).get(str(k)) or {}
    gaps = [(versus.get(figure) or {}).get("difference") for figure in RETRAIN_TOLERANCE]
    if None in gaps:
        return None
    return max(abs(gap) / tolerance for gap, tolerance in zip(gaps, RETRAIN_TOLERANCE.values()))


def choose(setting: dict, guard: str = "original", candidates: list[str] | None = None) -> dict:
    """The config's rule on one setting's rows: eligibility per candidate, the winner and whether it is adopted.
    ``guard`` says what the retained identities' TAR is compared with: the original model's (round 1) or the model's
    before each request, where Acc_r must also keep 0.97x its value before the request (round 2: the issue's
    targets); ``retrain`` (round 3) is round 2's guard, except that Acc_r may also fall as far as Retrain's where one
    exists, and ranks by the distance to Retrain (``retrain_gap``) instead of the forgotten TAR. Only the
    ``candidates`` (every row without them) compete."""
    rows_of = setting["methods"]
    methods = {label: rows_of[label]["per_request"] for label in (candidates or rows_of)  # in the round's order
               if (rows_of.get(label) or {}).get("per_request")}
    if RECIPE not in methods:
        raise SystemExit(f"{RECIPE} has no rows in results.json: run it first (--methods {RECIPE})")
    original = setting["original"]
    n = len(original)
    recipe = methods[RECIPE]
    retrained = [k for k in range(n) if str(k) in setting.get("references", {})]
    if guard == "retrain" and not retrained:
        raise SystemExit("round 3's rule needs a Retrain row: run the setting with retrain: 1 or more")
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
            if guard in ("before", "retrain"):  # both from the request's own record: the same images before and after
                task = rows_of[label]["tasks"][k]
                kept, before = task["tar_r"]["far=0.01"], task["tar_r_before"]["far=0.01"]
                exact = setting["references"][str(k)]["acc_r"] if guard == "retrain" and k in retrained else None
                if below(task["acc_r"] / task["acc_r_before"], 0.97) and (exact is None or below(task["acc_r"], exact)):
                    misses.append(f"Acc_r {task['acc_r']:.2f} < 0.97 x {task['acc_r_before']:.2f} before"
                                  + ("" if exact is None else f" and < Retrain's {exact:.2f}") + f", request {k}")
            else:
                kept, before = tars(per[k]["figures"], k)[1], kept_before[k]
            if before > 0 and below(kept / before, 0.9):
                misses.append(f"retained TAR {kept:.2f} < 0.9 x {before:.2f} on request {k}")
        rows[label] = {"forgotten_tar": forgotten, "mean": sum(forgotten) / n, "misses": misses}
        if guard == "retrain":  # the worst request with a Retrain: <= 1 meets both targets on every one of them
            gaps = [retrain_gap(per[k], k) for k in retrained]
            misses.extend(f"no difference from Retrain on request {k}"
                          for k, gap in zip(retrained, gaps) if gap is None)
            rows[label]["gap"] = max((gap for gap in gaps if gap is not None), default=float("inf"))
    rank, tie = ("gap", RETRAIN_TIE) if guard == "retrain" else ("mean", TIE)
    eligible = [label for label in methods if not rows[label]["misses"]]
    winner = None
    if eligible:
        best = min(rows[label][rank] for label in eligible)
        winner = next(label for label in eligible if not below(best + tie, rows[label][rank]))
    adopted = winner is not None and winner != RECIPE and below(GAIN, rows[RECIPE]["mean"] - rows[winner]["mean"])
    if guard == "retrain" and winner is not None:
        adopted = adopted and not below(1.0, rows[winner]["gap"])  # both of the Retrain targets met
    return {"rows": rows, "winner": winner, "adopted": winner if adopted else None}


def choice_section(choice: dict, *, outcome: str = "Adopted") -> list[str]:
    """One round's table (per candidate: forgotten TAR, its mean, the distance to Retrain where the round ranks by it,
    the guards it missed) and its outcome, introduced by ``outcome``."""
    by_gap = any("gap" in row for row in choice["rows"].values())
    gap_head = " distance to Retrain (max of \\|probe\\| / 5, \\|MIA\\| / 0.05) |" if by_gap else ""
    lines = [f"| candidate | forgotten TAR at FAR 1% per request | mean |{gap_head} eligible |",
             "|---|---|---|" + ("---|" if by_gap else "") + "---|"]
    for label, row in choice["rows"].items():
        tar = " / ".join(f"{v:.2f}" for v in row["forgotten_tar"])
        eligible = "; ".join(row["misses"]) or "yes"
        gap = f" {row['gap']:.2f} |" if by_gap else ""
        lines.append(f"| {label} | {tar} | {row['mean']:.2f} |{gap} {eligible} |")
    winner = choice["winner"]
    if winner is None:
        adopted = f"nothing: no candidate passed every guard, {RECIPE} included; the default stays {RECIPE}"
    elif choice["adopted"]:
        adopted = choice["adopted"]
    elif by_gap and below(1.0, choice["rows"][winner]["gap"]):
        adopted = f"nothing: {RECIPE} stays (the winner is {choice['rows'][winner]['gap']:.2f} tolerances from Retrain)"
    else:
        adopted = f"nothing: {RECIPE} stays (the winner does not beat its mean TAR by more than {GAIN})"
    return lines + ["", f"Winner: {winner or 'none eligible'}. {outcome}: {adopted}.", ""]


GUARDS = {"original": "the retained identities' TAR at FAR 1% >= 0.9x the original model's on every request",
          "before": "Acc_r and the retained identities' TAR at FAR 1% >= 0.97x / 0.9x their values before each request",
          "retrain": "the retained identities' TAR at FAR 1% >= 0.9x its value before each request, Acc_r >= 0.97x its "
                     "value before or, where a Retrain exists, >= the lower of that and Retrain's; ranked by the "
                     "distance to Retrain, adopted only within the issue's tolerances (<= 1) and more than 2 points of "
                     "mean forgotten TAR below the recipe's"}
RULES = {"original": "round 1's rule", "before": "round 2's rule (the issue's targets)",
         "retrain": "round 3's rule (the distance to Retrain)"}


def choice_md(settings: dict, config: dict) -> str:
    """Every round under its own rule among its candidates (the setting's ``methods`` in config.yaml), once all of
    them have rows, and each earlier round again under the next round's rule, for the record (it was seen before that
    rule was written, so it does not decide). Only the last round decides; each earlier one shows what it decided when
    it was the last."""
    lines = ["# verification_faces_validation: the rules' outcomes", "",
             "Generated by run.py from results.json (the rules are in config.yaml); never edited by hand. Every round "
             "also guards Acc_f <= 1 and Acc_r >= 0.97x the recipe's on every request.", ""]
    guards = list(ROUNDS.values())
    for number, (name, guard) in enumerate(ROUNDS.items(), start=1):
        candidates = config["settings"][name].get("methods", list(config["methods"]))
        rows = (settings.get(name) or {}).get("methods", {})
        missing = [label for label in candidates if not rows.get(label, {}).get("per_request")]
        lines += [f"## {name}, {RULES[guard]}", "", f"Guard: {GUARDS[guard]}. Candidates: {', '.join(candidates)}.", ""]
        if missing:
            lines += [f"Incomplete: no rows yet for {', '.join(missing)}; no outcome.", ""]
            continue
        outcome = ("Adopted" if name == DECIDES else
                   f"Adopted by this round (it decided before round {number + 1} existed)")
        lines += choice_section(choose(settings[name], guard, candidates), outcome=outcome)
        later = guards[number] if number < len(guards) else None
        if later == "retrain" and not settings[name].get("references"):
            continue  # round 3's rule needs a Retrain
        if later:
            lines += [f"## {name} under {RULES[later]} (for the record; seen before that rule was written, does not "
                      "decide)", "", *choice_section(choose(settings[name], later, candidates),
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
