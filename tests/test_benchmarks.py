"""Benchmarks are re-created from the checkout by one command, and every committed results row says where it came
from (its config, the code version, when, on what hardware)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import requires_fashion

ROOT = Path(__file__).resolve().parents[1]
RESULTS = sorted(ROOT.glob("benchmarks/*/results.json"))


def _module(path: Path, name: str):
    """A benchmark script as a module (its folder's parent on the path, for ``common``)."""
    import importlib.util

    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(results: dict) -> list[dict]:
    if "settings" in results:  # the verification benchmark: one comparison per setting
        return [row for s in results["settings"].values() for row in s["methods"].values()]
    if "methods" in results:
        return list(results["methods"].values())
    rows = []  # the scale benchmark: sections that are one row or map names to rows
    for key, section in results.items():
        if key not in ("config", "written") and isinstance(section, dict):
            rows += [section] if "commit" in section or "config" in section else list(section.values())
    return rows


@pytest.mark.parametrize("path", RESULTS, ids=[p.parent.name for p in RESULTS])
def test_every_results_row_carries_its_config_and_provenance(path):
    results = json.loads(path.read_text())
    assert {"config", "written"} <= set(results), path
    rows = _rows(results)
    assert rows, path
    for row in rows:
        methods = row.get("methods") if "methods" in row and isinstance(row["methods"], dict) else {None: row}
        for inner in methods.values():
            assert {"config", "commit", "time", "hardware"} <= set(inner), (path, sorted(inner))
            # a gslora version and the git commit it ran at (a clean checkout, so anyone can check it out)
            assert re.fullmatch(r"\d+\.\d+\.\d+\+g[0-9a-f]{12}", inner["commit"]), inner["commit"]


def test_the_targets_table_is_what_the_committed_results_give():
    """benchmarks/targets.md is generated from the results files, never edited by hand: it must match them."""
    result = subprocess.run([sys.executable, "benchmarks/targets.py", "--check"], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr


def test_a_results_file_is_all_strict_only_when_every_stamped_row_names_the_strict_pins():
    """The provenance table must not call a file re-creatable when one row (its base included) ran without STRICT."""
    targets = _module(ROOT / "benchmarks" / "targets.py", "targets")
    strict = "Intel(R) Xeon(R) Processor x2 (AVX2, MKL_CBWR=AVX2,STRICT, ONEDNN_MAX_CPU_ISA=AVX2), torch 2.14"
    loose = "AMD EPYC x2 (AVX2, MKL_CBWR=AVX2, ONEDNN_MAX_CPU_ISA=AVX2), torch 2.14.1, 2 threads"
    assert [targets.pins(h) for h in (strict, loose, "AMD EPYC x2, torch 2.14")] == ["STRICT", "AVX2 only", "unpinned"]
    assert [targets.machine(h) for h in (strict, loose)] == ["Intel Xeon", "AMD EPYC"]
    results = {"pretrain": {"hardware": loose}, "methods": {"a": {"hardware": strict, "tasks": [{"hardware": strict}]}},
               "written": {"hardware": "anything"}}
    assert targets.stamps(results) == [("/pretrain", loose), ("/methods/a", strict), ("/methods/a/tasks", strict)]


def test_a_target_without_its_reference_is_not_judged_rather_than_met_or_missed():
    targets = _module(ROOT / "benchmarks" / "targets.py", "targets")
    within = lambda v: v <= 5  # noqa: E731
    assert targets.verdict([1.0, None], within).endswith("missed on 1")  # a missing figure is a miss by default
    assert targets.verdict([1.0, None, None], within, unjudged=(1, 2), why="no Retrain") == \
        "1.00 / - / -: **met**; not judged on 1, 2 (no Retrain)"
    assert targets.verdict([9.0, None], within, unjudged=(1,), why="no Retrain") == \
        "9.00 / -: missed on 0; not judged on 1 (no Retrain)"
    # a request that has its reference but no figure is still a miss
    assert targets.verdict([None, None], within, unjudged=(1,), why="no Retrain") == \
        "- / -: missed on 0; not judged on 1 (no Retrain)"
    assert targets.verdict([None, None], within, unjudged=(0, 1), why="no Retrain") == "- / -: not judged (no Retrain)"


@requires_fashion
def test_the_smoke_benchmark_is_recreated_from_the_checkout(tmp_path):
    committed = json.loads((ROOT / "benchmarks" / "smoke" / "results.json").read_text())
    result = subprocess.run([sys.executable, "benchmarks/run.py", "smoke", "--out", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    rerun = json.loads((tmp_path / "results.json").read_text())
    assert rerun["pretrain"]["test_acc"] == pytest.approx(committed["pretrain"]["test_acc"], abs=0.5)
    assert list(rerun["methods"]) == list(committed["methods"])
    for label, row in committed["methods"].items():
        again = rerun["methods"][label]
        assert again["config"] == row["config"], label
        assert len(again["tasks"]) == len(row["tasks"]) > 0, label
        for old, new in zip(row["tasks"], again["tasks"]):
            for key in ("acc_f", "acc_r", "h_mean"):
                assert new[key] == pytest.approx(old[key], abs=0.5), (label, key)
            for key in ("mia_auc", "probe_accuracy"):
                assert new["verification"][key] == pytest.approx(old["verification"][key], abs=0.03 if key == "mia_auc"
                                                                 else 3.0), (label, key)


@pytest.mark.slow
@requires_fashion
def test_the_foundation_benchmark_is_recreated_from_the_checkout(tmp_path):
    """The foundation benchmark (pre-training included when it is not cached: about 15 minutes on 2 cores)."""
    committed = json.loads((ROOT / "benchmarks" / "fashion_mnist_continual" / "results.json").read_text())
    result = subprocess.run([sys.executable, "benchmarks/run.py", "fashion_mnist_continual", "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=3600,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    rerun = json.loads((tmp_path / "results.json").read_text())
    assert len(rerun["methods"]["gs_lora"]["tasks"]) == len(committed["methods"]["gs_lora"]["tasks"]) == 4
    for old, new in zip(committed["methods"]["gs_lora"]["tasks"], rerun["methods"]["gs_lora"]["tasks"]):
        for key in ("acc_f", "acc_r", "h_mean"):
            assert new[key] == pytest.approx(old[key], abs=0.5), key


def test_lookalike_refuses_a_row_without_a_run_in_one_line_and_writes_nothing(tmp_path):
    """``benchmarks/lookalike.py`` reads finished runs: a label that is not a row with a run, or a row whose run is not
    on disk, gets one line naming what to do and exit code 2, and no lookalike.json is written."""
    folder = tmp_path / "det"
    folder.mkdir()
    rows = {"Retrain": {"run_dir": None}, "setting": {"run_dir": str(tmp_path / "not-run")}}
    (folder / "results.json").write_text(json.dumps({"methods": rows}))
    for labels, says in ((["Retrain"], "choose from ['setting']"), ([], "run python benchmarks/run.py det first")):
        result = subprocess.run([sys.executable, "benchmarks/lookalike.py", str(folder), *labels], cwd=ROOT,
                                capture_output=True, text=True, timeout=300,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert result.returncode == 2, result.stderr[-2000:]
        assert says in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (folder / "lookalike.json").exists()


def test_detection_rows_measured_apart_are_kept_only_on_the_same_base_detector(tmp_path, capsys):
    runner = _module(ROOT / "benchmarks" / "fashion_mnist_det" / "run.py", "det_run")
    base = {"key": "k1", "map50": 54.6406, "seconds": 10.0}
    rows = {"a": {"tasks": [1]}, "b": {"tasks": [2]}}
    (tmp_path / "results.json").write_text(json.dumps({"pretrain": base, "methods": rows}))
    # measuring b again keeps a's row, not b's (b is about to be replaced)
    assert runner.kept_rows({**base, "seconds": 99.0}, ["b"], tmp_path) == {"a": rows["a"]}
    # a base with the same key that trained to other weights (another machine) would mix two bases: refused
    with pytest.raises(SystemExit) as stop:
        runner.kept_rows({**base, "map50": 54.0}, ["b"], tmp_path)
    assert stop.value.code == 2
    assert "run without --methods" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        runner.kept_rows({**base, "key": "k2"}, ["b"], tmp_path)


def test_the_detection_retrain_row_excludes_every_class_forgotten_so_far_and_compares_with_the_retrain_before(
        monkeypatch):
    """Retrain after request k is the base recipe without the objects of requests 0..k as targets, measured against
    Retrain after request k-1 (the base detector for k = 0), as a method's model is against its own model before."""
    from types import SimpleNamespace

    runner = _module(ROOT / "benchmarks" / "fashion_mnist_det" / "run.py", "det_run")
    classes = ["a", "b", "c", "d", "e"]
    split = SimpleNamespace(test="scenes", num_classes=5, classes=classes)
    excluded = []

    def cached(config, device, exclude=()):
        excluded.append(list(exclude))
        return f"retrain-{len(exclude)}", {"seconds": 7.0, "map50": 1.0, "config": {}, "ap50_per_class": []}

    class Model:
        def __init__(self, name):
            self.name = name

        def to(self, device):
            return self

    def evaluate(model, test, num_classes, device):  # each model scores every class it was trained on at 50
        gone = 0 if model.name == "base" else int(model.name.split("-")[1])
        known = [c for c in range(5) if classes[c] not in excluded[-1][:gone]] if gone else range(5)
        ap = [50.0 if c in known else 0.0 for c in range(5)]
        return {"ap50": ap, "ap": [a / 2 for a in ap]}

    monkeypatch.setattr(runner, "cached_detector", cached)
    monkeypatch.setattr(runner, "load_detector", lambda path: (Model(str(path)), {}))
    monkeypatch.setattr(runner, "evaluate_detector", evaluate)
    monkeypatch.setattr(runner, "load_detection_dataset", lambda data: split)
    config = {"data": {"dataset": "fashion-mnist-scenes"},
              "sequence": {"num_requests": 2, "classes_per_request": 1, "order_seed": 1337}}
    row = runner.retrain_row(config, "base", split, "cpu", "cpu")
    order = [t["forget_classes"][0] for t in row["tasks"]]
    assert excluded == [order[:1], order[:2]]  # every class forgotten so far, not only this request's
    first, second = row["tasks"]
    assert first["map50_f_before"] == 50.0 and first["map50_f"] == 0.0 and first["map50_o"] is None
    assert second["map50_f_before"] == 50.0 and second["map50_f"] == 0.0 and second["map50_o"] == 0.0
    assert second["map50_r"] == second["map50_r_before"] == 50.0 and second["heldout"]["map50_r"] == 50.0
    assert second["seconds"] == 7.0 and second["ap50_per_class"][classes.index(order[1])] == 0.0


def test_a_later_detection_round_shares_its_setup_and_so_its_base_detector():
    """fashion_mnist_det_levers names fashion_mnist_det as its setup: everything but the methods is that config's, so
    both pre-train (and cache) the same base detector and their rows are comparable."""
    runner = _module(ROOT / "benchmarks" / "fashion_mnist_det" / "run.py", "det_run")
    first = runner.folder_config(ROOT / "benchmarks" / "fashion_mnist_det")
    later = runner.folder_config(ROOT / "benchmarks" / "fashion_mnist_det_levers")
    assert {k: v for k, v in later.items() if k not in ("methods", "setup")} == \
        {k: v for k, v in first.items() if k != "methods"}
    assert later["methods"] and later["methods"] != first["methods"]
    other_base = runner.folder_config(ROOT / "benchmarks" / "fashion_mnist_det_base_seed1")
    assert other_base["pretrain"] == {**first["pretrain"], "seed": 1}  # laid over the recipe, not replacing it
    assert {k: v for k, v in other_base.items() if k not in ("methods", "setup", "pretrain")} == \
        {k: v for k, v in first.items() if k not in ("methods", "pretrain")}


def test_a_folder_naming_a_setup_runs_that_benchmarks_runner_on_itself(monkeypatch):
    """benchmarks/run.py hands a folder whose config names ``setup: OTHER`` to OTHER's run.py with ``--folder``, so
    a later round needs no runner of its own."""
    launcher = _module(ROOT / "benchmarks" / "run.py", "bench_launcher")
    ran = []
    monkeypatch.setattr(launcher.runpy, "run_path", lambda path, run_name: ran.append(list(launcher.sys.argv)))
    monkeypatch.setattr(launcher, "pin_cpu_kernels", lambda: None)  # the environment of this process stays
    monkeypatch.setattr(launcher.sys, "argv", ["run.py", "fashion_mnist_det_base_seed1", "--methods", "gs_lora_pp"])
    monkeypatch.setattr(launcher.sys, "path", list(launcher.sys.path))
    assert launcher.main() == 0
    det = ROOT / "benchmarks" / "fashion_mnist_det"
    assert ran == [[str(det / "run.py"), "--folder", str(ROOT / "benchmarks" / "fashion_mnist_det_base_seed1"),
                    "--methods", "gs_lora_pp"]]


def test_the_cost_benchmark_runs_on_the_kernels_torch_picks_and_the_others_pinned(monkeypatch):
    """benchmarks/run.py pins the CPU kernels for every benchmark but those that measure cost (scale), whose timings
    must be what a user's run pays: the Makefile's exported pins are removed for them."""
    launcher = _module(ROOT / "benchmarks" / "run.py", "bench_launcher_pins")
    seen = {}
    monkeypatch.setattr(launcher.runpy, "run_path", lambda path, run_name: seen.update(
        {Path(path).parent.name: {k: os.environ.get(k) for k in launcher.PORTABLE_CPU}}))
    monkeypatch.setattr(launcher.sys, "path", list(launcher.sys.path))
    for name in ("scale", "smoke"):
        for key, value in launcher.PORTABLE_CPU.items():
            monkeypatch.setenv(key, value)  # as the Makefile exports them
        monkeypatch.setattr(launcher.sys, "argv", ["run.py", name])
        assert launcher.main() == 0
    assert seen["scale"] == dict.fromkeys(launcher.PORTABLE_CPU)
    assert seen["benchmarks"] == launcher.PORTABLE_CPU  # smoke: run_methods.py on its folder, pinned


_PROBE = "import version; print(version.code_version())"
_WITHOUT_TOLD_COMMIT = {k: v for k, v in os.environ.items() if k != "GSLORA_COMMIT"}


def _code_version(cwd: Path, code: str = _PROBE, **extra: str) -> str:
    """What ``code`` prints, run in ``cwd`` without an exported GSLORA_COMMIT (plus ``extra`` variables)."""
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True,
                          env={**_WITHOUT_TOLD_COMMIT, **extra}).stdout.strip()


def test_a_copy_without_git_names_the_commit_it_was_told_and_a_checkout_its_own(tmp_path):
    """A results row made from a copy of a commit on another machine (no .git) names the commit its sender gave;
    in a git checkout the variable changes nothing (a stale export cannot relabel a run)."""
    copy = tmp_path / "src" / "gslora"
    copy.mkdir(parents=True)
    (copy / "version.py").write_text((ROOT / "src" / "gslora" / "version.py").read_text())
    plain = _code_version(copy)
    assert re.fullmatch(r"\d+\.\d+\.\d+", plain), plain
    assert _code_version(copy, GSLORA_COMMIT="0123456789abcdef0123") == plain + "+g0123456789ab"
    assert _code_version(copy, GSLORA_COMMIT="not a commit") == plain
    in_git = "from gslora.version import code_version; print(code_version())"
    own = _code_version(ROOT, in_git, PYTHONPATH=str(ROOT / "src"))
    assert re.fullmatch(r"\d+\.\d+\.\d+\+g[0-9a-f]{12}(\.dirty)?", own), own
    assert _code_version(ROOT, in_git, PYTHONPATH=str(ROOT / "src"), GSLORA_COMMIT="0123456789abcdef0123") == own


def test_a_checkout_changed_only_in_benchmark_outputs_is_not_dirty_and_a_changed_source_file_is(tmp_path):
    """Benchmarks re-created one after the other in one checkout leave each other's outputs changed (results, reports,
    plots, paired.json, ...): the rows made after them name a clean commit; any other tracked change marks it .dirty."""
    repo = tmp_path / "repo"
    (repo / "src" / "gslora").mkdir(parents=True)
    (repo / "src" / "gslora" / "version.py").write_text((ROOT / "src" / "gslora" / "version.py").read_text())
    outputs = ["results.json", "report.md", "comparison.png", "choice.md", "drift.json", "paired.json",
               "lookalike.json"]
    (repo / "benchmarks" / "one").mkdir(parents=True)
    for name in [*outputs, "config.yaml"]:
        (repo / "benchmarks" / "one" / name).write_text("{}\n")

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                       capture_output=True, env=_WITHOUT_TOLD_COMMIT)

    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "base")
    for name in outputs:
        (repo / "benchmarks" / "one" / name).write_text('{"changed": true}\n')
    assert re.fullmatch(r"\d+\.\d+\.\d+\+g[0-9a-f]{12}", _code_version(repo / "src" / "gslora"))
    (repo / "benchmarks" / "one" / "config.yaml").write_text("methods: {}\n")
    assert _code_version(repo / "src" / "gslora").endswith(".dirty")


def test_the_face_base_rule_takes_the_best_held_out_top1_and_gives_ties_to_the_earlier_listed():
    choose = _module(ROOT / "benchmarks" / "faces_base" / "run.py", "faces_base_run").choose
    assert choose({"a": {"top1": 40.0}, "b": {"top1": 46.6}, "c": {"top1": 44.8}}) == "b"
    assert choose({"a": {"top1": 46.6}, "b": {"top1": 46.4}}) == "a"
    assert choose({"a": {"top1": 46.2}, "b": {"top1": 46.6}}) == "a"  # within 0.5: the one listed first
    assert choose({"a": {"top1": 40.0}, "b": {"top1": 46.3}, "c": {"top1": 46.6}}) == "b"


def _fewshot_row(h: list[float], acc_f: float = 1.0, acc_o: float = 1.0, acc_r_last: float = 55.0) -> dict:
    """A 4-shot row: the guards' figures on request 1 only (the others clean); Acc_r before falls with each request,
    so a rule that reads the last request's "before" instead of the first's gives another ratio."""
    tasks = [{"h_mean": v, "acc_f": 0.0, "acc_o": None if i == 0 else 0.0, "acc_r": 56.0, "acc_r_before": 58.0 - 10 * i}
             for i, v in enumerate(h)]
    tasks[1].update(acc_f=acc_f, acc_o=acc_o)
    tasks[-1]["acc_r"] = acc_r_last
    return {"tasks": tasks}


def test_the_fewshot_face_rule_needs_guards_and_a_clear_lead_over_the_reference():
    choice = _module(ROOT / "benchmarks" / "run_methods.py", "run_methods").fewshot_choice
    ref = _fewshot_row([50, 50, 50, 50])
    # within the margin of 1: nothing changes
    assert choice({"ref": ref, "a": _fewshot_row([51, 51, 51, 50])})["winner"] is None
    # a clear lead that passes the guards wins, the best passing row first
    assert choice({"ref": ref, "a": _fewshot_row([52] * 4), "b": _fewshot_row([53] * 4)})["winner"] == "b"
    # a lead bought with forgetting (Acc_o 3 > 2), with Acc_f, or with retained accuracy (0.5x) does not count
    assert choice({"ref": ref, "a": _fewshot_row([60] * 4, acc_o=3.0)})["winner"] is None
    assert choice({"ref": ref, "a": _fewshot_row([60] * 4, acc_f=2.5)})["winner"] is None
    assert choice({"ref": ref, "a": _fewshot_row([60] * 4, acc_r_last=29.0)})["winner"] is None
    # the best row that passes wins, not the best row overall
    assert choice({"ref": ref, "a": _fewshot_row([60] * 4, acc_o=3.0), "b": _fewshot_row([52] * 4)})["winner"] == "b"
    # a lead of exactly 1 is not more than 1; Acc_r is judged against the first request's "before" (55/58 = 0.95)
    assert choice({"ref": ref, "a": _fewshot_row([51] * 4)})["winner"] is None
    assert choice({"ref": ref, "a": _fewshot_row([52] * 4, acc_r_last=50.0)})["winner"] is None  # 0.86x
    # figures at the guard itself (float32 2.0) pass, just above it do not; the reference failing its guards does
    # not lower the bar
    assert choice({"ref": ref, "a": _fewshot_row([52] * 4, acc_f=1.9999999552965164)})["winner"] == "a"
    assert choice({"ref": ref, "a": _fewshot_row([52] * 4, acc_f=2.1)})["winner"] is None
    assert choice({"ref": _fewshot_row([50] * 4, acc_o=5.0), "a": _fewshot_row([50.5] * 4)})["winner"] is None


def _tar_row(h: float, tar_f: float, tar_r: float = 40.0, acc_f: float = 1.0) -> dict:
    row = _fewshot_row([h] * 4, acc_f=acc_f)
    for t in row["tasks"]:
        t.update(tar_f={"far=0.01": tar_f}, tar_r={"far=0.01": tar_r})
    return row


def test_the_forgotten_tar_rule_needs_guards_kept_h_and_retained_tar_and_a_clear_drop():
    choice = _module(ROOT / "benchmarks" / "run_methods.py", "run_methods").tar_choice
    ref = _tar_row(50, 12.0)
    # a drop of more than 3 points wins, the lowest passing row first
    assert choice({"ref": ref, "a": _tar_row(50, 8.0), "b": _tar_row(50, 5.0)})["winner"] == "b"
    # a drop of exactly 3 (or less) does not
    assert choice({"ref": ref, "a": _tar_row(50, 9.0)})["winner"] is None
    # mean H may fall by 1, not more; retained TAR may fall to 0.9x, not below
    assert choice({"ref": ref, "a": _tar_row(49, 2.0)})["winner"] == "a"
    assert choice({"ref": ref, "a": _tar_row(48.9, 2.0)})["winner"] is None
    assert choice({"ref": ref, "a": _tar_row(50, 2.0, tar_r=36.0)})["winner"] == "a"
    assert choice({"ref": ref, "a": _tar_row(50, 2.0, tar_r=35.9)})["winner"] is None
    # the few-shot guards hold: a drop bought with Acc_f 2.5 does not count, and the best row that passes wins
    assert choice({"ref": ref, "a": _tar_row(50, 0.0, acc_f=2.5)})["winner"] is None
    assert choice({"ref": ref, "a": _tar_row(50, 0.0, acc_f=2.5), "b": _tar_row(50, 6.0)})["winner"] == "b"
    rows = choice({"ref": ref, "a": _tar_row(50, 8.0)})["rows"]
    assert rows["a"]["mean_tar_f"] == 8.0 and rows["ref"]["mean_tar_r"] == 40.0


def _paired_row(labels: torch.Tensor, right: torch.Tensor, *, acc_f: float = 0.0) -> dict:
    """A one-request row with its hits (``right`` after the request, class 1 forgotten; before it, right on every
    forgotten image and on 75% of the retained ones) and the figures fewshot_choice's guards read."""
    from gslora.metrics.paired import hits_h, hits_record

    before = (torch.arange(len(labels)) % 4 != 0) | (labels == 1)
    hits = hits_record(torch.where(before, labels, labels + 10), torch.where(right, labels, labels + 10),
                       labels=labels, num_classes=3, forget=[1], retain=[0, 2])
    figures = hits_h([hits], resamples=1)[1][0]
    return {"tasks": [{**figures, "acc_f": acc_f, "acc_o": None, "hits": hits}]}


def test_the_paired_choice_adopts_a_row_only_when_its_interval_clears_the_reference():
    choice = _module(ROOT / "benchmarks" / "run_methods.py", "run_methods").paired_choice
    labels = torch.arange(3).repeat_interleave(50)
    right = (torch.arange(150) % 4 != 0) & (labels != 1)  # 75% of the retained images, none of the forgotten
    one_more = right.clone()
    one_more[torch.nonzero(~right & (labels != 1))[0]] = True  # one more image right: higher H, inside the noise
    many_more = right | (labels != 1)  # every retained image right: clear of the noise
    ref = _paired_row(labels, right)
    out = choice({"ref": ref, "a": _paired_row(labels, one_more), "b": _paired_row(labels, many_more)}, resamples=400)
    assert out["rows"]["a"]["mean_h"] > out["rows"]["ref"]["mean_h"] and out["rows"]["a"]["ci"][0] <= 0
    assert out["winner"] == "b" and out["rows"]["b"]["ci"][0] > 0 and out["reference"] == "ref"
    assert out["level"] == 0.975 and out["rows"]["b"]["ci"][0] <= out["rows"]["b"]["ci95"][0]  # two candidates
    # a failed row does not pass, and does not stop the rule
    assert choice({"ref": ref, "b": _paired_row(labels, many_more), "x": {"error": "non-finite", "tasks": []}},
                  resamples=400)["winner"] == "b"
    assert choice({"ref": ref, "a": _paired_row(labels, one_more)}, resamples=400)["winner"] is None
    # the few-shot guards hold: a clear lead bought with Acc_f 2.5 does not count
    assert choice({"ref": ref, "b": _paired_row(labels, many_more, acc_f=2.5)}, resamples=400)["winner"] is None
    with pytest.raises(ValueError, match="no per-image hits"):
        choice({"ref": ref, "old": {"tasks": [{k: v for k, v in ref["tasks"][0].items() if k != "hits"}]}})


def test_the_guard_choice_lets_a_passing_row_replace_a_failing_reference_unless_clearly_more_than_a_point_behind():
    rules = _module(ROOT / "benchmarks" / "run_methods.py", "run_methods")
    labels = torch.arange(3).repeat_interleave(500)  # enough images for a narrow interval
    right = (torch.arange(1500) % 4 != 0) & (labels != 1)
    one_less = right.clone()
    one_less[torch.nonzero(right)[0]] = False  # one retained image fewer: lower H, inside the noise
    far_less = right.clone()
    far_less[torch.nonzero(right)[::16]] = False  # 1 in 16 fewer (0.94x): passes, clearly more than a point behind
    failing = _paired_row(labels, right, acc_f=2.5)
    out = rules.guard_choice({"ref": failing, "a": _paired_row(labels, one_less), "b": _paired_row(labels, far_less)})
    assert out["rows"]["a"]["mean_h"] < out["rows"]["ref"]["mean_h"] and out["rows"]["a"]["ci"][0] > -1
    assert out["rows"]["b"]["ci"][1] < -1 and out["winner"] == "a"
    # a reference that passes the guards keeps round 4's rule: only a row clearly ahead replaces it
    assert rules.guard_choice({"ref": _paired_row(labels, right), "a": _paired_row(labels, one_less)})["winner"] is None
    # the same rows under paired_choice: behind is never enough
    assert rules.paired_choice({"ref": failing, "a": _paired_row(labels, one_less)})["winner"] is None
    assert rules.check_targets("guard_choice", {"ref": failing, "a": _paired_row(labels, one_less)})["winner"] == "a"


def test_the_seed_spread_groups_rows_by_setting_and_counts_the_seeds_that_pass():
    rules = _module(ROOT / "benchmarks" / "run_methods.py", "run_methods")

    def row(h: float, acc_f: float) -> dict:
        return {"tasks": [{"h_mean": h, "acc_f": acc_f, "acc_o": None, "acc_r": 80.0, "acc_r_before": 80.0}]}

    out = rules.check_targets("seed_spread", {"a seed 1": row(80.0, 0.0), "a seed 2": row(84.0, 3.0),
                                              "b seed 1": row(82.0, 0.0), "b seed 7": row(83.0, 1.0)})["settings"]
    assert out["a"]["mean_h"] == 82.0 and (out["a"]["lowest_mean_h"], out["a"]["highest_mean_h"]) == (80.0, 84.0)
    assert out["a"]["seeds_passing"] == 1 and out["b"]["seeds_passing"] == 2 == out["b"]["seeds_measured"]
    assert set(out["b"]["seeds"]) == {"1", "7"} and out["a"]["seeds"]["2"]["worst_acc_f"] == 3.0
    with pytest.raises(ValueError, match="seed <n>"):
        rules.seed_spread({"a": row(80.0, 0.0)})


def test_the_seed_choice_needs_every_seed_to_pass_and_holds_a_failing_reference_to_its_one_point_tolerance():
    rules = _module(ROOT / "benchmarks" / "run_methods.py", "run_methods")

    def row(h: float, acc_f: float = 0.0) -> dict:
        return {"tasks": [{"h_mean": h, "acc_f": acc_f, "acc_o": None, "acc_r": 80.0, "acc_r_before": 80.0}]}

    def setting(name: str, *cells: tuple[float, float]) -> dict:
        return {f"{name} seed {n}": row(*cell) for n, cell in zip((1337, 1, 2), cells)}

    failing = setting("ref", (86.0, 5.0), (85.0, 0.0), (86.0, 0.0))  # mean 85.67, fails on seed 1337
    rows = {**failing, **setting("near", (85.0, 1.0), (84.5, 2.0), (85.0, 0.0)),  # 0.83 below: within the point
            **setting("far", (84.5, 0.0), (84.5, 0.0), (84.5, 0.0)),  # 1.17 below
            **setting("ahead but failing", (90.0, 0.0), (90.0, 2.5), (90.0, 0.0)),
            **{k: v for k, v in setting("one seed short", (90.0, 0.0), (90.0, 0.0), (90.0, 0.0)).items()
               if not k.endswith(" 2")},
            "crashed seed 2": {"error": "non-finite", "tasks": []},
            **setting("crashed", (90.0, 0.0), (90.0, 0.0))}
    out = rules.check_targets("seed_choice", rows)
    assert out["reference"] == "ref" and out["reference_passes"] is False and out["winner"] == "near"
    assert out["settings"]["ahead but failing"]["seeds_passing"] == 2
    assert rules.seed_choice({**failing, **setting("far", (84.5, 0.0), (84.5, 0.0), (84.5, 0.0))})["winner"] is None
    # a reference that passes on every seed gives way only to a candidate more than a point ahead of it
    holding = setting("ref", (86.0, 0.0), (85.0, 0.0), (86.0, 0.0))
    assert rules.seed_choice({**holding, **setting("a", (86.5, 0.0), (86.5, 0.0), (86.5, 0.0))})["winner"] is None
    assert rules.seed_choice({**holding, **setting("a", (87.0, 0.0), (86.5, 0.0), (87.0, 0.0))})["winner"] == "a"
    with pytest.raises(ValueError, match="lacks a measured row"):
        rules.seed_choice({**holding, "ref seed 2": {"error": "non-finite", "tasks": []}})


def test_the_condition_choice_counts_passing_runs_over_conditions_and_seeds_within_its_one_point_tolerance():
    rules = _module(ROOT / "benchmarks" / "run_methods.py", "run_methods")

    def row(h: float, acc_f: float = 0.0) -> dict:
        return {"tasks": [{"h_mean": h, "acc_f": acc_f, "acc_o": None, "acc_r": 80.0, "acc_r_before": 80.0}]}

    def setting(name: str, *cells: tuple[float, float]) -> dict:  # runs: (order 1, seed 1), (order 1, seed 2), ...
        runs = [f"{name} @ {condition} seed {seed}" for condition in ("order 1", "order 2") for seed in (1, 2)]
        return {label: row(*cell) for label, cell in zip(runs, cells)}

    ref = setting("ref", (86.0, 5.0), (86.0, 0.0), (86.0, 3.0), (86.0, 0.0))  # passes 2 of 4 runs, mean 86
    more = setting("more", (85.5, 0.0), (85.0, 0.0), (85.0, 1.0), (85.5, 0.0))  # 4 of 4, 0.75 below: within the point
    far = setting("far", (84.9, 0.0), (84.9, 0.0), (84.9, 0.0), (84.9, 0.0))  # 4 of 4, 1.1 below
    ahead = setting("ahead", (87.5, 0.0), (87.5, 4.0), (87.5, 0.0), (87.5, 3.0))  # 2 of 4, 1.5 above
    level = setting("level", (86.5, 0.0), (86.5, 0.0), (86.5, 9.0), (86.5, 9.0))  # 2 of 4, 0.5 above
    out = rules.condition_choice({**ref, **more, **far, **ahead, **level})
    assert out["reference"] == "ref" and out["winner"] == "more"  # the most passing runs first
    assert out["settings"]["ref"]["runs_passing"] == 2
    assert out["settings"]["ref"]["conditions"]["order 2"]["passing"] == 1
    assert rules.condition_choice({**ref, **far})["winner"] is None
    assert rules.condition_choice({**ref, **level})["winner"] is None
    assert rules.condition_choice({**ref, **ahead, **level})["winner"] == "ahead"
    short = {k: v for k, v in more.items() if not k.endswith("order 2 seed 2")}  # a run missing: not eligible
    assert rules.condition_choice({**ref, **short})["winner"] is None
    with pytest.raises(ValueError, match="lacks a measured row"):
        rules.condition_choice({**ref, "ref @ order 2 seed 2": {"error": "non-finite", "tasks": []}, **more})

    spread = rules.condition_spread({**ref, **more})  # the diagnostic's summary: the same figures, no winner
    assert spread == {name: out["settings"][name] for name in ("ref", "more")}  # a setting's figures are its own rows'
    runner = _module(ROOT / "benchmarks" / "fashion_mnist_4shot_levers_validation_round9" / "run.py", "round9_run")
    assert runner.RULES["condition_spread"]({**ref, **more}) == {"settings": spread}  # a test-split file names none
    assert runner.RULES["condition_choice"]({**ref, **more})["winner"] == "more"

def test_targets_reads_each_forgotten_class_accuracy_from_the_hits():
    from gslora.metrics.paired import hits_record

    targets = _module(ROOT / "benchmarks" / "targets.py", "targets")
    labels = torch.tensor([2, 0, 1, 1, 2, 0, 1, 2, 2, 1])  # classes 1 and 2 forgotten, in no order
    after = labels.clone()
    after[(labels == 1).nonzero()[:1]] = 0  # one of class 1's four images no longer called 1: 75% still recognised
    after[labels == 2] = 0  # none of class 2's
    hits = hits_record(labels, after, labels=labels, num_classes=3, forget=[1, 2], retain=[0])
    got = targets.forgotten_accuracy({"hits": hits, "forget_classes": ["one", "two"]})
    assert got == [("one", 75.0), ("two", 0.0)]


def test_paired_writes_a_pair_from_the_rows_hits_and_refuses_what_it_cannot_compare_in_one_line(tmp_path, capsys,
                                                                                                  monkeypatch):
    labels = torch.arange(3).repeat_interleave(50)
    right = (torch.arange(150) % 4 != 0) & (labels != 1)
    rows = {"ref": _paired_row(labels, right), "better": _paired_row(labels, right | (labels != 1)),
            "old": {"tasks": [{k: v for k, v in _paired_row(labels, right)["tasks"][0].items() if k != "hits"}]}}
    wrong = _paired_row(labels, right)
    wrong["tasks"][0]["h_mean"] += 1.0  # hits that do not give the row's figures
    rows["wrong"] = wrong
    folder = tmp_path / "bench"
    folder.mkdir()
    (folder / "config.yaml").write_text("methods: {}\n")
    (folder / "results.json").write_text(json.dumps({"methods": rows}))

    paired = _module(ROOT / "benchmarks" / "paired.py", "paired")

    def run(*args) -> tuple[int, str]:  # the script's main in this process (an uncaught error fails the test)
        monkeypatch.setattr(sys, "argv", ["paired.py", *args, "--resamples", "200"])
        try:
            code = paired.main()
        except SystemExit as done:
            code = done.code
        return code, capsys.readouterr().err

    code, err = run(str(folder), "better", "ref")
    assert code == 0, err
    entry = json.loads((folder / "paired.json").read_text())["pairs"]["better | ref"]
    means = {k: r["tasks"][0]["h_mean"] for k, r in rows.items()}
    assert entry["mean_h_difference"] == pytest.approx(means["better"] - means["ref"]) and entry["ci95"][0] > 0
    assert entry["resamples"] == 200 and entry["evaluation_images"] == 150 and "commit" in entry
    for code, err in (run(str(tmp_path), "a", "b"), run(str(folder), "no such row", "ref"),
                      run(str(folder), "ref", "ref"), run(str(folder), "old", "ref"), run(str(folder), "wrong", "ref")):
        assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("paired.py: "), err
    assert list(json.loads((folder / "paired.json").read_text())["pairs"]) == ["better | ref"]  # nothing lost


def test_a_committed_paired_comparison_starts_from_the_committed_rows():
    """Each pair in a benchmark's paired.json (benchmarks/paired.py) scores, before resampling, the mean H the
    committed results.json gives its two rows, and its difference is theirs."""
    found = sorted((ROOT / "benchmarks").glob("*/paired.json"))
    assert found
    for path in found:
        methods = json.loads((path.parent / "results.json").read_text())["methods"]
        for name, pair in json.loads(path.read_text())["pairs"].items():
            for label in (pair["a"], pair["b"]):
                tasks = methods[label]["tasks"]
                assert pair["mean_h"][label] == pytest.approx(sum(t["h_mean"] for t in tasks) / len(tasks), abs=1e-4)
            difference = pair["mean_h"][pair["a"]] - pair["mean_h"][pair["b"]]
            assert pair["mean_h_difference"] == pytest.approx(difference, abs=1e-9), (path.parent.name, name)
            assert pair["ci95"][0] < pair["ci95"][1] and 0 <= pair["share_a_ahead"] <= 1, (path.parent.name, name)
            assert not pair["commit"].endswith(".dirty"), (path.parent.name, name)  # made from a clean checkout


def test_config_overrides_merge_section_by_section_without_touching_the_base():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from common import merged

    base = {"train": {"epochs": 120, "lr": 0.001}, "distill": {"weight": 10.0}, "sizes": [1, 2], "head": None}
    before = json.dumps(base)
    out = merged(base, {"train": {"epochs": 400}, "model": {"width": 192}, "sizes": {"a": 1}, "head": {"m": 0.2}})
    assert out == {"train": {"epochs": 400, "lr": 0.001}, "distill": {"weight": 10.0}, "model": {"width": 192},
                   "sizes": {"a": 1}, "head": {"m": 0.2}}
    out["train"]["lr"] = 1.0
    assert json.dumps(base) == before


def test_a_method_entry_of_the_verification_benchmark_wins_over_its_setting():
    import yaml

    runner = _module(ROOT / "benchmarks" / "verification" / "run.py", "verification_run")
    config = yaml.safe_load((ROOT / "benchmarks" / "verification_faces_validation" / "config.yaml").read_text())
    specs = runner.method_specs(config, config["settings"]["faces_full_validation"])
    assert specs["GS-LoRA++"]["bnd"] == 105.0 and "w_scatter" not in specs["GS-LoRA++"]
    assert specs["GS-LoRA++ bnd auto + scatter 10"]["bnd"] == "auto"
    assert specs["GS-LoRA++ bnd auto + scatter 10"]["w_scatter"] == 10.0
    assert specs["GS-LoRA++ scatter 2"]["beta"] == [0.2, 0.25, 0.25, 0.2]  # the rest still comes from the setting
    assert "GS-LoRA++ bnd auto + scatter 5" not in specs  # a setting's methods list says which run on it
    round2 = config["settings"]["faces_full_validation_order7"]
    assert list(runner.method_specs(config, round2)) == round2["methods"]
    for folder in ("verification", "verification_validation"):  # no entry there names a setting's key: unchanged
        config = yaml.safe_load((ROOT / "benchmarks" / folder / "config.yaml").read_text())
        results = json.loads((ROOT / "benchmarks" / folder / "results.json").read_text())["settings"]
        measured_before = {label for rows in results.values() for label, row in rows["methods"].items()
                           if row["time"] < "2026-12-04T20:13:40"}  # ba7be47: a method's own entry wins
        for setting in config["settings"].values():
            shared = {**setting["gs_lora"], **setting["gs_lora_pp"]}
            for label, spec in runner.method_specs(config, setting).items():
                if spec["name"] in ("gs_lora", "gs_lora_pp"):
                    own = config["methods"][label]
                    assert spec == {**shared, **own} if spec["name"] == "gs_lora_pp" else \
                        {**setting["gs_lora"], **own}
                    if label in measured_before:  # rows measured before the precedence changed
                        assert not (set(own) - {"name"}) & set(shared), (folder, label)


def test_the_face_verification_rule_keeps_guards_ties_and_the_recipe_unless_clearly_beaten():
    rule = _module(ROOT / "benchmarks" / "verification_faces_validation" / "run.py", "faces_validation_run")

    def row(forgotten, retained=30.0, acc_f=0.0, acc_r=60.0):
        return [{"acc_f": acc_f, "acc_r": acc_r,
                 "figures": {str(k): {"tar_far_1e-2": t, "tar_retained_far_1e-2": retained}}}
                for k, t in enumerate(forgotten)]

    def setting(**methods):
        original = {str(k): {"figures": {str(k): {"tar_far_1e-2": 50.0, "tar_retained_far_1e-2": 30.0}}}
                    for k in range(2)}
        return {"original": original, "methods": {label: {"per_request": per} for label, per in methods.items()}}

    choice = rule.choose(setting(**{"GS-LoRA++": row([40, 40]), "a": row([10, 20]), "b": row([9, 20])}))
    assert choice["winner"] == "a" and choice["adopted"] == "a"  # 15 against 14.5: the earlier listed
    guarded = setting(**{"GS-LoRA++": row([40, 40]), "a": row([0, 0], retained=20.0), "b": row([1, 1], acc_f=2.0),
                         "c": row([2, 2], acc_r=50.0), "d": row([30, 30])})
    choice = rule.choose(guarded)  # a loses the retained identities, b keeps a forgotten one, c loses Acc_r
    assert choice["winner"] == "d" and all(choice["rows"][x]["misses"] for x in "abc")
    choice = rule.choose(setting(**{"GS-LoRA++": row([40, 40]), "a": row([39, 38.5])}))
    assert choice["winner"] == "GS-LoRA++" and choice["adopted"] is None  # 1.25 points better: the recipe stays
    choice = rule.choose(setting(**{"GS-LoRA++": row([40, 40], retained=10.0), "a": row([39, 38.5])}))
    assert choice["winner"] == "a" and choice["adopted"] is None  # the only eligible one, but not clearly better
    # the bounds themselves are met: Acc_f 1, Acc_r 0.97x (float32: 388/700 against 400/700), retained TAR 0.9x
    recipe_r, a_r = (float(np.float32(100 * images / 700)) for images in (400, 388))
    edge = setting(**{"GS-LoRA++": row([40, 40], acc_r=recipe_r), "a": row([10, 10], acc_f=1.0, acc_r=a_r,
                                                                         retained=27.0)})
    assert a_r / recipe_r < 0.97  # below in floats, equal in fact
    assert rule.choose(edge)["rows"]["a"]["misses"] == [] and rule.choose(edge)["adopted"] == "a"
    choice = rule.choose(setting(**{"GS-LoRA++": row([40, 40]), "a": row([38, 38])}))
    assert choice["winner"] == "GS-LoRA++" and choice["adopted"] is None  # a 2-point gap is still a tie
    with pytest.raises(SystemExit, match="GS-LoRA\\+\\+ has no rows"):
        rule.choose(setting(a=row([1, 1])))


def test_the_second_face_rule_guards_against_the_model_before_each_request():
    rule = _module(ROOT / "benchmarks" / "verification_faces_validation" / "run.py", "faces_validation_run")

    def method(forgotten, retained, retained_before, acc_r=60.0, acc_r_before=60.0):
        per = [{"acc_f": 0.0, "acc_r": acc_r, "figures": {str(k): {"tar_far_1e-2": t, "tar_retained_far_1e-2": r}}}
               for k, (t, r) in enumerate(zip(forgotten, retained))]
        tasks = [{"acc_r": acc_r, "acc_r_before": acc_r_before, "tar_r": {"far=0.01": r},
                  "tar_r_before": {"far=0.01": b}} for r, b in zip(retained, retained_before)]
        return {"per_request": per, "tasks": tasks}

    original = {str(k): {"figures": {str(k): {"tar_far_1e-2": 50.0, "tar_retained_far_1e-2": 30.0}}}
                for k in range(2)}
    methods = {"GS-LoRA++": method([40, 40], [20, 18], [30, 20]),
               # 25 against 30 of the original on request 1 (0.83x), but 0.93x of its own 27 before that request
               "a": method([5, 5], [27, 25], [30, 27]),
               "b": method([2, 2], [29, 29], [30, 29], acc_r=57.0, acc_r_before=60.0),  # Acc_r 0.95x before
               "c": method([3, 3], [29, 24], [30, 29])}  # retained TAR 0.83x before request 1
    setting = {"original": original, "methods": methods}
    assert rule.choose(setting, "original")["winner"] is None  # round 1's guard: the original model's
    choice = rule.choose(setting, "before")
    assert choice["rows"]["a"]["misses"] == [] and choice["winner"] == "a" and choice["adopted"] == "a"
    assert any("0.97 x 60.00 before" in m for m in choice["rows"]["b"]["misses"])
    assert any("retained TAR 24.00 < 0.9 x 29.00" in m for m in choice["rows"]["c"]["misses"])
    # the before-request Acc_r guard on its own: the same Acc_r as the recipe's, but 0.95x its own value before
    methods["d"] = method([1, 1], [29, 29], [30, 29], acc_r=57.0, acc_r_before=60.0)
    methods["GS-LoRA++"] = method([40, 40], [20, 18], [30, 20], acc_r=57.0)
    choice = rule.choose(setting, "before")
    assert choice["rows"]["d"]["misses"] and choice["winner"] == "a"
    # only the round's candidates compete: a better row outside them is not ranked
    choice = rule.choose(setting, "before", candidates=["GS-LoRA++", "c"])
    assert set(choice["rows"]) == {"GS-LoRA++", "c"} and choice["winner"] is None


def test_the_third_face_rule_ranks_by_the_distance_to_retrain_and_lets_acc_r_fall_only_as_far_as_retrain():
    rule = _module(ROOT / "benchmarks" / "verification_faces_validation" / "run.py", "faces_validation_run")

    def method(forgotten, probe, mia, acc_r=57.0, acc_r_before=60.0, retained=(29, 29)):
        per = [{"acc_f": 0.0, "acc_r": acc_r, "figures": {str(k): {"tar_far_1e-2": t, "tar_retained_far_1e-2": r}},
                "versus_retrain": {"0": {"probe_accuracy": {"difference": probe}, "mia_auc": {"difference": mia}}}
                if k == 0 else {}} for k, (t, r) in enumerate(zip(forgotten, retained))]
        tasks = [{"acc_r": acc_r, "acc_r_before": acc_r_before, "tar_r": {"far=0.01": r},
                  "tar_r_before": {"far=0.01": 30.0}} for r in retained]
        return {"per_request": per, "tasks": tasks}

    original = {str(k): {"figures": {str(k): {"tar_far_1e-2": 50.0, "tar_retained_far_1e-2": 30.0}}}
                for k in range(2)}
    methods = {"GS-LoRA++": method([40, 40], 60.0, -0.2, acc_r=58.0),
               # Acc_r 0.95x before on both requests: Retrain (57.0 on request 0) loses as much, but request 1 has no
               # Retrain, so it misses there
               "a": method([3, 3], 1.0, 0.01),
               "b": method([4, 4], -4.0, 0.04, acc_r=58.2),  # 0.97x before on both: eligible, 0.8 tolerances away
               "c": method([5, 5], -2.0, 0.045, acc_r=58.2),  # 0.9 away: within the 0.2 tie of b, listed later
               "d": method([2, 2], 0.0, 0.0, acc_r=58.2, retained=(29, 20))}  # nearest, but loses retained TAR
    setting = {"original": original, "methods": methods, "references": {"0": {"acc_r": 57.0}}}
    choice = rule.choose(setting, "retrain")
    assert choice["rows"]["a"]["misses"] == ["Acc_r 57.00 < 0.97 x 60.00 before, request 1"]
    assert choice["rows"]["b"]["gap"] == pytest.approx(0.8) and choice["rows"]["c"]["gap"] == pytest.approx(0.9)
    assert choice["rows"]["d"]["misses"] and choice["winner"] == "b" and choice["adopted"] == "b"
    # Acc_r below both 0.97x before and Retrain's: refused on request 0 too
    methods["a"] = method([3, 3], 1.0, 0.01, acc_r=56.0, acc_r_before=60.0)
    assert "Acc_r 56.00 < 0.97 x 60.00 before and < Retrain's 57.00, request 0" in \
        rule.choose(setting, "retrain")["rows"]["a"]["misses"]
    # the nearest eligible one is adopted only within the tolerances
    methods["b"], methods["c"] = method([4, 4], -6.0, 0.0, acc_r=58.2), method([4, 4], 0.0, 0.06, acc_r=58.2)
    choice = rule.choose(setting, "retrain")
    assert choice["winner"] == "b" and choice["adopted"] is None  # 1.2 tolerances: both 1.2, b listed first
    assert "1.20 tolerances from Retrain" in "\n".join(rule.choice_section(choice))
    # and only if it forgets clearly better than the recipe (more than 2 points of mean forgotten TAR)
    methods["b"] = method([39, 39], -1.0, 0.0, acc_r=58.2)
    assert rule.choose(setting, "retrain")["adopted"] is None
    with pytest.raises(SystemExit, match="needs a Retrain"):
        rule.choose({**setting, "references": {}}, "retrain")


def test_the_third_face_rule_at_its_edges():
    rule = _module(ROOT / "benchmarks" / "verification_faces_validation" / "run.py", "faces_validation_run")

    def method(probe, mia, acc_r=58.2, forgotten=(4, 4)):
        per = [{"acc_f": 0.0, "acc_r": acc_r, "figures": {str(k): {"tar_far_1e-2": t, "tar_retained_far_1e-2": 29}},
                "versus_retrain": {"0": {"probe_accuracy": {"difference": probe}, "mia_auc": {"difference": mia}}}
                if k == 0 else {}} for k, t in enumerate(forgotten)]
        tasks = [{"acc_r": acc_r, "acc_r_before": 60.0, "tar_r": {"far=0.01": 29.0}, "tar_r_before": {"far=0.01": 30.0}}
                 for _ in forgotten]
        return {"per_request": per, "tasks": tasks}

    original = {str(k): {"figures": {str(k): {"tar_far_1e-2": 50.0, "tar_retained_far_1e-2": 30.0}}}
                for k in range(2)}

    def choose(methods, retrain_acc_r=57.0, candidates=None):
        setting = {"original": original, "methods": methods, "references": {"0": {"acc_r": retrain_acc_r}}}
        return rule.choose(setting, "retrain", candidates)

    recipe = method(60.0, -0.2, forgotten=(40, 40))
    # the tie: an earlier-listed candidate 0.15 above the best wins, one 0.25 above does not
    assert choose({"GS-LoRA++": recipe, "a": method(4.75, 0.0), "b": method(4.0, 0.0)})["winner"] == "a"
    assert choose({"GS-LoRA++": recipe, "a": method(5.25, 0.0), "b": method(4.0, 0.0)})["winner"] == "b"
    # "listed earlier" is the round's order, not the order of the rows in results.json
    rows = {"GS-LoRA++": recipe, "b": method(4.0, 0.0), "a": method(4.75, 0.0)}
    assert choose(rows, candidates=["GS-LoRA++", "a", "b"])["winner"] == "a"
    # a negative MIA difference counts by its size, and a distance of exactly 1 is within the tolerances
    choice = choose({"GS-LoRA++": recipe, "a": method(1.0, -0.06)})
    assert choice["rows"]["a"]["gap"] == pytest.approx(1.2) and choice["adopted"] is None
    assert choose({"GS-LoRA++": recipe, "a": method(-5.0, 0.01)})["adopted"] == "a"
    # where Retrain keeps more than 0.97x before, 0.97x before is the guard (the lower of the two)
    between = method(0.0, 0.0, acc_r=58.5)  # 0.975x before, below Retrain's 59.0
    assert choose({"GS-LoRA++": recipe, "a": between}, retrain_acc_r=59.0)["rows"]["a"]["misses"] == []
    # Acc_r >= 0.97x the recipe's still holds (0.962x the recipe's 60.5, though 0.97x before)
    assert choose({"GS-LoRA++": method(60.0, -0.2, acc_r=60.5, forgotten=(40, 40)), "a": method(0.0, 0.0)}
                  )["rows"]["a"]["misses"] == ["Acc_r 58.20 < 0.97 x 60.50 on request 0",
                                               "Acc_r 58.20 < 0.97 x 60.50 on request 1"]
    # a candidate without a difference from Retrain is refused, not ranked
    missing = method(0.0, 0.0)
    missing["per_request"][0]["versus_retrain"] = {}
    choice = choose({"GS-LoRA++": recipe, "a": missing})
    assert choice["rows"]["a"]["misses"] == ["no difference from Retrain on request 0"]
    assert choice["winner"] == "GS-LoRA++"


def test_the_committed_face_choice_file_is_what_its_rule_gives():
    import yaml

    rule = _module(ROOT / "benchmarks" / "verification_faces_validation" / "run.py", "faces_validation_run")
    folder = ROOT / "benchmarks" / "verification_faces_validation"
    config = yaml.safe_load((folder / "config.yaml").read_text())
    settings = json.loads((folder / "results.json").read_text())["settings"]
    assert rule.choice_md(settings, config) == (folder / "choice.md").read_text()


def test_the_shipped_face_config_is_the_setting_the_face_rule_adopted():
    """configs/faces_forget.yaml carries what round 3 adopted, with the reference's face values of the benchmark."""
    import yaml

    runner = _module(ROOT / "benchmarks" / "verification" / "run.py", "verification_run")
    config = yaml.safe_load((ROOT / "benchmarks" / "verification" / "config.yaml").read_text())
    setting = config["settings"]["faces_full_new_base"]
    shipped = yaml.safe_load((ROOT / "configs" / "faces_forget.yaml").read_text())
    assert shipped["method"] == runner.method_specs(config, setting)["GS-LoRA++ bnd auto + scatter 1"]
    assert shipped["train"] == setting["forget"]["train"]
    assert {k: v for k, v in setting["forget"]["sequence"].items() if k != "order_seed"} == shipped["sequence"]
    choice = (ROOT / "benchmarks" / "verification_faces_validation" / "choice.md").read_text()
    assert "Adopted: GS-LoRA++ bnd auto + scatter 1." in choice


def test_the_verification_4shot_row_runs_the_shipped_fewshot_config():
    """The verification benchmark measures configs/fewshot_forget.yaml against Retrain: its row for that setting is the
    shipped method with the shipped training, on the shipped sequence, so the two cannot drift apart."""
    import yaml

    runner = _module(ROOT / "benchmarks" / "verification" / "run.py", "verification_run")
    config = yaml.safe_load((ROOT / "benchmarks" / "verification" / "config.yaml").read_text())
    setting = config["settings"]["fashion_4shot"]
    shipped = yaml.safe_load((ROOT / "configs" / "fewshot_forget.yaml").read_text())
    spec = runner.method_specs(config, setting)["GS-LoRA++ 4-shot setting (round 8)"]
    assert {**setting["forget"]["train"], **spec.pop("train")} == shipped["train"]
    assert spec == shipped["method"]
    assert {k: v for k, v in setting["forget"]["sequence"].items() if k != "order_seed"} == shipped["sequence"]


def _setting_in_force(rounds: tuple[str, ...]) -> tuple[str, dict, dict]:
    """The setting in force after validation rounds, each decided by the rule its config names (``targets``:
    run_methods.fewshot_choice, tar_choice, paired_choice, guard_choice, seed_choice or condition_choice) on its
    benchmark's committed rows: the round's winner, else its reference (its config's first row; under seed_choice, rows
    are named '<setting> seed <n>' and a setting's entry is its rows' without the training seed; under
    condition_choice, the config's first setting); every later round's reference must be that setting, on the same
    sequence.
    Returns its label, its method entry and the benchmark's forget section."""
    import yaml

    rules = _module(ROOT / "benchmarks" / "run_methods.py", "run_methods")
    spec = forget = None
    for name in rounds:
        folder = ROOT / "benchmarks" / name
        config = yaml.safe_load((folder / "config.yaml").read_text())
        results = json.loads((folder / "results.json").read_text())
        assert config["targets"] in ("fewshot_choice", "tar_choice", "paired_choice", "guard_choice",
                                     "seed_choice", "condition_choice"), name
        choice = getattr(rules, config["targets"])(results["methods"])
        assert choice == results["targets"], name
        if config["targets"] == "condition_choice":  # every setting at every seed on every condition (its run.py)
            runner = _module(folder / "run.py", f"{name}_run")
            rows = {label for condition in config["conditions"] for label in runner.condition_rows(config, condition)}
            assert set(results["methods"]) == rows, name
            entries = config["settings"]
        else:
            assert set(results["methods"]) == set(config["methods"]), name
            entries = config["methods"]
        if config["targets"] == "seed_choice":
            entries = {}
            for row, entry in config["methods"].items():
                setting, seed = rules.setting_and_seed(row)
                unseeded = {**entry, "train": {k: v for k, v in entry["train"].items() if k != "seed"}}
                unseeded = {k: v for k, v in unseeded.items() if v != {}}
                assert entries.setdefault(setting, unseeded) == unseeded and int(seed) == entry["train"]["seed"], row
        reference = next(iter(entries))
        assert choice["reference"] == reference, name
        if spec is not None:
            assert (entries[reference], _resolved(config["forget"])) == (spec, forget), name
        label = choice["winner"] or reference
        spec, forget = entries[label], _resolved(config["forget"])
    return label, spec, forget


def _resolved(forget: dict) -> dict:
    """A benchmark's forget section with its sequence's defaults written out (a default left unsaid is the same
    sequence)."""
    from gslora.config import SequenceConfig, from_dict, to_dict

    return {**forget, "sequence": to_dict(from_dict(SequenceConfig, forget["sequence"]))}


@pytest.mark.parametrize(("rounds", "shipped_file", "tests"), [
    (("faces_4shot_new_base_validation", "faces_4shot_new_base_validation_round2",
      "faces_4shot_new_base_validation_round3", "faces_4shot_new_base_validation_round4"),
     "faces_fewshot_forget.yaml",
     ("faces_4shot_new_base",)),
    (("fashion_mnist_4shot_levers_validation_round3", "fashion_mnist_4shot_levers_validation_round4",
      "fashion_mnist_4shot_levers_validation_round5", "fashion_mnist_4shot_levers_validation_round6",
      "fashion_mnist_4shot_levers_validation_round7", "fashion_mnist_4shot_levers_validation_round8",
      "fashion_mnist_4shot_levers_validation_round9"),
     "fewshot_forget.yaml",
     ("fashion_mnist_baselines_4shot", "fashion_mnist_4shot_other_order", "fashion_mnist_4shot_draws"))])
def test_a_shipped_fewshot_config_is_what_its_validation_rounds_chose(rounds, shipped_file, tests):
    """configs/<shipped_file> carries the setting the validation rounds' rule left in force, with those benchmarks'
    shared training values, and each test benchmark measured exactly that row."""
    import yaml

    label, entry, forget = _setting_in_force(rounds)
    spec = dict(entry)
    train = spec.pop("train", {})
    shipped = yaml.safe_load((ROOT / "configs" / shipped_file).read_text())
    assert shipped["train"] == {**forget["train"], **train}
    assert shipped["method"] == spec
    shipped_sequence = _resolved({"sequence": shipped["sequence"]})["sequence"]
    assert {k: v for k, v in forget["sequence"].items() if k != "order_seed"} == {
        k: v for k, v in shipped_sequence.items() if k != "order_seed"}
    for name in tests:
        test = yaml.safe_load((ROOT / "benchmarks" / name / "config.yaml").read_text())
        assert test.get("methods", test.get("settings"))[label] == entry, name  # settings: a conditions runner


def test_the_first_4shot_face_round_chose_over_bnd_auto():
    results = json.loads((ROOT / "benchmarks" / "faces_4shot_new_base_validation" / "results.json").read_text())
    assert results["targets"]["reference"] == "gs_lora bnd auto" and results["targets"]["winner"]


def test_the_face_choice_file_waits_for_every_candidate_and_says_which_round_decides():
    import yaml

    rule = _module(ROOT / "benchmarks" / "verification_faces_validation" / "run.py", "faces_validation_run")
    folder = ROOT / "benchmarks" / "verification_faces_validation"
    config = yaml.safe_load((folder / "config.yaml").read_text())
    settings = json.loads((folder / "results.json").read_text())["settings"]
    deciding = config["settings"][rule.DECIDES]["methods"]
    partial = {**settings, rule.DECIDES: {**settings["faces_full_validation"], "methods": {
        label: row for label, row in settings["faces_full_validation"]["methods"].items() if label == deciding[0]}}}
    text = rule.choice_md(partial, config)
    assert f"Incomplete: no rows yet for {', '.join(deciding[1:])}; no outcome." in text
    assert "Adopted by this round (it decided before round 2 existed): nothing" in text  # round 1 as it ended
    assert "Adopted by this round (it decided before round 3 existed): nothing" in text  # round 2 as it ended
    assert "Adopted:" not in text  # nothing is adopted from an incomplete round


def test_verification_reuses_reference_rows_only_on_the_very_base_they_were_measured_on():
    """The Retrain and original rows of a setting are reused by a later run only if its base is the same model: the
    same config pre-trained again under other CPU pins (same key, other weights) is another base, and its original
    rows must be measured again."""
    runner = _module(ROOT / "benchmarks" / "verification" / "run.py", "verification_run")
    results = json.loads((ROOT / "benchmarks" / "verification" / "results.json").read_text())
    earlier = results["settings"]["fashion_4shot"]
    pre = dict(earlier["pretrain"])
    assert runner.reusable(earlier, pre, earlier["config"])
    assert runner.reusable(earlier, {**pre, "seconds": pre["seconds"] + 60, "time": "later"}, earlier["config"])
    assert not runner.reusable(earlier, {**pre, "test_acc": pre["test_acc"] + 0.12}, earlier["config"])
    assert not runner.reusable(earlier, {**pre, "key": "another"}, earlier["config"])
    assert not runner.reusable(earlier, pre, {**earlier["config"], "verify": {}})
    assert not runner.reusable({}, pre, earlier["config"])


def test_a_verification_report_without_retrain_shows_no_retrain_rows():
    runner = _module(ROOT / "benchmarks" / "verification" / "run.py", "verification_run")
    results = json.loads((ROOT / "benchmarks" / "verification" / "results.json").read_text())
    setting = {**results["settings"]["faces_full_new_base"], "references": {}}
    text = runner.report({"settings": {"faces_full_new_base": setting}})
    assert "No Retrain in this setting" in text and "Retrain (converged) |" not in text
    assert "Difference from Retrain" not in text and "| Original |" in text and "| GS-LoRA++ |" in text
    with_retrain = runner.report({"settings": {"faces_full": results["settings"]["faces_full"]}})
    assert "| Retrain (converged) |" in with_retrain and "Difference from Retrain" in with_retrain


def test_a_verification_report_with_retrain_for_the_first_requests_only_shows_dashes_after():
    runner = _module(ROOT / "benchmarks" / "verification" / "run.py", "verification_run")
    results = json.loads((ROOT / "benchmarks" / "verification" / "results.json").read_text())
    full = results["settings"]["faces_full"]
    methods = {label: {**row, "per_request": [{**r, "versus_retrain": r["versus_retrain"] if r["request"] == 0 else {}}
                                              for r in row["per_request"]]} for label, row in full["methods"].items()}
    setting = {**full, "references": {"0": full["references"]["0"]}, "methods": methods}
    text = runner.report({"settings": {"faces_full": setting}})
    assert "for the first 1 of the 4 requests only" in text
    retrain_rows = [line for line in text.splitlines() if line.startswith("| Retrain (converged) |")]
    assert len(retrain_rows) == 3  # right after each request, after the last one, face verification
    first, after_last, faces = (row.split(" | ")[1:] for row in retrain_rows)
    assert first[0] != "-" and [c.strip(" |") for c in first[1:]] == ["-", "-", "-"]
    assert all(c.strip(" |") == "- / - / -" for c in after_last)  # no Retrain after the last request
    assert faces[0].split(";")[0] != "- / -" and all(c.startswith("- / -") for c in faces[1:])
    difference = text.split("Difference from Retrain")[1].splitlines()
    gs_lora = next(line for line in difference if line.startswith("| GS-LoRA |")).split(" | ")[1:]
    assert "-" not in gs_lora[0].split(" / ")[:2] and all(c.strip(" |") == "- / - / -" for c in gs_lora[1:])


def test_retrain_requests_reads_true_false_or_a_count():
    runner = _module(ROOT / "benchmarks" / "verification" / "run.py", "verification_run")
    assert runner.retrain_requests({}, 4) == 4 and runner.retrain_requests({"retrain": False}, 4) == 0
    assert runner.retrain_requests({"retrain": 1}, 4) == 1 and runner.retrain_requests({"retrain": 9}, 4) == 4
    with pytest.raises(SystemExit, match="retrain must be true, false or a number"):
        runner.retrain_requests({"retrain": "yes"}, 4)


@pytest.mark.xfail(strict=True, reason=(
    "known miss: re-created with the STRICT pins on 2026-12-07 (validation base 86.47%), the shipped setting (weight "
    "decay 0.5) leaves Acc_f 5.75 on request 1 and fails the second round's guards; its rule now picks `bnd: auto` + "
    "augment at the recipe's weight decay 0.05, 1.64 mean H behind (paired 95% interval -2.07 .. -1.14), so the "
    "interval does not hold 0 either (see the next test for the rule that keeps the shipped setting)"))
def test_the_fashion_third_round_starts_from_a_setting_the_second_round_does_not_clearly_beat():
    """fashion_mnist_4shot_levers_validation's rule (its config): the highest mean H among the rows with Acc_f and
    Acc_o <= 2 on every request. On its first run (base 86.13%) that was the third round's reference (weight decay
    0.5); re-created on a base pre-trained again (86.23%, 2026-12-05) the rule picks weight decay 0.2 by 0.36 mean H.
    The reference, with the same entry and sequence, must still pass the rule's guards, and no row the rule would
    pick may be clearly ahead of it (its paired 95% interval in paired.json holds 0)."""
    import yaml

    below = _module(ROOT / "benchmarks" / "common.py", "common").below
    second = ROOT / "benchmarks" / "fashion_mnist_4shot_levers_validation"
    results = json.loads((second / "results.json").read_text())
    passing = {name: sum(t["h_mean"] for t in row["tasks"]) / len(row["tasks"])
               for name, row in results["methods"].items()
               if all(not below(2.0, t["acc_f"]) and not below(2.0, t.get("acc_o") or 0.0) for t in row["tasks"])}
    chosen = max(passing, key=passing.get)
    config2 = yaml.safe_load((second / "config.yaml").read_text())
    config3 = yaml.safe_load((ROOT / "benchmarks" / "fashion_mnist_4shot_levers_validation_round3" / "config.yaml")
                             .read_text())
    reference = next(iter(config3["methods"]))
    assert reference in passing
    if chosen != reference:  # the interval from the rows' own hits
        from gslora.metrics.paired import pair, rows_h

        scored = rows_h({k: [t["hits"] for t in results["methods"][k]["tasks"]] for k in (chosen, reference)},
                        resamples=2000)
        low, high = pair({k: v[0] for k, v in scored.items()}, chosen, reference)["ci95"]
        assert low <= 0 < high, (low, high)
    assert config3["methods"][reference] == config2["methods"][reference] and config3["forget"] == config2["forget"]


def test_the_paired_rule_applied_to_the_fashion_second_round_keeps_the_shipped_fewshot_setting():
    """The rule in force since the fourth round (run_methods.paired_choice), applied to the second round's rows with the
    shipped setting as the reference: no row that passes the guards (Acc_f and Acc_o <= 2 on every request, Acc_r after
    the fourth request >= 0.90x) is clearly ahead of it, so the setting shipped until round 8 stayed, though it fails
    the guards on the re-created base (the strict xfail above; round 8's rule over seeds replaced it)."""
    import yaml

    rules = _module(ROOT / "benchmarks" / "run_methods.py", "run_methods")
    second = ROOT / "benchmarks" / "fashion_mnist_4shot_levers_validation"
    methods = json.loads((second / "results.json").read_text())["methods"]
    reference = next(iter(yaml.safe_load((ROOT / "benchmarks" / "fashion_mnist_4shot_levers_validation_round5"
                                          / "config.yaml").read_text())["methods"]))
    choice = rules.paired_choice({reference: methods[reference], **methods})
    assert choice["reference"] == reference and choice["winner"] is None, choice["winner"]
    assert any(row["passes"] for name, row in choice["rows"].items() if name != reference)  # a real contest


def test_the_fashion_probe_round_adopts_only_a_guarded_candidate_clearly_closer_to_retrain():
    rule = _module(ROOT / "benchmarks" / "verification_validation" / "run.py", "verification_validation_run")

    def row(probe: list[float], mia: float = 0.0, acc_f: float = 0.0, acc_r: float = 90.0) -> dict:
        versus = [{str(k): {"probe_accuracy": {"difference": p}, "mia_auc": {"difference": mia}}
                   for k, p in enumerate(probe[:i + 1])} for i in range(2)]
        tasks = [{"task": i, "acc_f": acc_f, "acc_r": acc_r, "acc_r_before": 90.0, "h_mean": 90.0, "h_exact": 90.0}
                 for i in range(2)]
        return {"tasks": tasks, "per_request": [{"versus_retrain": v} for v in versus]}

    def winner(**candidates) -> str | None:
        rows = {"GS-LoRA++": row([10.0, 10.0]), "GS-LoRA++ absorb 5": row([9.0, 9.0]), **candidates}
        return rule.choose({"methods": rows})["winner"]

    assert rule.probe_score(row([10.0, -4.0])) == pytest.approx((10 + 10 + 4) / 3)  # every request so far, absolute
    auto, one, three = rule.CANDIDATES
    assert winner(**{one: row([5.0, 5.0])}) == one  # 3.5 below absorb 5's 9
    assert winner(**{one: row([6.5, 6.5])}) is None  # 2.5 below: not enough
    assert winner(**{one: row([-1.0, 1.0]), three: row([0.5, 0.5])}) == three  # the lowest score
    assert winner(**{one: row([1.0, 1.0], mia=0.06)}) is None  # MIA off Retrain's by more than 0.05
    assert winner(**{one: row([1.0, 1.0], acc_f=1.5)}) is None  # the full-data targets guard
    assert winner(**{one: row([1.0, 1.0], acc_r=87.0)}) is None  # Acc_r 0.967x before
    assert winner(**{"GS-LoRA": row([0.0, 0.0])}) is None  # only the round's candidates compete

    def winner3(**candidates) -> str | None:  # round 3: its own candidates, round 2's winner the one reference
        rows = {rule.REFERENCES_3[0]: row([8.0, 8.0]), **candidates}
        return rule.choose({"methods": rows}, rule.CANDIDATES_3, rule.REFERENCES_3)["winner"]

    committed = json.loads((ROOT / "benchmarks" / "verification_validation" / "results.json").read_text())
    text = (ROOT / "benchmarks" / "verification_validation" / "choice.md").read_text()
    assert rule.choice_text(committed["settings"]) == text and "Winner: none (round 2's winner stays)." in text
    hold1, hold3, half = rule.CANDIDATES_3
    assert rule.REFERENCES_3 == [one]
    assert winner3(**{hold1: row([4.5, 4.5])}) == hold1 and winner3(**{hold1: row([5.5, 5.5])}) is None
    assert winner3(**{hold1: row([4.0, 4.0]), half: row([1.0, -1.0])}) == half
    assert winner3(**{hold3: row([0.0, 0.0], acc_f=1.5)}) is None and winner3(**{auto: row([0.0, 0.0])}) is None


def test_make_bench_all_runs_every_benchmark_folder():
    """`make bench-all` says it re-creates every benchmark: its list names each folder benchmarks/run.py accepts."""
    text = re.sub(r"\\\n", " ", (ROOT / "Makefile").read_text())
    listed = re.search(r"^BENCHMARKS := (.*)$", text, flags=re.M).group(1).split()
    folders = {p.name for p in (ROOT / "benchmarks").iterdir()
               if p.is_dir() and ((p / "config.yaml").is_file() or (p / "run.py").is_file())}
    assert sorted(listed) == sorted(folders)


def test_the_verification_demo_settings_run_what_make_demo_runs():
    """The verification benchmark's `demo` setting measures the demo against Retrain: its base is the demo's own
    pre-training config and its requests, training and GS-LoRA values are configs/demo_forget.yaml's, so the two
    cannot drift apart; `demo_order7` differs from it only in the class order and the rows it runs."""
    import yaml

    settings = yaml.safe_load((ROOT / "benchmarks/verification/config.yaml").read_text())["settings"]
    demo = yaml.safe_load((ROOT / "configs/demo_forget.yaml").read_text())
    setting = settings["demo"]
    assert (ROOT / "benchmarks" / setting["base"]).resolve() == ROOT / "configs/demo_pretrain.yaml"
    assert setting["forget"] == {key: demo[key] for key in ("data", "sequence", "train")}
    assert {"name": "gs_lora", **setting["gs_lora"]} == demo["method"]
    other = settings["demo_order7"]
    assert other["forget"]["sequence"].pop("order_seed") == 7
    assert {**other, "methods": None} == {**setting, "methods": None}
