"""The verification runner (../verification/run.py) on this folder's config, then the rules of rounds 2 and 3
(config.yaml states them): results.json, report.md and choice.md land here.

Usage: python benchmarks/verification_validation/run.py [--device ...] [--methods ...] [--report-only]
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import below  # noqa: E402

SETTING = "fashion_full_validation"
CANDIDATES = ["GS-LoRA++ bnd auto", "GS-LoRA++ bnd auto + scatter 1", "GS-LoRA++ bnd auto + scatter 3"]
REFERENCES = ["GS-LoRA++", "GS-LoRA++ absorb 5"]  # the recipe and round 1's choice
# round 3: hold_old against classes coming back, on 4 requests; the reference is round 2's winner
SETTING_3 = "fashion_full_validation_4"
CANDIDATES_3 = ["GS-LoRA++ bnd auto + scatter 1 + hold_old 1", "GS-LoRA++ bnd auto + scatter 1 + hold_old 3",
                "GS-LoRA++ bnd auto + scatter 0.5 + hold_old 1"]
REFERENCES_3 = ["GS-LoRA++ bnd auto + scatter 1"]
GAIN = 3.0  # points of mean probe gap a winner must beat every reference of its round by
MIA_TOLERANCE = 0.05


def gaps(row: dict, figure: str) -> list[float]:
    """A row's differences from Retrain's ``figure`` on the classes of every request so far, after each request."""
    return [versus[figure]["difference"] for entry in row["per_request"]
            for versus in entry["versus_retrain"].values()]


def probe_score(row: dict) -> float:
    """Round 1's score: the mean absolute gap between the row's probe accuracy on the forgotten classes and
    Retrain's."""
    values = gaps(row, "probe_accuracy")
    return sum(abs(v) for v in values) / len(values)


def guard_misses(row: dict) -> list[str]:
    """The issue's full-data targets the row misses on a request: Acc_f <= 1%, Acc_r >= 0.97x before, H >= 0.97
    H_exact."""
    misses = []
    for t in row["tasks"]:
        if below(1.0, t["acc_f"]):
            misses.append(f"Acc_f {t['acc_f']:.2f} on request {t['task']}")
        if below(t["acc_r"] / t["acc_r_before"], 0.97):
            misses.append(f"Acc_r {t['acc_r'] / t['acc_r_before']:.3f}x before on request {t['task']}")
        if below(t["h_mean"] / t["h_exact"], 0.97):
            misses.append(f"H {t['h_mean'] / t['h_exact']:.3f}x H_exact on request {t['task']}")
    return misses


def choose(setting: dict, candidates: list[str] = CANDIDATES, references: list[str] = REFERENCES) -> dict:
    """Round 2's rule (round 3's with its candidates and reference) on the setting's rows: per row its score, MIA gaps
    and guard misses; the winner, or None."""
    rows = {label: row for label, row in setting["methods"].items() if row.get("per_request")}
    table = {label: {"probe_score": probe_score(row), "probe_gaps": gaps(row, "probe_accuracy"),
                     "mia_gaps": gaps(row, "mia_auc"),
                     "misses": guard_misses(row)} for label, row in rows.items()}
    if any(label not in table for label in references):
        return {"rows": table, "bar": None, "winner": None, "measured": []}  # no bar without every reference
    bar = min(table[label]["probe_score"] for label in references) - GAIN
    eligible = [label for label in candidates if label in table and not table[label]["misses"]
                and all(not below(MIA_TOLERANCE, abs(g)) for g in table[label]["mia_gaps"])
                and below(table[label]["probe_score"], bar)]
    winner = min(eligible, key=lambda label: table[label]["probe_score"], default=None)
    return {"rows": table, "bar": bar, "winner": winner, "measured": [c for c in candidates if c in table]}


def choice_md(choice: dict, title: str = "Round 2: the scatter term against the probe gap",
              references: list[str] = REFERENCES, stays: str = "the recipe") -> str:
    """The round's table and outcome; ``stays`` names what is kept when no candidate wins."""
    bar = "-" if choice["bar"] is None else f"{choice['bar']:.2f}"
    than = f"the better of {' and '.join(references)}" if len(references) > 1 else references[0]
    lines = [f"# {title} (rule in config.yaml)", "",
             f"A candidate wins if it meets the full-data targets on every request, keeps MIA AUC within "
             f"{MIA_TOLERANCE} of Retrain's, and its mean probe gap to Retrain is below {bar} "
             f"({than}, minus {GAIN:g}).", "",
             "| row | mean \\|probe - Retrain\\| | probe - Retrain | MIA AUC - Retrain | guard misses |",
             "|---|---|---|---|---|"]
    for label, row in choice["rows"].items():
        lines.append(f"| {label} | {row['probe_score']:.2f} | {' / '.join(f'{g:+.1f}' for g in row['probe_gaps'])} | "
                     f"{' / '.join(f'{g:+.3f}' for g in row['mia_gaps'])} | {'; '.join(row['misses']) or 'none'} |")
    if not choice["measured"]:
        lines += ["", "Not measured yet."]
    else:
        lines += ["", f"Winner: {choice['winner'] or f'none ({stays} stays)'}."]
    return "\n".join(lines) + "\n"


def choice_text(settings: dict) -> str:
    """choice.md: round 2's rule on its setting, then round 3's on its own (once measured)."""
    rounds = [choice_md(choose(settings[SETTING]))]
    if SETTING_3 in settings:
        rounds.append(choice_md(choose(settings[SETTING_3], CANDIDATES_3, REFERENCES_3),
                                "Round 3: hold_old against classes coming back, 4 requests", REFERENCES_3,
                                "round 2's winner"))
    return "\n".join(rounds)


def main() -> int:
    sys.argv = [str(HERE.parent / "verification" / "run.py"), "--config", str(HERE / "config.yaml"), *sys.argv[1:]]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as done:  # the runner ends with sys.exit(main())
        if done.code:
            return done.code
    (HERE / "choice.md").write_text(choice_text(json.loads((HERE / "results.json").read_text())["settings"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
