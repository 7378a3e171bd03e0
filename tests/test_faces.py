"""A CosFace face model end to end on the Olivetti faces (../shared/data; skipped where absent)."""

from __future__ import annotations

import json

import pytest

from gslora.cli import main
from tests.conftest import SHARED_DATA

OLIVETTI = SHARED_DATA / "olivetti_faces" / "olivetti_faces.npz"
pytestmark = pytest.mark.skipif(
    not OLIVETTI.is_file(), reason="../shared/data/olivetti_faces is not present (it is not part of the repository)")


def test_face_model_pretrain_and_forget_reports_margin_accuracy_and_verification(tmp_path, capsys):
    base = tmp_path / "face"
    assert main(["pretrain", "--data", str(OLIVETTI), "--depth", "2", "--width", "64", "--heads", "2",
                 "--patch-size", "8", "--image-size", "32", "--epochs", "12", "--batch-size", "32", "--lr", "2e-3",
                 "--set", "model.head=cosface", "--set", "model.stem=conv", "--set", "train.augment=true",
                 "--device", "cpu", "-q", "--out", str(base)]) == 0
    assert "margin-penalised" in capsys.readouterr().out
    run = tmp_path / "run"
    assert main(["forget", "--checkpoint", str(base), "--data", str(OLIVETTI), "--classes", "s1,s2,s3,s4,s5",
                 "--ratio", "1.0", "--epochs", "4", "--batch-size", "16", "--device", "cpu", "-q",
                 "--accept-partial", "--out", str(run)]) == 0  # a 26%-accurate model loses 10 points: commit anyway
    m = json.loads((run / "manifest.json").read_text())["requests"][0]["metrics"]
    assert set(m["margin"]) >= {"acc_f", "acc_r", "h_mean"}
    assert m["margin"]["acc_r"] <= m["acc_r"] + 1e-9  # the margin can only take correct answers away
    for key in ("tar_f", "tar_r", "tar_f_before", "tar_r_before"):
        assert set(m[key]) == {"far=0.01", "far=0.001"}
        assert m[key]["far=0.001"] <= m[key]["far=0.01"]  # a stricter operating point accepts fewer genuine pairs
    # a trained face model verifies people far better than chance: at FAR 1% random embeddings accept ~1% of pairs
    # (35 retained identities, one genuine pair each; the 5 forgotten ones have too few pairs to say)
    assert m["tar_r_before"]["far=0.01"] > 5, m
    assert "TAR@FAR=1%" in (run / "report.md").read_text()
