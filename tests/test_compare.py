"""``gslora compare`` and ``gslora.engine.compare`` on real Fashion-MNIST data."""

from __future__ import annotations

import importlib
import json

import pytest
import yaml

from gslora.cli import main
from gslora.config import from_dict
from gslora.engine import CompareConfig
from gslora.errors import GSLoRAError

SHARED = {"sequence": {"requests": [["Bag", "Sneaker"]], "ratio": 0.25},
          "train": {"epochs": 2, "batch_size": 48, "lr": 0.01, "device": "cpu"},
          "verify": {"max_images": 200, "bootstrap": 50, "relearn_max_steps": 20}}  # runs; its figures are not checked


def _config(tmp_path, base_checkpoint, data, methods) -> str:
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump({"checkpoint": str(base_checkpoint), "data": {"dataset": str(data)}, **SHARED,
                                    "methods": methods}))
    return str(path)


@pytest.fixture(scope="module")
def comparison(base_checkpoint, fashion_subset, tmp_path_factory):
    data, _ = fashion_subset
    tmp = tmp_path_factory.mktemp("compare")
    config = _config(tmp, base_checkpoint, data, {
        "GS-LoRA": {"name": "gs_lora", "bnd": 10},
        "RL*": {"name": "random_label", "train": {"lr": 0.0003}},
        "broken": {"name": "gs_lora", "beta": 1000.0, "bnd": 1e38},
    })
    out = tmp / "out"
    assert main(["compare", "--config", config, "--method-names", "ssd", "--out", str(out), "-q"]) == 0
    return out, config


def test_compare_writes_one_row_per_method_with_the_same_requests(comparison, tmp_path):
    out, _ = comparison
    result = json.loads((out / "comparison.json").read_text())
    assert list(result["methods"]) == ["GS-LoRA", "RL*", "broken", "ssd"]
    assert {"config", "version", "hardware"} <= set(result)
    gs, rl, ssd = (result["methods"][k] for k in ("GS-LoRA", "RL*", "ssd"))
    for r in (gs, rl, ssd):
        [task] = r["tasks"]
        assert task["forget_classes"] == ["Bag", "Sneaker"] and task["seconds"] > 0
        assert {"h_mean", "acc_r", "acc_f", "h_exact"} <= set(task)
    assert gs["tasks"][0]["acc_f_before"] == rl["tasks"][0]["acc_f_before"] == ssd["tasks"][0]["acc_f_before"]
    assert gs["trainable_ratio"] < 0.1 < 0.9 < rl["trainable_ratio"]
    assert rl["tasks"][0]["acc_f"] < 0.5 * rl["tasks"][0]["acc_f_before"]  # relabelling forgets
    manifest = json.loads((out / "runs" / "RL_star" / "manifest.json").read_text())
    assert manifest["requests"][0]["train"]["lr"] == 0.0003  # the method's train override
    assert "the loss became non-finite" in result["methods"]["broken"]["error"]
    table = (out / "comparison.md").read_text()
    assert "| method | Bag + Sneaker (0) | s / request | parameters |" in table
    assert "| RL* | " in table and "| broken | failed: " in table and "| H_exact | " in table
    png = (out / "comparison.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from gslora.report import plot_comparison

    widths = []
    for n in (1, 3):  # one panel per request: more requests, a wider plot
        shown = {**result, "methods": {k: {**v, "tasks": [{**t, "task": i} for i in range(n) for t in v["tasks"][:1]]}
                                       for k, v in result["methods"].items()}}
        plot_comparison(shown, tmp_path / f"c{n}.png")
        widths.append(int.from_bytes((tmp_path / f"c{n}.png").read_bytes()[16:20], "big"))
    assert widths[1] > 1.5 * widths[0]


def test_rerunning_some_methods_keeps_the_others(comparison, capsys):
    out, config = comparison
    before = json.loads((out / "comparison.json").read_text())["methods"]
    _expect_error = main(["compare", "--config", config, "--out", str(out), "-q"])
    assert _expect_error == 2 and "already holds a comparison" in capsys.readouterr().err
    assert main(["compare", "--config", config, "--method-names", "ssd", "--methods", "ssd", "--out", str(out),
                 "-q"]) == 0
    after = json.loads((out / "comparison.json").read_text())["methods"]
    assert after["GS-LoRA"] == before["GS-LoRA"] and after["RL*"] == before["RL*"]
    assert after["ssd"]["tasks"][0]["acc_f"] == before["ssd"]["tasks"][0]["acc_f"]  # deterministic


def _copy(comparison, tmp_path):
    import shutil

    from gslora.config import load_yaml

    out, config_path = comparison
    shutil.copytree(out, tmp_path / "out")
    raw = load_yaml(config_path)
    config = from_dict(CompareConfig, {**raw, "methods": {**raw["methods"], "ssd": {"name": "ssd"}}})
    return tmp_path / "out", config, json.loads((out / "comparison.json").read_text())["methods"]


def test_disjoint_method_runs_of_one_comparison_compose(comparison, tmp_path, monkeypatch):
    """Two processes running different --methods of one comparison at once keep each other's rows: a row that
    another process commits while this one runs is in the files this one writes at its end."""
    engine = importlib.import_module("gslora.engine.compare")  # the package exports the function of that name

    out, config, before = _copy(comparison, tmp_path)
    real = engine.run_forgetting

    def run_while_another_process_commits(forget_config, run_dir, **kwargs):
        engine.commit_row(config, out, "RL*", {**before["RL*"], "time": "the other process"})
        return real(forget_config, run_dir, **kwargs)

    monkeypatch.setattr(engine, "run_forgetting", run_while_another_process_commits)
    result = engine.compare(config, out, only=["ssd"])
    on_disk = json.loads((out / "comparison.json").read_text())["methods"]
    assert list(on_disk) == ["GS-LoRA", "RL*", "broken", "ssd"] == list(result["methods"])
    assert on_disk["RL*"]["time"] == "the other process" == result["methods"]["RL*"]["time"]
    assert on_disk["ssd"]["time"] != before["ssd"]["time"] and on_disk["GS-LoRA"] == before["GS-LoRA"]


def test_an_interrupted_comparison_keeps_the_methods_that_finished(comparison, tmp_path, monkeypatch):
    engine = importlib.import_module("gslora.engine.compare")  # the package exports the function of that name

    out, config, before = _copy(comparison, tmp_path)
    real = engine.run_forgetting

    def interrupted_at_ssd(forget_config, run_dir, **kwargs):
        if forget_config.method["name"] == "ssd":
            raise KeyboardInterrupt
        return real(forget_config, run_dir, **kwargs)

    monkeypatch.setattr(engine, "run_forgetting", interrupted_at_ssd)
    with pytest.raises(KeyboardInterrupt):
        engine.compare(config, out, only=["broken", "ssd"])
    on_disk = json.loads((out / "comparison.json").read_text())["methods"]
    assert on_disk["broken"]["time"] != before["broken"]["time"]  # re-run and committed before the interruption
    assert on_disk["ssd"] == before["ssd"] and on_disk["RL*"] == before["RL*"]


def test_an_empty_method_list_runs_nothing_and_rewrites_the_files_from_the_rows_measured(comparison, tmp_path,
                                                                                         monkeypatch):
    """``--methods ""`` (only=[]): after disjoint processes finished their rows, the comparison files are written
    again from those rows, and no method runs."""
    engine = importlib.import_module("gslora.engine.compare")  # the package exports the function of that name

    out, config, before = _copy(comparison, tmp_path)
    (out / "comparison.md").unlink()
    monkeypatch.setattr(engine, "run_forgetting", lambda *a, **k: pytest.fail("no method may run"))
    result = engine.compare(config, out, only=[])
    assert result["methods"] == before == json.loads((out / "comparison.json").read_text())["methods"]
    assert (out / "comparison.md").is_file()


@pytest.mark.parametrize("methods, extra, message", [
    ({"a": {"name": "nope"}}, [], "methods.a: unknown method 'nope'"),
    ({"a": {"name": "ewc", "penalty": -1}}, [], "methods.a: method.penalty=-1"),
    ({"a": {"name": "lwf", "train": {"lr": -1}}}, [], "methods.a: train.lr=-1"),
    ({"a": {"name": "lwf"}}, ["--methods", "b"], "--methods ['b']: not in the config's methods ['a']"),
    ({}, [], "methods: name at least one method"),
])
def test_bad_comparisons_exit_2_and_write_nothing(base_checkpoint, fashion_subset, tmp_path, capsys, methods, extra,
                                                  message):
    data, _ = fashion_subset
    config = _config(tmp_path, base_checkpoint, data, methods)
    assert main(["compare", "--config", config, "--out", str(tmp_path / "out"), *extra, "-q"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_labels_that_collide_as_directory_names_are_refused():
    with pytest.raises(GSLoRAError, match="map to the same run directory names"):
        from_dict(CompareConfig, {"methods": {"a*": {"name": "l2"}, "a_star": {"name": "l2"}}})


def test_shipped_comparison_config_is_valid():
    from pathlib import Path

    from gslora.config import load_yaml

    config = from_dict(CompareConfig, load_yaml(Path(__file__).resolve().parents[1] / "configs" / "compare_demo.yaml"))
    assert list(config.methods) == ["GS-LoRA", "EWC*", "LwF", "DER++", "SSD"]
    assert config.forget_config("EWC*").train.lr == 0.0001 and config.forget_config("GS-LoRA").train.lr == 0.01


def test_a_request_refused_by_the_first_method_leaves_no_output(base_checkpoint, fashion_subset, tmp_path, capsys):
    data, _ = fashion_subset
    config = _config(tmp_path, base_checkpoint, data, {"a": {"name": "lwf"}})
    assert main(["compare", "--config", config, "--set", "sequence.requests=[[Nope]]", "--out",
                 str(tmp_path / "out"), "-q"]) == 2
    assert "Nope" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_request_of_many_classes_keeps_its_column_header_short(comparison):
    from gslora.report import comparison_markdown

    out, _ = comparison
    result = json.loads((out / "comparison.json").read_text())
    many = [f"person_{i}" for i in range(20)]
    for row in result["methods"].values():
        for task in row["tasks"]:
            task["forget_classes"] = many
    header = comparison_markdown(result).splitlines()[6]
    assert "| person_0 + person_1 + person_2 + 17 more (0) |" in header and "person_3" not in header


def test_each_request_keeps_its_hits_and_the_table_says_how_far_each_method_is_from_the_first(comparison):
    """The per-image hits a row keeps give its request figures back, and comparison.md states each method's mean-H
    difference from the first with its paired interval (what benchmarks/paired.py and the paired choice rule read)."""
    from gslora.metrics.paired import against_first, hits_h

    out, _ = comparison
    methods = json.loads((out / "comparison.json").read_text())["methods"]
    for label in ("GS-LoRA", "RL*", "ssd"):
        [task] = methods[label]["tasks"]
        assert sum(task["hits"]["class_counts"]) == 2000 and task["hits"]["forget"] == [8, 7]
        [figures] = hits_h([task["hits"]], resamples=0)[1]
        for key, value in figures.items():
            assert value == pytest.approx(task[key], abs=1e-4), (label, key)
    pairs = against_first(methods)
    assert list(pairs) == ["RL*", "ssd"]  # "broken" failed: no row
    difference = methods["RL*"]["tasks"][0]["h_mean"] - methods["GS-LoRA"]["tasks"][0]["h_mean"]
    assert pairs["RL*"]["mean_h_difference"] == pytest.approx(difference)
    low, high = pairs["RL*"]["ci95"]
    assert low < high
    table = (out / "comparison.md").read_text()
    assert "| method | mean H | minus GS-LoRA | 95% interval | resamples strictly ahead |" in table
    h = methods["RL*"]["tasks"][0]["h_mean"]
    assert f"| RL* | {h:.2f} | {difference:+.2f} | {low:+.2f} .. {high:+.2f} |" in table
