"""The deployment gate: does the run's latest model meet every threshold for every request so far? And a signed
certificate of the answer (the ledger's rows, the artefacts' SHA-256, the figures) for whoever ships the model.

Signatures: with an Ed25519 private key (PEM, the ``cryptography`` library) the certificate carries an Ed25519
signature and the public key; with any other key file, an HMAC-SHA256 (Python's ``hmac``). The signed bytes are the
certificate without its ``signature`` field, as canonical JSON (sorted keys, no spaces).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gslora.config import require, to_dict
from gslora.engine.ledger import now
from gslora.engine.rundir import RunDirectory, deferred_signals, manifest_from
from gslora.errors import GSLoRAError
from gslora.io import atomic_write_json
from gslora.version import __version__, code_version

CERTIFICATE = "certificate.json"


@dataclass
class GateConfig:
    """Thresholds a run's latest model must meet for every request so far (``None``: not checked).

    Args:
        max_acc_f: each request's classes' test accuracy on the latest model, percent, at most.
        max_mia_auc: membership-inference AUC of each request's classes, at most (0.5 = looks unseen).
        max_probe_accuracy: linear-probe accuracy (held-out training images) on each request's classes, at most.
        min_acc_r_ratio: the retained classes' accuracy on the latest model over the original model's, at least.
        max_mia_auc_vs_retrain: each request's MIA AUC minus the Retrain reference's, at most (needs a reference).
        max_probe_vs_retrain: probe accuracy minus the reference's, in points, at most (needs a reference).
        max_mia_auc_gap_to_retrain: the distance |MIA AUC - Retrain's|, at most: issue 12's "within 0.05 of Retrain",
            which a model that forgets more than Retrain would (one that looks less like its training data than a
            model that never saw it, which itself tells that the class was there) misses too.
        max_probe_gap_to_retrain: the distance |probe accuracy - Retrain's|, in points, at most ("within 5 points").
    """

    max_acc_f: float | None = None
    max_mia_auc: float | None = None
    max_probe_accuracy: float | None = None
    min_acc_r_ratio: float | None = None
    max_mia_auc_vs_retrain: float | None = None
    max_probe_vs_retrain: float | None = None
    max_mia_auc_gap_to_retrain: float | None = None
    max_probe_gap_to_retrain: float | None = None

    def __post_init__(self) -> None:
        for name, value in to_dict(self).items():
            require(value is None or (isinstance(value, (int, float)) and value == value), f"gate.{name}", value,
                    "must be a number")
        for name in (key for key, _, two_sided in _VERSUS_RETRAIN if two_sided):
            value = getattr(self, name)
            require(value is None or value >= 0, f"gate.{name}", value, "must be a distance, >= 0")
        if all(v is None for v in to_dict(self).values()):
            raise GSLoRAError("the gate needs at least one threshold, for example --max-acc-f 1 --max-mia-auc 0.55")


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def evaluate_gate(manifest: dict[str, Any], config: GateConfig) -> tuple[list[str], dict[str, Any]]:
    """(misses, one line each; the figures checked per request) for the run in ``manifest``."""
    requests = [r for r in manifest["requests"] if r.get("kind", "forget") == "forget"]
    if not requests:
        raise GSLoRAError("the run has no applied request to gate")
    latest = manifest["requests"][-1]
    per_class = (latest.get("metrics") or {}).get("per_class")
    needs_verification = any(getattr(config, k) is not None for k in ("max_mia_auc", "max_probe_accuracy",
                                                                     *(key for key, *_ in _VERSUS_RETRAIN)))
    verification = (manifest.get("verification") or [None])[-1]
    if needs_verification:
        if verification is None:
            raise GSLoRAError("the run has no verification; run `gslora verify --run RUN` before gating on MIA or "
                              "probe thresholds")
        if verification["after_request"] != latest.get("id"):
            raise GSLoRAError("the run's latest verification is older than its latest model; run `gslora verify --run "
                              "RUN` first")
    misses, figures = [], {}
    forgotten = [c for r in requests for c in r["forget_classes"]]
    for r in requests:
        name, classes = ", ".join(r["forget_class_names"]), r["forget_classes"]
        row: dict[str, Any] = {"index": r["index"], "id": r.get("id"), "classes": r["forget_class_names"]}
        if config.max_acc_f is not None:
            if per_class is None:
                raise GSLoRAError("the run's records lack per-class accuracy (a run of gslora < 0.2); add a request or "
                                  "gate without --max-acc-f")
            row["acc_f"] = _mean([per_class["after"][c] for c in classes])
            if row["acc_f"] is not None and row["acc_f"] > config.max_acc_f:
                misses.append(f"request {r['index']} ({name}): Acc_f {row['acc_f']:.2f} > {config.max_acc_f:g}")
        group = (verification or {}).get("results", {}).get(str(r.get("id")), {}) if verification else {}
        versus = ((verification or {}).get("reference") or {}).get("versus", {}).get(str(r.get("id")), {})
        for key, (section, field) in (("max_mia_auc", ("mia", "auc")), ("max_probe_accuracy", ("probe", "accuracy"))):
            limit = getattr(config, key)
            value = (group.get(section) or {}).get(field)
            row[f"{section}_{field}"] = value
            if limit is not None and (value is None or value > limit):
                misses.append(f"request {r['index']} ({name}): {_LABEL[f'{section}_{field}']} {_show(value)} > "
                              f"{limit:g}")
        checks = [(key, headline, two_sided) for key, headline, two_sided in _VERSUS_RETRAIN
                  if getattr(config, key) is not None]
        for headline in dict.fromkeys(headline for _, headline, _ in checks):
            row[f"{headline}_vs_retrain"] = (versus.get(headline) or {}).get("difference")
        if checks and any(row[f"{headline}_vs_retrain"] is None for _, headline, _ in checks):
            misses.append(f"request {r['index']} ({name}): no Retrain reference measured; run `gslora verify "
                          "--run RUN --reference CKPT`")
        for key, headline, two_sided in checks:
            difference, limit = row[f"{headline}_vs_retrain"], getattr(config, key)
            label = _LABEL[headline]
            if difference is not None and two_sided and abs(difference) > limit:
                side = "below Retrain's: it forgets more than Retrain" if difference < 0 else "above Retrain's"
                misses.append(f"request {r['index']} ({name}): {label} {abs(difference):.3g} {side} (farther than "
                              f"{limit:g})")
            elif difference is not None and not two_sided and difference > limit:
                misses.append(f"request {r['index']} ({name}): {label} minus Retrain's {difference:.3g} > {limit:g}")
        figures[str(r.get("id"))] = row
    if config.min_acc_r_ratio is not None:
        base = (manifest.get("base_metrics") or {}).get("per_class")
        if per_class is None or base is None:
            raise GSLoRAError("the run lacks per-class accuracy of the original or latest model; gate without "
                              "--min-acc-r-ratio")
        retained = [c for c in range(len(base)) if c not in forgotten]
        now_r, then_r = _mean([per_class["after"][c] for c in retained]), _mean([base[c] for c in retained])
        ratio = now_r / then_r if now_r is not None and then_r else None
        figures["retained"] = {"acc_r": now_r, "acc_r_original": then_r, "ratio": ratio}
        if ratio is None or ratio < config.min_acc_r_ratio:
            misses.append(f"retained classes: Acc_r {_show(now_r)} is {_show(ratio)} of the original model's "
                          f"{_show(then_r)} (< {config.min_acc_r_ratio:g})")
    return misses, figures


#: the thresholds against the Retrain reference: (GateConfig field, headline figure, |difference| or difference)
_VERSUS_RETRAIN = (("max_mia_auc_vs_retrain", "mia_auc", False), ("max_probe_vs_retrain", "probe_accuracy", False),
                   ("max_mia_auc_gap_to_retrain", "mia_auc", True),
                   ("max_probe_gap_to_retrain", "probe_accuracy", True))
#: how a miss line names each headline figure
_LABEL = {"mia_auc": "MIA AUC", "probe_accuracy": "probe accuracy"}


def _show(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def canonical(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def sign(payload: dict[str, Any], key_file: str | Path) -> dict[str, Any]:
    """The signature of ``payload``: Ed25519 when ``key_file`` is a PEM Ed25519 private key, else HMAC-SHA256."""
    key = Path(key_file)
    try:
        raw = key.read_bytes()
    except OSError as exc:
        raise GSLoRAError(f"cannot read signing key {str(key)!r} ({exc.strerror or exc}); pass a readable key "
                          "file") from exc
    if b"PRIVATE KEY" in raw:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        try:
            private = serialization.load_pem_private_key(raw, password=None)
        except (ValueError, TypeError) as exc:
            raise GSLoRAError(f"{str(key)!r} is not an unencrypted PEM private key ({exc})") from exc
        if not isinstance(private, Ed25519PrivateKey):
            raise GSLoRAError(f"{str(key)!r} is not an Ed25519 key; create one with `openssl genpkey -algorithm "
                              "ed25519`, or use any secret file for an HMAC")
        public = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        return {"algorithm": "ed25519", "value": private.sign(canonical(payload)).hex(), "public_key": public}
    return {"algorithm": "hmac-sha256", "value": hmac.new(raw, canonical(payload), hashlib.sha256).hexdigest(),
            "key_sha256": hashlib.sha256(raw).hexdigest()}


def check_signature(certificate: dict[str, Any], key_file: str | Path) -> bool:
    """Whether ``certificate`` was signed with the trusted key in ``key_file``: for Ed25519 the public key (PEM) or
    the private key it belongs to; for HMAC the shared secret. The public key a certificate carries is never trusted
    on its own (anyone can re-sign an edited certificate with a key of their own).

    Raises:
        GSLoRAError: an unreadable key, or a key of the wrong kind for the certificate's signature.
    """
    signature = certificate.get("signature") or {}
    payload = {k: v for k, v in certificate.items() if k != "signature"}
    try:
        raw = Path(key_file).read_bytes()
    except OSError as exc:
        raise GSLoRAError(f"cannot read key {str(key_file)!r} ({exc.strerror or exc}); pass the trusted key") from exc
    if signature.get("algorithm") == "ed25519":
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

        try:
            key = serialization.load_pem_private_key(raw, password=None) if b"PRIVATE KEY" in raw else \
                serialization.load_pem_public_key(raw)
        except (ValueError, TypeError) as exc:
            raise GSLoRAError(f"{str(key_file)!r} is not a PEM Ed25519 key ({exc})") from exc
        public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
        if not isinstance(public, Ed25519PublicKey):
            raise GSLoRAError(f"{str(key_file)!r} is not an Ed25519 key, but the certificate is signed with Ed25519")
        try:
            public.verify(bytes.fromhex(signature["value"]), canonical(payload))
            return True
        except (InvalidSignature, ValueError):
            return False
    if signature.get("algorithm") == "hmac-sha256":
        expected = hmac.new(raw, canonical(payload), hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, str(signature.get("value", "")))
    return False


def gate(run_dir: str | Path, config: GateConfig, *, key: str | Path | None = None) -> dict[str, Any]:
    """Check ``config`` on the run's latest model; write ``certificate.json`` in the run; record it in the ledger.

    Returns the certificate (``passed``, ``misses``, figures, hashes, signature).
    """
    with RunDirectory.lock(Path(run_dir), create=False) as run:
        assert run.ledger is not None
        manifest = manifest_from(run.ledger)
        latest_dir = run.latest_model()  # checks the latest model's bytes against the ledger
        misses, figures = evaluate_gate(manifest, config)
        latest = manifest["requests"][-1]
        certificate = {
            "run": str(Path(run_dir).resolve()), "created": now(), "gslora_version": __version__,
            "code_version": code_version(), "thresholds": to_dict(config), "passed": not misses, "misses": misses,
            "figures": figures, "base": manifest["base"],
            "latest_model": {"path": str(latest_dir), "sha256": latest["checkpoint_sha256"]},
            "verification": {k: (manifest["verification"] or [{}])[-1].get(k) for k in ("id", "time", "after_request")}
            if manifest.get("verification") else None,
            "requests": [{k: row.get(k) for k in ("id", "kind", "class_names", "status", "requester", "reason",
                                                  "received", "started", "finished", "target")}
                         | {"artefacts": row.get("artefacts")} for row in run.ledger.rows()],
        }
        certificate["signature"] = sign(certificate, key) if key else None
        with deferred_signals(after=f"interrupted after the gate wrote {run.path / CERTIFICATE}"):
            atomic_write_json(run.path / CERTIFICATE, certificate)
            with run.ledger.transaction() as db:
                run.ledger.event(db, "gate", {"passed": not misses, "misses": misses, "thresholds": to_dict(config),
                                              "signed": bool(key)})
            run.export()
    return certificate
