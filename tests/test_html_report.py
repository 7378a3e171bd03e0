"""``report.html``: one self-contained page (no network, PNGs embedded), every manifest string escaped, the numbers
of the run on the page, and a valid page for every shape of manifest: classification with verification and a
Retrain reference, face runs, detection, old runs without optional keys, and a run with no request yet."""

from __future__ import annotations

import base64
import copy
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from gslora.report import write_report
from gslora.report.html import accuracy_matrix, render_html, write_html

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HOSTILE = "Pull<b>&over"  # a class name that must appear escaped, never as markup
MATH = r"Coat $\nosuchmacro$"  # a class name matplotlib would parse as (broken) mathtext unless escaped
CLASSES = ["T-shirt", "Trouser", HOSTILE, "Dress", MATH, "Sandal"]

# per-class accuracies: request 0 forgets class 2, request 1 forgets class 4; class 5 has no score after request 0
BEFORE_0 = [80.0, 82.0, 64.5, 70.0, 90.0, 60.0]
AFTER_0 = [80.0, 82.0, 1.25, 70.0, 88.5, None]
AFTER_1 = [79.0, 81.0, 2.5, 69.0, 3.75, 61.0]


def _request(index: int, forget: list[int], old: list[int], before: list[float | None], after: list[float | None],
             **metrics: Any) -> dict[str, Any]:
    retain = [c for c in range(len(CLASSES)) if c not in forget and c not in old]
    return {
        "index": index, "id": index, "kind": "forget", "forget_classes": forget,
        "forget_class_names": [CLASSES[c] for c in forget], "retain_classes": retain, "old_classes": old,
        "missing_classes": [], "seconds": 1.5 + index, "trainable_ratio": 0.01,
        "acceptance": {"misses": [], "forget_train_score": 0.0},
        "metrics": {"acc_f_before": 77.25, "acc_f": 0.5, "acc_r_before": 79.5, "acc_r": 79.0, "acc_o": None,
                    "acc_m": None, "acc_m_before": None, "acc_f_original": 77.25, "h_mean": 77.0,
                    "h_mean_original": 77.1, "h_exact": 78.3, "per_class": {"before": before, "after": after},
                    **metrics},
        "group_norms": {"net.blocks.0": 9.5 + index, "net.blocks.1": 12.5},
        "delta_norms": {"net.blocks.0": 1.5, "net.blocks.1": 4.25 + index},
    }


def _group(classes: list[int], auc: float, probe: float, steps: int | None, capped: bool = False) -> dict[str, Any]:
    return {"classes": classes,
            "mia": {"auc": auc, "auc_ci": [auc - 0.02, auc + 0.02], "member_share": 0.01,
                    "member_share_ci": [0.0, 0.02], "roc": {"fpr": [0.0, 0.5, 1.0], "tpr": [0.0, 0.55, 1.0]},
                    "attack_auc_on_retained": 0.5},
            "probe": {"accuracy": probe, "accuracy_ci": [probe - 5, probe + 5], "test_accuracy": probe + 1,
                      "test_accuracy_ci": [probe - 3, probe + 4], "retained_accuracy": 80.0},
            "relearn": {"steps": steps, "capped": capped, "max_steps": 200, "target": 40.0,
                        "curve": [[0, 0.0], [10, 45.0]]}}


def _versus(auc: float, ref_auc: float, probe: float, ref_probe: float, steps: int, ref_steps: int | None
            ) -> dict[str, dict[str, Any]]:
    """A reference comparison as ``gslora.verification.compare`` makes it (face headlines empty)."""
    pairs = {"mia_auc": (auc, ref_auc), "mia_member_share": (0.01, 0.01), "probe_accuracy": (probe, ref_probe),
             "relearn_steps": (steps, ref_steps), "tar_far_1e-2": (None, None), "prototype_similarity": (None, None)}
    return {key: {"method": mine, "reference": theirs,
                  "difference": None if mine is None or theirs is None else mine - theirs}
            for key, (mine, theirs) in pairs.items()}


def classification_manifest() -> dict[str, Any]:
    """Two requests, two verifications (the last one with a Retrain reference), a ledger with events."""
    latest = {"id": 2, "time": "2026-12-02T23:06:12+00:00", "after_request": 1,
              "results": {"0": _group([2], 0.4917, 87.0, 60), "1": _group([4], 0.4629, 68.0, 50)},
              "reference": {"checkpoint": "ref",
                            "results": {"0": _group([2], 0.4955, 79.0, None, capped=True),
                                        "1": _group([4], 0.4679, 55.0, 100)},
                            "versus": {"0": _versus(0.4917, 0.4955, 87.0, 79.0, 60, None),
                                       "1": _versus(0.4629, 0.4679, 68.0, 55.0, 50, 100)}}}
    earlier = {"id": 1, "time": "2026-12-02T23:05:00+00:00", "after_request": 0, "reference": None,
               "results": {"0": _group([2], 0.8765, 99.0, 3)}}
    return {
        "gslora_version": "0.2.0", "task": "classification", "created": "2026-12-02T23:04:51+00:00",
        "base": {"checkpoint": "/tmp/rep/base", "sha256": "6b9725c4" * 8},
        "dataset": {"name": "fashion-mnist", "classes": list(CLASSES)},
        "base_metrics": {"metric": "top-1 accuracy", "score": 81.58},
        "config": {"method": {"name": "gs_lora", "rank": 8}},
        "hardware": "AMD EPYC x2", "code_version": "0.2.0+gabc",
        "requests": [_request(0, [2], [], BEFORE_0, AFTER_0), _request(1, [4], [2], AFTER_0, AFTER_1, acc_o=2.5)],
        "ledger": [{"id": 0, "kind": "forget", "class_names": [HOSTILE], "requester": "<script>alert(1)</script>",
                    "reason": "GDPR & co", "received": "t0", "finished": "t1", "status": "done", "error": None},
                   {"id": 1, "kind": "forget", "class_names": [MATH], "requester": None, "reason": None,
                    "received": "t2", "finished": "t3", "status": "done", "error": None}],
        "events": [{"time": "t1", "kind": "commit", "request_id": 0, "detail": {"note": "<i>done</i>"}}],
        "verification": [earlier, latest],
    }


def detection_manifest() -> dict[str, Any]:
    """A detection run: mAP@0.5 metrics, no acceptance verdict, no LoRA norms, no verification."""
    manifest = classification_manifest()
    manifest.update(task="detection", verification=[], events=[])
    for record in manifest["requests"]:
        per_class = record["metrics"]["per_class"]
        record["metrics"] = {"map50_f_before": 55.5, "map50_f": 4.25, "map50_r_before": 61.0, "map50_r": 60.75,
                             "map50_o": None, "map_f": 2.0, "map_r": 30.0, "h_mean": 55.9, "h_exact": 58.1,
                             "per_class": per_class}
        for key in ("group_norms", "delta_norms", "acceptance"):
            record.pop(key)
    return manifest


class _Page(HTMLParser):
    """Collects tags, attributes and text, and checks that non-void elements nest properly."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    assert page.stack == [], f"unclosed elements: {page.stack}"
    return page


def _section(text: str, anchor: str) -> str:
    match = re.search(rf'<section id="{anchor}">(.*?)</section>', text, flags=re.S)
    assert match, f"no section {anchor}"
    return match.group(1)


def _images(page: _Page) -> list[bytes]:
    """The decoded PNG of every <img>; fails on any image that is not an embedded PNG."""
    images = []
    for tag, attrs in page.tags:
        if tag == "img":
            src = attrs.get("src") or ""
            assert src.startswith("data:image/png;base64,"), src[:60]
            images.append(base64.b64decode(src.split(",", 1)[1], validate=True))
    return images


def _write(manifest: dict[str, Any], tmp_path: Path) -> str:
    path = tmp_path / "report.html"
    write_html(manifest, path)
    assert path.is_file()
    return path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def classification_page(tmp_path_factory) -> str:
    return _write(classification_manifest(), tmp_path_factory.mktemp("html"))


def test_page_is_self_contained_with_embedded_pngs(classification_page):
    page = _parse(classification_page)
    lowered = classification_page.lower()
    assert "http://" not in lowered and "https://" not in lowered
    assert "<script" not in lowered and "<link" not in lowered and "@import" not in lowered
    assert all(tag not in {"iframe", "object", "embed"} for tag, _ in page.tags)
    images = _images(page)
    # accuracy matrix, group norms, ROC, probe, relearn
    assert len(images) == 5
    assert all(image.startswith(PNG_SIGNATURE) for image in images)
    assert all(attrs.get("alt") for tag, attrs in page.tags if tag == "img")


def test_manifest_strings_are_escaped(classification_page):
    assert "<b>&" not in classification_page and "<script>alert" not in classification_page
    assert "<i>done" not in classification_page
    assert "Pull&lt;b&gt;&amp;over" in classification_page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in classification_page
    assert "GDPR &amp; co" in classification_page
    text = "".join(_parse(classification_page).text)
    assert HOSTILE in text and MATH in text  # the names read back as written


def test_sections_in_order_with_explanations(classification_page):
    order = [classification_page.index(f'<section id="{anchor}">')
             for anchor in ("requests", "matrix", "norms", "verification", "ledger")]
    assert order == sorted(order)
    assert classification_page.index("<header>") < order[0]
    for anchor in ("requests", "matrix", "norms", "verification", "ledger"):
        explanation = re.search(r'<p class="explain">(.*?)</p>', _section(classification_page, anchor), flags=re.S)
        assert explanation and len(explanation.group(1)) > 150


def test_header_and_request_table(classification_page):
    header = classification_page[classification_page.index("<header>"):classification_page.index("</header>")]
    for value in ("gs_lora", "fashion-mnist", "/tmp/rep/base", "6b9725c4" * 8, "81.58", "0.2.0+gabc", "AMD EPYC x2",
                  "2026-12-02T23:04:51+00:00", "<td>6</td>"):
        assert value in header, value
    requests = _section(classification_page, "requests")
    assert "77.25 -&gt; 0.50" in requests and "79.50 -&gt; 79.00" in requests and "78.30" in requests
    assert "<th>Acc_o</th>" in requests and "<th>Acc_m</th>" not in requests  # only columns with a value
    assert "2 dAcc_f Acc_r / (dAcc_f + Acc_r)" in requests
    assert "the H of an exact request (Acc_f to 0, Acc_r unchanged); H above it means Acc_r rose" in requests


def test_accuracy_matrix_values():
    rows, columns, values = accuracy_matrix(classification_manifest())
    assert rows == ["before request 0", "after request 0", "after request 1"]
    assert columns == [f"forgot at request 0: {HOSTILE}", f"forgot at request 1: {MATH}", "retained"]
    # retained = classes 0, 1, 3, 5; class 5's missing score is left out of the mean, not counted as 0
    assert values == [[64.5, 90.0, 73.0], [1.25, 88.5, pytest.approx(232 / 3)], [2.5, 3.75, 72.5]]


def test_accuracy_matrix_on_the_page(classification_page):
    matrix = _section(classification_page, "matrix")
    for cell in ("64.50", "90.00", "73.00", "1.25", "88.50", "77.33", "2.50", "3.75", "72.50"):
        assert f"<td>{cell}</td>" in matrix, cell
    assert "forgot at request 0: Pull&lt;b&gt;&amp;over" in matrix


def test_group_norms_and_verification_numbers(classification_page):
    norms = _section(classification_page, "norms")
    assert "<td>9.50</td>" in norms and "<td>5.25</td>" in norms
    verification = _section(classification_page, "verification")
    assert "0.492 [0.472, 0.512]" in verification  # AUC with its interval, from the latest verification
    assert "0.877" not in verification  # the earlier verification is not shown
    assert "87.0 [82.0, 92.0]" in verification
    assert "&gt; 200" in verification  # the capped reference relearn run
    assert "Versus Retrain reference" in verification and "<td>13.0</td>" in verification
    assert "TAR at FAR" not in verification  # headlines with no value on either side are left out


def test_group_norms_png_is_the_heat_map_the_page_embeds(tmp_path):
    """One drawing of the group norms: write_report saves the page's heat maps as group_norms.png (report.md links it)
    and embeds the same PNG in report.html; the page drawn on its own embeds the same bytes."""
    manifest = classification_manifest()
    write_report(manifest, tmp_path)
    png = (tmp_path / "group_norms.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert _images(_parse(_section((tmp_path / "report.html").read_text(encoding="utf-8"), "norms"))) == [png]
    assert _images(_parse(_section(render_html(manifest), "norms"))) == [png]


def test_face_run_adds_the_tar_plot(tmp_path):
    manifest = classification_manifest()
    for name, group in manifest["verification"][-1]["results"].items():
        group["faces"] = {"tar": {"far=0.01": 3.5, "far=0.001": 1.0 + int(name)},
                          "tar_retained": {"far=0.01": 91.5, "far=0.001": 80.25},
                          "prototype_similarity": 0.125, "prototype_similarity_retained": 0.875}
    text = _write(manifest, tmp_path)
    images = _images(_parse(text))
    assert len(images) == 6 and all(image.startswith(PNG_SIGNATURE) for image in images)
    assert "3.5 / 91.5" in text and "1.0 / 80.2" in text and "TAR@1e-2" in text


def test_optional_sections_are_skipped_with_a_sentence(tmp_path):
    manifest = classification_manifest()
    del manifest["verification"]
    for record in manifest["requests"]:
        del record["metrics"]["per_class"]
        del record["group_norms"]
        del record["delta_norms"]
    text = _write(manifest, tmp_path)
    assert "no per-class scores" in _section(text, "matrix")
    assert "No group norms were recorded" in _section(text, "norms")
    assert "No verification has been run" in _section(text, "verification")
    assert "<img" not in text
    assert accuracy_matrix(manifest) is None


def test_no_request_yet(tmp_path):
    manifest = classification_manifest()
    manifest.update(requests=[], verification=[], events=[],
                    ledger=[{"id": 0, "kind": "forget", "class_names": ["Coat"], "status": "failed",
                             "error": "RuntimeError: <out of memory>"}])
    text = _write(manifest, tmp_path)
    _parse(text)
    assert "No request has been committed yet" in text
    assert "<img" not in text and 'id="matrix"' not in text
    assert "RuntimeError: &lt;out of memory&gt;" in _section(text, "ledger")


def test_detection_run(tmp_path):
    text = _write(detection_manifest(), tmp_path)
    images = _images(_parse(text))
    assert len(images) == 1 and images[0].startswith(PNG_SIGNATURE)  # the AP@0.5 matrix only
    requests = _section(text, "requests")
    assert "<th>mAP50_f</th>" in requests and "55.50 -&gt; 4.25" in requests and "58.10" in requests
    assert "Acc_f" not in requests
    assert "AP@0.5" in _section(text, "matrix") and "<td>72.50</td>" in _section(text, "matrix")
    assert "No group norms were recorded" in text and "No verification has been run" in text


def test_missing_and_null_values_everywhere(tmp_path):
    manifest = copy.deepcopy(classification_manifest())
    manifest.update(base=None, base_metrics=None, config={}, dataset={"name": "old"}, hardware=None, ledger=None,
                    events=None)
    for record in manifest["requests"]:
        record["metrics"] = {key: None for key in record["metrics"]}
        record["metrics"]["per_class"] = {"before": [None] * 6, "after": None}
        record["acceptance"] = {"misses": ["retained classes fell from 80.0 to 60.0"]}
        record["group_norms"] = {"net.blocks.0": None}
        del record["seconds"]
    results = manifest["verification"][-1]["results"]
    results["0"] = {"classes": [2], "mia": {"auc": None, "roc": {"fpr": [], "tpr": []}},
                    "probe": {"accuracy": None}, "relearn": {"steps": None, "capped": False}}
    results["7"] = {"classes": [99], "faces": {"tar": None}}  # an id with no request record
    manifest["verification"][-1]["reference"] = {"results": {}, "versus": {"0": {"mia_auc": None}}}
    text = _write(manifest, tmp_path)
    assert all(image.startswith(PNG_SIGNATURE) for image in _images(_parse(text)))
    assert "partial: retained classes fell from 80.0 to 60.0" in text
    assert "id 7" in text


def test_write_report_writes_the_page(tmp_path):
    write_report(classification_manifest(), tmp_path)
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "Pull&lt;b&gt;&amp;over" in text


def test_render_matches_written_file(tmp_path, classification_page):
    assert render_html(classification_manifest()) == classification_page


def test_an_approximate_rollback_is_a_row_of_its_own_and_not_a_column():
    """Request 0 rolled back: the run applies request 1 then a rollback row restoring class 2."""
    manifest = classification_manifest()
    first = _request(1, [4], [], BEFORE_0, AFTER_0)
    rollback = {**_request(2, [], [4], AFTER_0, AFTER_1), "kind": "rollback", "restored_classes": [2],
                "forget_class_names": ["rollback of Pull<b>&over"]}
    manifest["requests"] = [first, rollback]
    rows, columns, _ = accuracy_matrix(manifest)
    assert rows == ["before request 1", "after request 1", "after rollback 2"]
    assert columns == [f"forgot at request 1: {MATH}", "retained"]
