"""Faults and bad input through the real command line, in subprocesses: SIGKILL / SIGINT / SIGTERM at points of a
request, concurrent writers, permissions and umask, and a corpus of bad inputs. After every fault the run must
verify (its latest model evaluates, every committed file keeps its SHA-256) and the request must run again."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from gslora.io import sha256_file
from tests.conftest import make_npz

ROOT = Path(__file__).resolve().parents[1]
CLASSES = [f"class_{i}" for i in range(5)]
FORGET = ["--epochs", "2", "--batch-size", "8", "--ratio", "1.0", "--bnd", "5", "--device", "cpu", "-q"]


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    """``gslora argv`` in this process (fast: no start-up), captured like a subprocess."""
    import contextlib
    import io

    from gslora.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return subprocess.CompletedProcess(list(argv), code, out.getvalue(), err.getvalue())


class Forked:
    """A running ``gslora`` process of ``fault_runner.forked``, read like ``subprocess.Popen``."""

    def __init__(self, argv: list[str], fault: tuple[str, str] | None, tmp: Path):
        import multiprocessing

        from tests import fault_runner

        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(fault_runner.PRELOAD)
        self.argv, self.out, self.err = argv, tmp / "stdout", tmp / "stderr"
        self.process = context.Process(target=fault_runner.forked,
                                       args=(argv, fault, str(self.out), str(self.err), str(ROOT)))
        self.process.start()
        self.pid = self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode  # -N when signal N ended it, as subprocess gives

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def communicate(self, timeout: float = 300) -> tuple[str, str]:
        self.process.join(timeout)
        if self.returncode is None:
            self.process.kill()
            raise subprocess.TimeoutExpired(self.argv, timeout)
        out, err = self.out.read_text(), self.err.read_text()
        shutil.rmtree(self.out.parent, ignore_errors=True)
        return out, err


def gslora(*argv: str, fault: tuple[str, str] | None = None, wait: bool = True):
    """``gslora argv`` in a new process (with ``fault`` = (point, signal) installed by tests/fault_runner.py).

    The process is forked from multiprocessing's fork server, which imported gslora and its libraries once: the
    same ``gslora.cli.main`` that ``python -m gslora.cli`` runs, in a process of its own (its pid, its signals, its
    exit code), without a new interpreter's 8 s of imports each time (14 processes in this file)."""
    import tempfile

    process = Forked(list(argv), fault, Path(tempfile.mkdtemp(prefix="gslora-fault-")))
    if not wait:
        return process
    out, err = process.communicate()
    return subprocess.CompletedProcess(list(argv), process.returncode, out, err)


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """A tiny pre-trained ViT on a 5-class 8x8 data set, and a run with one finished request (class_4)."""
    from gslora.config import DataConfig, ModelConfig, TrainConfig
    from gslora.data import load_dataset
    from gslora.engine import pretrain
    from gslora.models import save_checkpoint

    root = tmp_path_factory.mktemp("faults")
    data = make_npz(root / "data.npz", per_class_train=[12] * 5, per_class_test=4, size=8)
    dataset = load_dataset(DataConfig(dataset=str(data)))
    config = ModelConfig(depth=1, width=16, heads=2, patch_size=4, image_size=8, in_chans=1, num_classes=5)
    model, _ = pretrain(config, dataset, TrainConfig(epochs=2, batch_size=16, lr=1e-3, warmup_epochs=0, device="cpu"))
    save_checkpoint(model, root / "base", classes=dataset.classes)
    run = root / "run"
    done = run_cli("forget", "--checkpoint", str(root / "base"), "--data", str(data), "--classes", "class_4",
                   "--out", str(run), *FORGET)
    assert done.returncode == 0, done.stderr
    return root, data, run


def committed_hashes(run: Path) -> dict[str, str]:
    """SHA-256 of every file the ledger lists as committed, as recorded and as on disk now."""
    with closing(sqlite3.connect(run / "ledger.sqlite")) as db:
        rows = db.execute("SELECT artefacts FROM requests WHERE status = 'done'").fetchall()
    recorded = {path: digest for (artefacts,) in rows for path, digest in json.loads(artefacts).items()}
    return {path: sha256_file(run / path) for path in recorded} | {"recorded": json.dumps(recorded, sort_keys=True)}


def statuses(run: Path) -> list[tuple[int, str]]:
    with closing(sqlite3.connect(run / "ledger.sqlite")) as db:
        return db.execute("SELECT id, status FROM requests ORDER BY id").fetchall()


def assert_run_verifies(run: Path, data: Path, hashes: dict[str, str]) -> None:
    """The committed files are unchanged, the latest model evaluates, no staging is left once a writer opened it."""
    assert committed_hashes(run) == hashes
    listed = json.loads(run_cli("requests", "list", "--run", str(run), "--json").stdout or "[]")
    assert listed, "the ledger cannot be listed"
    latest = json.loads((run / "manifest.json").read_text())["latest_checkpoint"]
    evaluated = run_cli("evaluate", "--checkpoint", str(run / latest), "--data", str(data), "--json")
    assert evaluated.returncode == 0, evaluated.stderr


def copy_run(setting, tmp_path) -> Path:
    _, _, run = setting
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


POINTS = ["training", "after_adapter", "saving", "before_ledger", "before_export"]


@pytest.mark.parametrize("point", POINTS)
def test_sigkill_during_a_request_on_an_existing_run(setting, tmp_path, point):
    _, data, _ = setting
    run = copy_run(setting, tmp_path)
    hashes = committed_hashes(run)
    args = ["forget", "--run", str(run), "--data", str(data), "--classes", "class_3", *FORGET]
    killed = gslora(*args, fault=(point, "KILL"))
    assert killed.returncode == -signal.SIGKILL
    if point == "before_export":  # the ledger committed the request before the kill: it is done
        listed = run_cli("requests", "list", "--run", str(run), "--json")
        assert [r["status"] for r in json.loads(listed.stdout)] == ["done", "done"]
        again = run_cli(*args)
        assert again.returncode == 2 and "already forgotten" in again.stderr
        assert json.loads((run / "manifest.json").read_text())["latest_checkpoint"] == "requests/001/model"
        return
    assert_run_verifies(run, data, hashes)
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert statuses(run) == [(0, "done"), (1, "failed"), (2, "done")]
    assert not list(run.glob(".staging-*")) and not (run / "requests" / "001").exists()
    manifest = json.loads((run / "manifest.json").read_text())
    assert [r["forget_class_names"] for r in manifest["requests"]] == [["class_4"], ["class_3"]]
    assert manifest["ledger"][1]["error"].startswith("interrupted")


@pytest.mark.parametrize("point", ["training", "saving", "before_ledger"])
def test_sigkill_during_the_first_request_of_a_new_run(setting, tmp_path, point):
    root, data, _ = setting
    run = tmp_path / "new"
    args = ["forget", "--checkpoint", str(root / "base"), "--data", str(data), "--classes", "class_2", "--out",
            str(run), *FORGET]
    assert gslora(*args, fault=(point, "KILL")).returncode == -signal.SIGKILL
    assert not (run / "ledger.sqlite").exists()  # no run exists until its first commit
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert statuses(run) == [(0, "done")]
    assert sorted(p.name for p in run.iterdir()) == sorted(
        ["accuracy.png", "base_predictions.safetensors", "group_norms.png", "ledger.sqlite", "manifest.json",
         "metrics.json", "report.html", "report.md", "requests"])


@pytest.mark.parametrize("sig, code", [("INT", 130), ("TERM", 143)])
def test_interrupting_a_request_ends_in_one_line_and_leaves_the_run_as_it_was(setting, tmp_path, sig, code):
    _, data, _ = setting
    run = copy_run(setting, tmp_path)
    hashes = committed_hashes(run)
    interrupted = gslora("forget", "--run", str(run), "--data", str(data), "--classes", "class_3", *FORGET,
                         fault=("training", sig))
    assert interrupted.returncode == code
    assert interrupted.stderr.strip().splitlines() == [
        f"gslora forget: interrupted; the run {str(run)!r} is as it was after request 0"]
    assert statuses(run) == [(0, "done"), (1, "failed")]
    assert not list(run.glob(".staging-*"))
    assert_run_verifies(run, data, hashes)


def test_a_signal_during_the_commit_is_held_until_the_request_is_committed(setting, tmp_path):
    _, data, _ = setting
    run = copy_run(setting, tmp_path)
    result = gslora("forget", "--run", str(run), "--data", str(data), "--classes", "class_3", *FORGET,
                    fault=("before_ledger", "INT"))
    assert result.returncode == 130
    assert "is as it was after request 1" in result.stderr
    assert statuses(run) == [(0, "done"), (1, "done")]
    assert json.loads((run / "manifest.json").read_text())["latest_checkpoint"] == "requests/001/model"


def test_interrupting_a_new_run_leaves_nothing(setting, tmp_path):
    root, data, _ = setting
    run = tmp_path / "parent" / "new"
    result = gslora("forget", "--checkpoint", str(root / "base"), "--data", str(data), "--classes", "class_2",
                    "--out", str(run), *FORGET, fault=("training", "INT"))
    assert result.returncode == 130
    assert result.stderr.strip().splitlines() == [
        f"gslora forget: interrupted; the run {str(run)!r} is not created (no request finished)"]
    assert not (tmp_path / "parent").exists()


def _wait_stopped(process: subprocess.Popen) -> None:
    for _ in range(600):
        state = Path(f"/proc/{process.pid}/stat").read_text().split(")")[-1].split()[0]
        if state == "T":
            return
        if process.poll() is not None:
            raise AssertionError(f"the first writer ended early: {process.communicate()}")
        time.sleep(0.1)
    raise AssertionError("the first writer never reached training")


@pytest.mark.parametrize("existing", [False, True])
def test_two_writers_on_one_run(setting, tmp_path, existing):
    """The second writer is refused while the first holds the run (stopped mid-training), on a new and an existing
    run; the first then finishes normally."""
    root, data, _ = setting
    if existing:
        run = copy_run(setting, tmp_path)
        args = ["forget", "--run", str(run), "--data", str(data), *FORGET]
        first, second = [*args, "--classes", "class_3"], [*args, "--classes", "class_2"]
    else:
        run = tmp_path / "new"
        first = second = ["forget", "--checkpoint", str(root / "base"), "--data", str(data), "--classes", "class_2",
                          "--out", str(run), *FORGET]
    writer = gslora(*first, fault=("training", "STOP"), wait=False)
    try:
        _wait_stopped(writer)
        refused = run_cli(*second)
        assert refused.returncode == 2
        assert refused.stderr.strip().splitlines() == [
            f"gslora forget: error: another gslora process is writing run {str(run)!r}; wait for it to finish"]
    finally:
        writer.send_signal(signal.SIGCONT)
        out, err = writer.communicate(timeout=300)
    assert writer.returncode == 0, err
    assert statuses(run)[-1][1] == "done"


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_files_follow_the_umask_and_no_lock_file_is_left(setting, tmp_path, mask):
    """The umask of the process that runs the command (this one: the same calls as a new process, without its
    start-up) decides the modes of every file and directory a new run gets."""
    root, data, _ = setting
    run = tmp_path / "run"
    previous = os.umask(mask)
    try:
        result = run_cli("forget", "--checkpoint", str(root / "base"), "--data", str(data), "--classes", "class_2",
                         "--out", str(run), *FORGET)
    finally:
        os.umask(previous)
    assert result.returncode == 0, result.stderr
    for path in [run, *run.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o777 if path.is_dir() else 0o666) & ~mask, (path, oct(mode))
    assert not [p for p in run.rglob("*") if p.name.endswith(".lock") or p.name.startswith(".staging")]


def _as_nobody() -> list[str]:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run the command as an unprivileged user")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_unwritable_locations_end_in_one_line(setting, tmp_path):
    root, data, run = setting
    shared = Path("/tmp") / f"gslora-perm-{os.getpid()}"
    shutil.rmtree(shared, ignore_errors=True)
    try:
        (shared / "locked").mkdir(parents=True)
        for name in ("base", "data.npz", "run"):
            source = root / name
            (shutil.copytree if source.is_dir() else shutil.copy)(source, shared / name)
        os.chmod(shared, 0o755)
        os.chmod(shared / "locked", 0o555)
        for path in shared.rglob("*"):
            os.chmod(path, 0o555 if path.is_dir() else 0o444)
        before = {p: p.read_bytes() for p in (shared / "run").rglob("*") if p.is_file()}
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(shared), "MPLCONFIGDIR": str(shared)}
        common = [sys.executable, "-m", "gslora.cli", "forget", "--data", str(shared / "data.npz"),
                  "--classes", "class_2", *FORGET]
        for extra in (["--checkpoint", str(shared / "base"), "--out", str(shared / "locked" / "run")],
                      ["--run", str(shared / "run")]):
            result = subprocess.run([*_as_nobody(), *common, *extra], cwd="/", env=env, capture_output=True,
                                    text=True, timeout=300)
            assert result.returncode == 2, result.stderr
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and ("permission denied" in lines[0].lower() or "read-only" in lines[0]), lines
        assert {p: p.read_bytes() for p in (shared / "run").rglob("*") if p.is_file()} == before
    finally:
        for path in [shared, *shared.rglob("*")] if shared.exists() else []:
            os.chmod(path, 0o755)
        shutil.rmtree(shared, ignore_errors=True)


# -- the bad-input corpus: each case one line on stderr, exit 2, the run untouched --------------------------

def _corpus(root: Path, data: Path, run: Path, tmp: Path) -> list[tuple[list[str], str]]:
    base = str(root / "base")
    with np.load(data) as z:
        arrays = dict(z)
    np.savez(tmp / "more_images.npz", **{**arrays, "x_train": np.concatenate([arrays["x_train"],
                                                                              arrays["x_train"][:3]])})
    raw = (data.read_bytes())
    (tmp / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    shutil.copytree(base, tmp / "list_config")
    (tmp / "list_config" / "config.json").write_text("[1, 2, 3]")
    shutil.copytree(run, tmp / "no_config_run")
    (tmp / "no_config_run" / "ledger.sqlite").unlink()
    manifest = json.loads((tmp / "no_config_run" / "manifest.json").read_text())
    manifest.pop("config")
    (tmp / "no_config_run" / "manifest.json").write_text(json.dumps(manifest))
    from safetensors.torch import load_file, save_file

    shutil.copytree(base, tmp / "nan_base")
    weights = load_file(str(tmp / "nan_base" / "model.safetensors"))
    first = next(k for k, v in weights.items() if v.is_floating_point())
    weights[first][0] = float("nan")
    save_file(weights, str(tmp / "nan_base" / "model.safetensors"))
    (tmp / "broken.yaml").write_text("train:\n  epochs: [1\n")
    folder = tmp / "folder"
    for split in ("train", "test"):
        for name in ("a", "b"):
            (folder / split / name).mkdir(parents=True)
            from PIL import Image

            Image.new("RGB", (8, 8)).save(folder / split / name / "ok.png")
    (folder / "train" / "a" / "empty.png").write_bytes(b"")
    from fractions import Fraction  # any class outside what weights_only loading allows

    import torch

    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": Fraction(1, 3)}, tmp / "pickled.pth")
    new = ["forget", "--checkpoint", base, "--data", str(data), "--classes", "class_2", *FORGET]
    return [
        ([*new[:4], str(tmp / "more_images.npz"), *new[5:], "--out", str(tmp / "r1")], "holds 63 images but y_train"),
        ([*new[:4], str(tmp / "truncated.npz"), *new[5:], "--out", str(tmp / "r2")], "truncated or not an .npz"),
        (["forget", "--checkpoint", str(tmp / "list_config"), *new[3:], "--out", str(tmp / "r3")],
         "is not a gslora checkpoint config"),
        (["forget", "--run", str(tmp / "no_config_run"), *new[3:]], "lacks config"),
        (["forget", "--checkpoint", str(tmp / "nan_base"), *new[3:], "--out", str(tmp / "r4")],
         "holds non-finite weights"),
        ([*new, "--config", str(tmp / "broken.yaml"), "--out", str(tmp / "r5")], "is not valid YAML"),
        (["pretrain", "--data", str(folder), "--epochs", "1", "--out", str(tmp / "p1"), "-q"],
         "cannot decode image"),
        (["pretrain", "--data", str(data), "--image-size", "64", "--patch-size", "10", "--out", str(tmp / "p2")],
         "model.patch_size=10: must divide model.image_size=64"),
        (["pretrain", "--data", str(data), "--family", "hf", "--name", "nobody/no-such-model", "--epochs", "1",
          "--out", str(tmp / "p3")], "cannot fetch the pretrained weights of 'nobody/no-such-model'"),
        (["pretrain", "--data", str(data), "--name", "vit_tiny_patch16_224", "--pretrained", "--epochs", "1",
          "--out", str(tmp / "p5")], "cannot fetch the pretrained weights of 'vit_tiny_patch16_224'"),
        (["pretrain", "--data", str(data), "--weights", str(tmp / "pickled.pth"), "--depth", "1", "--width", "16",
          "--heads", "2", "--patch-size", "4", "--out", str(tmp / "p4")], "safetensors"),
        (["forget", "--run", str(run), "--data", str(data), "--classes", "class_4", *FORGET], "already forgotten"),
        (["requests", "show", "--run", str(run), "7"], "the run has no request 7"),
    ]


def test_bad_input_corpus_each_ends_in_one_line(setting, tmp_path):
    root, data, run = setting
    run = copy_run(setting, tmp_path)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    cases = _corpus(root, data, run, tmp_path)
    (tmp_path / "cases.json").write_text(json.dumps([argv for argv, _ in cases]))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    batch = subprocess.run([sys.executable, "-m", "tests.cli_batch", str(tmp_path / "cases.json")], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
    assert batch.returncode == 0, batch.stderr[-3000:]
    for (argv, expected), result in zip(cases, json.loads(batch.stdout)):
        lines = [line for line in result["stderr"].splitlines() if not line.startswith("WARNING")]
        assert result["exit"] == 2 and len(lines) == 1 and expected in lines[0], (argv, result["stderr"])
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("r", "p")) and p.name[1:].isdigit()]


def _in_a_new_interpreter(code: str) -> subprocess.CompletedProcess:
    """``code`` run by a fresh Python (nothing imported yet), from the checkout."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_help_and_version_answer_without_loading_torch():
    probe = ("import sys, contextlib, io\n"
             "from gslora.cli import main\n"
             "for argv in (['--help'], ['--version'], ['forget', '--help'], ['forget', '--bogus']):\n"
             "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
             "        try:\n"
             "            main(argv)\n"
             "        except SystemExit:\n"
             "            pass\n"
             "heavy = [m for m in ('torch', 'timm', 'peft', 'transformers') if m in sys.modules]\n"
             "print(','.join(heavy) or 'none')\n")
    result = _in_a_new_interpreter(probe)
    assert result.stdout.strip() == "none", result.stdout + result.stderr


def test_the_engine_loads_peft_only_when_a_request_attaches_an_adapter():
    """peft imports transformers (4 s of a 6.5 s start on this machine): the ledger's commands, pre-training and the
    baselines never attach LoRA and must not pay for it; attaching LoRA loads it."""
    probe = ("import sys\n"
             "import gslora.engine, gslora.engine.ledger, gslora.methods, gslora.tasks.classification\n"
             "from gslora.cli import main\n"
             "before = [m for m in ('peft', 'transformers') if m in sys.modules]\n"
             "from gslora.adapters import attach_lora, find_ffn_groups\n"
             "from gslora.config import ModelConfig\n"
             "from gslora.models import build_model\n"
             "model = build_model(ModelConfig(depth=1, width=8, heads=2, image_size=8, patch_size=4))\n"
             "attach_lora(model, find_ffn_groups(model), rank=2, lora_alpha=2)\n"
             "print(','.join(before) or 'none', 'peft' in sys.modules)\n")
    result = _in_a_new_interpreter(probe)
    assert result.stdout.split() == ["none", "True"], result.stdout + result.stderr


def test_every_option_states_its_default():
    import argparse

    from gslora.cli import GS_LORA_HELP_DEFAULTS, build_parser
    from gslora.methods import GSLoRAConfig

    assert GS_LORA_HELP_DEFAULTS == {k: getattr(GSLoRAConfig(), k) for k in GS_LORA_HELP_DEFAULTS}
    parser = build_parser()
    pending = [("gslora", parser)]
    while pending:
        name, current = pending.pop()
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                pending += [(f"{name} {sub}", p) for sub, p in action.choices.items()]
            elif action.option_strings and not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                text = action.help or ""
                assert action.required or "default" in text or "required" in text, (name, action.dest, text)


def test_a_recorded_path_outside_the_run_is_refused(setting, tmp_path):
    _, data, _ = setting
    run = copy_run(setting, tmp_path)
    with closing(sqlite3.connect(run / "ledger.sqlite")) as db:
        (record,) = db.execute("SELECT record FROM requests WHERE id = 0").fetchone()
        tampered = {**json.loads(record), "checkpoint": "../../elsewhere/model"}
        db.execute("UPDATE requests SET record = ? WHERE id = 0", (json.dumps(tampered),))
        db.commit()
    result = run_cli("forget", "--run", str(run), "--data", str(data), "--classes", "class_3", *FORGET)
    assert result.returncode == 2 and "outside" in result.stderr, result.stderr
