"""The Markdown report of a run: base model, one row per request, per-class changes, settings, ledger. Every
column is defined under its table, and only the columns that appear."""

from __future__ import annotations

from typing import Any

from gslora.report.format import accepted, change, ci, fmt, measured_on

#: column -> definition, for the legend under a table
DEFINITIONS = {
    "Acc_f": "top-1 accuracy on the classes forgotten by this request (lower is better)",
    "Acc_r": "top-1 accuracy on every class still retained (higher is better)",
    "Acc_o": "top-1 accuracy on the classes forgotten by earlier requests (lower is better; they must stay forgotten)",
    "Acc_m": "top-1 accuracy on retained classes that had no training data (the missing-class setting)",
    "H": "H-Mean 2 dAcc_f Acc_r / (dAcc_f + Acc_r), dAcc_f the drop of Acc_f from the model before the request",
    "H (vs original)": "the same with dAcc_f measured from the original (pre-trained) model, the papers' tables",
    "H_exact": "the H of an exact request (Acc_f to 0, Acc_r unchanged); H above it means Acc_r rose",
    "margin": "margin-penalised top-1 (CosFace): a hit only if cos(theta_y) - m beats every other class, the "
              "reference's convention",
    "TAR@FAR=1%": "face verification: share of same-person test pairs accepted at the cosine threshold where 1% of "
                  "different-person pairs are accepted",
    "accepted": "whether the request met the acceptance thresholds (partial: committed with --accept-partial)",
    "mAP50_f": "mAP@0.5 on the classes forgotten by this request (lower is better)",
    "mAP50_r": "mAP@0.5 on every retained class",
    "mAP50_o": "mAP@0.5 on the classes forgotten by earlier requests",
    "mAP_f / mAP_r": "COCO mAP (IoU 0.50:0.95) on the forget and retained classes",
    "H (mAP)": "2 dmAP50_f mAP50_r / (dmAP50_f + mAP50_r)",
    "H_exact (mAP)": "the H of an exact request (mAP50_f to 0, mAP50_r unchanged)",
}






def header(manifest: dict[str, Any], title: str) -> list[str]:
    base, metrics = manifest.get("base") or {}, manifest.get("base_metrics") or {}
    method = manifest["config"]["method"]
    score = ""
    if metrics.get("score") is not None:
        margin = f", margin-penalised {fmt(metrics['margin_score'])}%" if metrics.get("margin_score") is not None \
            else ""
        score = f" Its test {metrics['metric']}: {fmt(metrics['score'])}%{margin}."
    return [f"# {title}: {method['name']} on {manifest['dataset']['name']}", "",
            f"Base model `{base.get('checkpoint', '?')}` (sha256 `{str(base.get('sha256', ''))[:16]}`), "
            f"{len(manifest['dataset']['classes'])} classes.{score} gslora {manifest.get('gslora_version')} "
            f"({manifest.get('code_version') or 'no git commit'}), {manifest.get('hardware')}.", ""]


def _legend(columns: list[str]) -> list[str]:
    return ["", *[f"- {c}: {DEFINITIONS[c]}" for c in columns if c in DEFINITIONS], ""]




def request_table(manifest: dict[str, Any]) -> list[str]:
    """The per-request table of a classification run."""
    requests = manifest["requests"]
    if not requests:
        return ["No request has been committed yet.", ""]
    has = {key: any(r["metrics"].get(key) is not None for r in requests) for key in ("acc_o", "acc_m")}
    has["margin"] = any("margin" in r["metrics"] for r in requests)
    has["tar"] = any("tar_f" in r["metrics"] for r in requests)
    columns = ["request", "forget", "Acc_f", "Acc_r", *(["Acc_o"] if has["acc_o"] else []),
               *(["Acc_m"] if has["acc_m"] else []), "H", "H (vs original)", "H_exact", "accepted", "seconds"]
    lines = ["| " + " | ".join(c if c in ("request", "forget", "accepted", "seconds", "Acc_o") or c.startswith("H")
                                else f"{c} before -> after" for c in columns) + " |", "|---" * len(columns) + "|"]
    for r in requests:
        m = r["metrics"]
        names = ", ".join(r["forget_class_names"])
        names = names if len(names) <= 60 else f"{len(r['forget_classes'])} classes"
        if r.get("kind") == "rollback":
            names = (f"rollback of request {r.get('target_index')} ({', '.join(_class_names(manifest, r))}), "
                     "approximate: Acc_f is the restored classes'")
        cells = [str(r["index"]), names, change(m["acc_f_before"], m["acc_f"]), change(m["acc_r_before"], m["acc_r"])]
        if has["acc_o"]:
            cells.append(fmt(m.get("acc_o")))
        if has["acc_m"]:
            cells.append(change(m.get("acc_m_before"), m.get("acc_m")))
        cells += [fmt(m["h_mean"]), fmt(m["h_mean_original"]), fmt(m.get("h_exact")), accepted(r),
                  f"{r['seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    shown = [c for c in columns if c in DEFINITIONS]
    if any(r.get("kind") == "rollback" for r in requests):
        lines += ["", "A rollback row undoes an earlier request approximately: that request's weight edit is "
                  "subtracted from the latest weights, which later edits were trained on; its Acc_f is the accuracy "
                  "of the classes it restores (higher is better there), and every remaining request is verified "
                  "again."]
    if has["margin"] or has["tar"]:
        lines += ["", "| request | margin Acc_f / Acc_r / H | TAR@FAR=1% forgotten before -> after | TAR@FAR=1% "
                  "retained before -> after |", "|---|---|---|---|"]
        for r in requests:
            m = r["metrics"]
            margin = m.get("margin") or {}
            tar = {k: (m.get(k) or {}).get("far=0.01") for k in ("tar_f_before", "tar_f", "tar_r_before", "tar_r")}
            lines.append(f"| {r['index']} | {fmt(margin.get('acc_f'))} / {fmt(margin.get('acc_r'))} / "
                         f"{fmt(margin.get('h_mean'))} | {change(tar['tar_f_before'], tar['tar_f'])} | "
                         f"{change(tar['tar_r_before'], tar['tar_r'])} |")
        shown += (["margin"] if has["margin"] else []) + (["TAR@FAR=1%"] if has["tar"] else [])
    return lines + _legend(shown)


def _class_names(manifest: dict[str, Any], record: dict[str, Any]) -> list[str]:
    classes = manifest["dataset"]["classes"]
    return [classes[c] for c in record.get("restored_classes", [])]


def detection_request_table(manifest: dict[str, Any]) -> list[str]:
    requests = manifest["requests"]
    if not requests:
        return ["No request has been committed yet.", ""]
    has_o = any(r["metrics"].get("map50_o") is not None for r in requests)
    lines = ["| request | forget | mAP50_f before -> after | mAP50_r before -> after | "
             + ("mAP50_o | " if has_o else "") + "mAP_f / mAP_r | H | H_exact | accepted | seconds |",
             "|---" * (9 + has_o) + "|"]
    for r in requests:
        m = r["metrics"]
        o = f"{fmt(m.get('map50_o'))} | " if has_o else ""
        lines.append(f"| {r['index']} | {', '.join(r['forget_class_names'])} | "
                     f"{change(m['map50_f_before'], m['map50_f'])} | {change(m['map50_r_before'], m['map50_r'])} | "
                     f"{o}{fmt(m['map_f'])} / {fmt(m['map_r'])} | {fmt(m['h_mean'])} | {fmt(m.get('h_exact'))} | "
                     f"{accepted(r)} | {r['seconds']:.1f} |")
    shown = ["mAP50_f", "mAP50_r", *(["mAP50_o"] if has_o else []), "mAP_f / mAP_r", "H (mAP)", "H_exact (mAP)",
             "accepted"]
    return [*lines, "", "mAP from torchmetrics' MeanAveragePrecision (pycocotools backend).", *_legend(shown)]


def per_class_section(manifest: dict[str, Any], *, unit: str = "top-1 accuracy", limit: int = 20) -> list[str]:
    """Per request: each forget class before -> after, and the retained classes (all of them up to ``limit``
    classes, else the ten that changed most)."""
    classes = manifest["dataset"]["classes"]
    lines = ["## Per-class changes", "", f"Per-class test {unit} (percent) before and after each request.", ""]
    for r in manifest["requests"]:
        per = r["metrics"].get("per_class")
        if not per:
            continue
        before, after = per["before"], per["after"]
        retained = [c for c in r["retain_classes"] if before[c] is not None and after[c] is not None]
        changes = sorted(retained, key=lambda c: -abs(after[c] - before[c]))
        shown = retained if len(retained) <= limit else changes[:10]
        lines += [f"### Request {r['index']}: {', '.join(r['forget_class_names'])}", "",
                  "| class | role | before | after | change |", "|---|---|---|---|---|"]
        for c in r["forget_classes"]:
            delta = None if before[c] is None or after[c] is None else after[c] - before[c]
            lines.append(f"| {classes[c]} | forget | {fmt(before[c])} | {fmt(after[c])} | {fmt(delta, 2)} |")
        for c in shown:
            lines.append(f"| {classes[c]} | retained | {fmt(before[c])} | {fmt(after[c])} | "
                         f"{after[c] - before[c]:+.2f} |")
        if len(shown) < len(retained):
            rest = [after[c] - before[c] for c in retained if c not in shown]
            lines.append(f"| {len(rest)} other retained classes | retained | | | "
                         f"{min(rest):+.2f} to {max(rest):+.2f} |")
        lines.append("")
    return lines


def settings_section(manifest: dict[str, Any]) -> list[str]:
    """The hyper-parameters each request ran with (once when every request shares them)."""
    lines = ["## Settings", ""]
    seen: dict[str, list[int]] = {}
    for r in manifest["requests"]:
        t = r.get("train") or {}
        key = (f"method `{_inline(r.get('method', {}))}`; train: {r.get('steps', '?')} steps ({t.get('epochs')} "
               f"epochs, at least {t.get('min_steps')} steps), batch {t.get('batch_size')} + {t.get('batch_size')}, "
               f"lr {t.get('lr')} -> {t.get('min_lr')}, weight decay {t.get('weight_decay')}, seed {t.get('seed')}; "
               f"data: {_inline(r.get('sequence', {}))}")
        seen.setdefault(key, []).append(r["index"])
    for key, indices in seen.items():
        which = "every request" if len(seen) == 1 else f"request(s) {', '.join(map(str, indices))}"
        lines.append(f"- {which}: {key}")
    return [*lines, ""]


def _inline(mapping: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in mapping.items())




def verification_section(manifest: dict[str, Any]) -> list[str]:
    """The latest verification of every request (on the run's latest model), and the reference's where measured."""
    entries = manifest.get("verification") or []
    if not entries:
        return []
    latest = entries[-1]
    rows = {str(r["id"]): r for r in manifest["requests"] if "id" in r}
    has_faces = any("faces" in g for g in latest["results"].values())
    face_header = " TAR@1e-2 f / r | prototype similarity f / r |" if has_faces else ""
    lines = ["## Verification", "",
             f"Measured {latest['time']}{measured_on(latest)} on the model after request id {latest['after_request']}, "
             "for every request so far (forgetting must survive later edits). 95% bootstrap intervals in brackets.", "",
             "| request | classes | MIA AUC | called members | probe (held-out train) | probe (test) | relearn steps |"
             + face_header, "|---" * (7 + 2 * has_faces) + "|"]
    for name, group in latest["results"].items():
        mia, probe, relearn, faces = (group.get(k) or {} for k in ("mia", "probe", "relearn", "faces"))
        record = rows.get(name, {})
        steps = "-" if not relearn else (f"> {relearn.get('max_steps')}" if relearn.get("capped") else
                                         str(relearn.get("steps")))
        cells = [str(record.get("index", name)), ", ".join(record.get("forget_class_names", [])),
                 ci(mia.get("auc"), mia.get("auc_ci")), ci(mia.get("member_share"), mia.get("member_share_ci")),
                 ci(probe.get("accuracy"), probe.get("accuracy_ci"), 1),
                 ci(probe.get("test_accuracy"), probe.get("test_accuracy_ci"), 1), steps]
        if has_faces:
            tar = faces.get("tar") or {}
            cells += [f"{fmt(tar.get('far=0.01'))} / {fmt((faces.get('tar_retained') or {}).get('far=0.01'))}",
                      f"{fmt(faces.get('prototype_similarity'), 3)} / "
                      f"{fmt(faces.get('prototype_similarity_retained'), 3)}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "- MIA AUC: a population membership-inference attack (loss, confidence, entropy; logistic regression "
              "fitted on retained classes' training vs test images) asked about the request's training vs test "
              "images: 0.5 means the training images look unseen, as after retraining without them",
              "- called members: share of the request's training images the attack calls members",
              "- probe: a linear probe on the frozen embeddings fitted on training images of every class; its accuracy "
              "on held-out training images and on test images of the request's classes (residual knowledge)",
              "- relearn steps: k-shot fine-tuning steps until the request's classes reach half their accuracy "
              "before the request (fewer = the knowledge was still there)",
              *(["- TAR@1e-2, prototype similarity: face verification of the request's identities (f) and the "
                 "retained ones (r), and cosine similarity of their test embeddings to their prototypes in the "
                 "original model"] if has_faces else []), ""]
    reference = latest.get("reference")
    if reference:
        lines += [f"Against the reference `{reference['checkpoint']}` (retrained without the forgotten classes): "
                  "method / reference / difference.", "",
                  "| request | MIA AUC | called members | probe (held-out train) | relearn steps |",
                  "|---|---|---|---|---|"]
        for name, row in reference["versus"].items():
            cells = []
            for key in ("mia_auc", "mia_member_share", "probe_accuracy", "relearn_steps"):
                v = row[key]
                cells.append(f"{fmt(v['method'])} / {fmt(v['reference'])} / {fmt(v['difference'])}")
            lines.append(f"| {rows.get(name, {}).get('index', name)} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def ledger_section(manifest: dict[str, Any]) -> list[str]:
    rows = manifest.get("ledger") or []
    if not rows:
        return []
    lines = ["## Ledger", "", "| id | kind | classes | status | requester | reason | received | finished |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['id']} | {row['kind']} | {', '.join(row['class_names'])} | {row['status']} | "
                     f"{row.get('requester') or ''} | {row.get('reason') or ''} | {row.get('received') or ''} | "
                     f"{row.get('finished') or ''} |")
    return [*lines, ""]


def markdown_table(manifest: dict[str, Any]) -> str:
    """The short report the command line prints: header, request table and its legend."""
    lines = header(manifest, "gslora detection run" if manifest.get("task") == "detection" else "gslora run")
    if manifest.get("task") == "detection":
        lines += detection_request_table(manifest)
    else:
        lines += request_table(manifest)
    ratio = manifest["requests"][-1].get("trainable_ratio") if manifest["requests"] else None
    if ratio is not None:
        lines += [f"Trainable parameters: {100 * ratio:.2f}% of the base model.", ""]
    return "\n".join(lines)


def full_report(manifest: dict[str, Any]) -> str:
    """``report.md``: the table plus per-class changes, settings and the ledger."""
    unit = "mAP@0.5" if manifest.get("task") == "detection" else "top-1 accuracy"
    return "\n".join([markdown_table(manifest), *verification_section(manifest),
                      *per_class_section(manifest, unit=unit), *settings_section(manifest), *ledger_section(manifest)])
