"""The README's commands and code blocks, and every example under configs/, run as a user would run them, top to
bottom in one directory, with smaller models and fewer steps (the overrides below) so the suite stays fast. A shipped
example that breaks fails here."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

from gslora.cli import main
from tests.conftest import FASHION_ROOT, SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

#: appended to each kind of command: the same commands, smaller (later flags override earlier ones)
SMALL = {
    "pretrain": ["--depth", "1", "--width", "32", "--heads", "2", "--epochs", "1", "--set", "train.warmup_epochs=1"],
    "pretrain --task detection": ["--epochs", "1", "--set", "data.scenes_train=240", "--set", "data.scenes_test=60",
                                  "--set", "model.d_model=32", "--set", "model.ffn_dim=64", "--set", "model.heads=2",
                                  "--set", "model.num_queries=6", "--set", "model.feature_levels=1"],
    "forget": ["--epochs", "1", "--set", "verify.max_images=100", "--set", "verify.bootstrap=20",
               "--set", "verify.relearn_max_steps=10"],
    "forget detection": ["--epochs", "1", "--set", "train.min_steps=10", "--set", "data.scenes_train=240",
                         "--set", "data.scenes_test=60"],
    "compare": ["--epochs", "1", "--set", "train.min_steps=20", "--set", "verify.max_images=100",
                "--set", "verify.bootstrap=20", "--set", "verify.relearn_max_steps=10"],
    "verify": ["--set", "verify.max_images=100", "--set", "verify.bootstrap=20", "--set",
               "verify.relearn_max_steps=10"],
    # the few-shot face config's 4 requests, the second comparison's 2 and the Python comparison's 2 (small_python):
    # fewer requests through the same code (per-request lists and later requests run in the commands before them)
    "forget faces few-shot": ["--set", "sequence.num_requests=2"],
    "compare --num-requests": ["--set", "sequence.num_requests=1"],
}


def small_python(code: str, data: str) -> str:
    """The same idea for the Python blocks, as text substitutions (each must apply: the README changed if not)."""
    for a, b in (("epochs=3", "epochs=1"), ("epochs=20, min_steps=960", "epochs=1, min_steps=10"),
                 ('dataset="fashion-mnist"', f"dataset={data!r}"),
                 ("max_images=1000, relearn_max_steps=200", "max_images=100, relearn_max_steps=10, bootstrap=20"),
                 ('DetectionDataConfig(dataset="fashion-mnist-scenes")',
                  'DetectionDataConfig(dataset="fashion-mnist-scenes", scenes_train=240, scenes_test=60)'),
                 ('"checkpoint": "base/"}', f'"checkpoint": "base/", "data": {{"dataset": {data!r}}}, '
                  '"train": {"epochs": 1, "min_steps": 20, "batch_size": 48, "lr": 0.01}, '
                  '"sequence": {"num_requests": 1, "classes_per_request": 2, "ratio": 0.1}, '
                  '"verify": {"max_images": 100, "bootstrap": 20, "relearn_max_steps": 10}}')):
        code = code.replace(a, b)
    return code


def test_readme_has_no_unfilled_placeholder():
    """An UPPER_CASE word outside code (`...` spans and fenced blocks name real constants) is a placeholder."""
    prose = re.sub(r"```.*?```|`[^`]*`", "", README, flags=re.S)
    assert not re.findall(r"\b[A-Z]{3,}_[A-Z_]{3,}\b", prose)


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def commands(block: str) -> list[list[str]]:
    """The ``gslora`` command lines of a bash block (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in text.splitlines():
        line = line.split(" #")[0].strip()
        if line.startswith("gslora "):
            out.append(shlex.split(line)[1:])
    return out


def smaller(argv: list[str], data: str) -> list[str]:
    """``argv`` on a 6,000-image subset of Fashion-MNIST instead of all 60,000, with the small settings above."""
    argv = [data if a == "fashion-mnist" else a for a in argv]
    verb = argv[0]
    if verb == "pretrain":
        return argv + SMALL["pretrain --task detection" if "detection" in argv else "pretrain"]
    if verb == "forget":
        detection = any("scenes" in a for a in argv) or any(a in ("det/", "runs/det1") for a in argv)
        few_shot_faces = "configs/faces_fewshot_forget.yaml" in argv
        return argv + SMALL["forget detection" if detection else "forget"] + \
            (SMALL["forget faces few-shot"] if few_shot_faces else [])
    if verb == "compare" and "--data" not in argv:
        argv = [*argv, "--data", data]
    return argv + SMALL.get(verb, []) + (SMALL["compare --num-requests"] if verb == "compare" and
                                         "--num-requests" in argv else [])


def run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A directory like a user's checkout: configs/ beside it, ../shared/data reachable as in the README."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _shared(argv: list[str]) -> list[str]:
    return [a.replace("../shared/data", str(SHARED_DATA)) for a in argv]


@pytest.mark.skipif(not (FASHION_ROOT / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_readme_commands_and_code_blocks_run_top_to_bottom(workdir, fashion_subset):
    data = str(fashion_subset[0])
    ran = []
    for block in blocks("bash"):
        for argv in commands(block):
            if argv[0] in ("pretrain", "forget") and any("../shared/data" in a for a in argv):
                if not SHARED_DATA.is_dir():
                    continue  # the face data is not part of the repository
                argv = _shared(argv)
            code, err = run(smaller(argv, data))
            allowed = (0, 1) if argv[0] == "gate" else (0,)  # the gate's answer may be "no": exit 1
            assert code in allowed, (argv, err)
            ran.append(argv[0])
    assert {"pretrain", "forget", "requests", "verify", "gate", "rollback", "compare", "evaluate"} <= set(ran)
    for block in blocks("python"):
        exec(compile(small_python(block, data), "README.md", "exec"), {})  # noqa: S102 - the README's own examples


@pytest.mark.skipif(not (FASHION_ROOT / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_every_shipped_config_runs(workdir, fashion_subset):
    """The demo's three configs (make demo runs them: the base, its Retrain reference, the requests, then the proof
    against that reference); the other five are run by the README's commands above."""
    data = str(fashion_subset[0])
    shipped = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    assert shipped == ["compare_demo.yaml", "demo_forget.yaml", "demo_pretrain.yaml", "demo_retrain.yaml",
                       "faces_fewshot_forget.yaml", "faces_forget.yaml", "fewshot_forget.yaml", "requests_example.yaml"]
    for name in ("compare_demo.yaml", "faces_fewshot_forget.yaml", "faces_forget.yaml", "fewshot_forget.yaml",
                 "requests_example.yaml"):
        assert f"configs/{name}" in README
    code, err = run(smaller(["pretrain", "--config", "configs/demo_pretrain.yaml", "--data", data, "--out",
                             "demo_base"], data))
    assert code == 0, err
    code, err = run(smaller(["pretrain", "--config", "configs/demo_retrain.yaml", "--data", data, "--out",
                             "demo_retrain"], data))
    assert code == 0, err
    code, err = run(smaller(["forget", "--config", "configs/demo_forget.yaml", "--checkpoint", "demo_base",
                             "--data", data, "--out", "runs/demo"], data))
    assert code == 0, err
    requests = json.loads(Path("runs/demo/manifest.json").read_text())["requests"]
    forgotten = sorted(name for r in requests for name in r["forget_class_names"])
    recipe, retrain = (yaml.safe_load((ROOT / "configs" / f"demo_{name}.yaml").read_text())
                       for name in ("pretrain", "retrain"))
    assert forgotten == sorted(retrain.pop("exclude_classes")), \
        "demo_retrain.yaml must leave out exactly the classes the demo forgets"
    assert {**retrain, "out": None} == {**recipe, "out": None}, "demo_retrain.yaml must be the demo's base recipe"
    code, err = run(["verify", "--run", "runs/demo", "--reference", "demo_retrain"])
    assert code == 0, err
    assert os.path.isfile("runs/demo/report.html")


def test_readme_face_pretraining_command_is_the_chosen_base_recipe():
    """The README's face pre-training command builds the base the face benchmarks chose
    (benchmarks/faces_model_distill100.yaml), field for field: a user following the README edits the same model."""
    from gslora.cli import build_parser, pretrain_tree
    from gslora.config import PretrainConfig, from_dict, load_yaml

    (argv,) = [a for block in blocks("bash") for a in commands(block)
               if a[0] == "pretrain" and "--teacher" in a and any("celeba_faces100" in x for x in a)]
    tree = pretrain_tree(build_parser().parse_args(argv), {})
    assert tree.pop("out") == "faces/base"
    tree["model"] = {"num_classes": 100, "in_chans": 3, **tree["model"]}  # what the data fill in
    recipe = load_yaml(ROOT / "benchmarks" / "faces_model_distill100.yaml")
    assert from_dict(PretrainConfig, tree) == from_dict(PretrainConfig, recipe)
