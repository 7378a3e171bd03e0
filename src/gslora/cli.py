"""The ``gslora`` command line: parses arguments into config objects and calls the library.

Exit codes: 0 success, 1 a gate that said no, 2 bad input (the message names the problem and the fix), 3 a request
that ran but was not accepted, 130/143 interrupted, 70 anything else (a bug).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from gslora.errors import GSLoRAError

log = logging.getLogger("gslora")


def _progress_factory(enabled: bool):
    from tqdm.auto import tqdm

    def factory(total: int, desc: str) -> AbstractContextManager:
        interactive = sys.stderr.isatty()  # in a log file, one line every 30 s instead of a live bar
        return tqdm(total=total, desc=desc, unit="step", leave=interactive, disable=not enabled, dynamic_ncols=True,
                    mininterval=0.1 if interactive else 30.0)

    return factory


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree[a][b] = value`` for ``dotted = "a.b"`` when ``value`` is given."""
    if value is None:
        return
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def _apply_sets(tree: dict[str, Any], assignments: list[str] | None) -> None:
    """Apply ``--set a.b=value`` overrides; values are parsed as YAML (numbers, lists, true/false)."""
    import yaml

    from gslora.config import yaml_problem

    for item in assignments or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise GSLoRAError(f"--set {item!r}: use --set section.key=value, for example --set method.w_r=0.1")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise GSLoRAError(f"--set {item!r}: the value is not valid YAML ({yaml_problem(exc)})") from exc
        _set(tree, key.strip(), value)


def _split_classes(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def _load_config(path: str | None, sections: tuple[str, ...]) -> dict[str, Any]:
    """The config file as a mapping; each named section that is present must be a mapping too."""
    from gslora.config import load_yaml

    tree = load_yaml(path) if path else {}
    for key in sections:
        if tree.get(key) is None:
            tree.pop(key, None)
        elif not isinstance(tree[key], dict):
            raise GSLoRAError(f"{key}: in {path} must be a mapping (for example {key}: {{...}}), got {tree[key]!r}")
    return tree


# -- pretrain -------------------------------------------------------------------------------------

def cmd_pretrain(args: argparse.Namespace) -> int:
    from gslora.config import DataConfig, PretrainConfig, default_patch_size, from_dict
    from gslora.data import for_model, load_dataset
    from gslora.engine import run_pretraining

    tree = _load_config(args.config, ("model", "data", "train", "distill"))
    if (args.task or tree.get("task")) == "detection":
        return _pretrain_detection(args, tree)
    tree = pretrain_tree(args, tree)
    out = _pretrain_out(tree, args.overwrite)
    model = tree.get("model") if isinstance(tree.get("model"), dict) else {}
    dataset = load_dataset(for_model(from_dict(DataConfig, tree.get("data"), "data"), model))
    size = model.get("image_size", dataset.image_shape[1])
    by_shape = {"in_chans": dataset.image_shape[0], "patch_size": default_patch_size(size)}  # a named model: RGB
    tree["model"] = {"num_classes": dataset.num_classes, "image_size": size,
                     **(by_shape if "name" not in model else {"in_chans": 3}),
                     **(tree.get("model") or {})}  # the data's shape unless given
    if "warmup_epochs" not in (tree.get("train") or {}) and (tree.get("train") or {}).get("epochs", 10) <= 1:
        tree.setdefault("train", {})["warmup_epochs"] = 0
    config = from_dict(PretrainConfig, tree)
    from gslora.engine import distributed

    digest, info = run_pretraining(config, distributed.writable_path(out), overwrite=args.overwrite, dataset=dataset,
                                   progress=_progress_factory(not args.quiet))
    margin = f" (margin-penalised {info['test_acc_margin']:.2f}%)" if "test_acc_margin" in info else ""
    done = "imported" if config.train.epochs == 0 else "pre-trained"
    print(f"{done} {config.model.family} model on {dataset.name}: test accuracy {info['test_acc']:.2f}%{margin} "
          f"in {info['seconds']:.0f}s")
    print(f"checkpoint: {out} (sha256 {digest[:16]})")
    return 0


def pretrain_tree(args: argparse.Namespace, tree: dict[str, Any]) -> dict[str, Any]:
    """The config file's tree with the command line's options and ``--set`` applied (what a classification
    pre-training will be built from, before the data fill in the model's shape)."""
    tree.pop("task", None)
    for dotted, value in (("data.dataset", args.data), ("model.family", args.family), ("model.name", args.name),
                          ("model.depth", args.depth), ("model.width", args.width), ("model.heads", args.heads),
                          ("model.patch_size", args.patch_size), ("model.image_size", args.image_size),
                          ("model.pretrained", args.pretrained or None), ("model.weights", args.weights),
                          ("model.replace_head", args.replace_head or None),
                          ("train.epochs", args.epochs), ("train.lr", args.lr), ("train.batch_size", args.batch_size),
                          ("train.augment", args.augment), ("train.device", args.device), ("out", args.out),
                          ("distill.teacher", args.teacher), ("distill.weight", args.distill_weight),
                          ("exclude_classes", _split_classes(args.exclude_classes) if args.exclude_classes else None)):
        _set(tree, dotted, value)
    _apply_sets(tree, args.set)
    return tree


def _pretrain_out(tree: dict[str, Any], overwrite: bool) -> str:
    """The checkpoint directory to write (``out`` of the config), refused if it holds something already."""
    out = tree.pop("out", None)
    if not out:
        raise GSLoRAError("no output directory: pass --out DIR (or 'out:' in the config file)")
    if Path(out).exists() and (not Path(out).is_dir() or any(Path(out).iterdir())) and not overwrite:
        raise GSLoRAError(f"{out!r} already exists; pass --overwrite to replace it or choose another --out")
    return out


def _pretrain_detection(args: argparse.Namespace, tree: dict[str, Any]) -> int:
    from gslora.config import from_dict
    from gslora.detection import DetectionPretrainConfig, run_detector_pretraining

    tree.pop("task", None)
    for dotted, value in (("data.dataset", args.data), ("model.name", args.name), ("data.image_size", args.image_size),
                          ("model.pretrained", args.pretrained or None), ("train.epochs", args.epochs),
                          ("train.lr", args.lr), ("train.batch_size", args.batch_size), ("train.device", args.device),
                          ("out", args.out),
                          ("exclude_classes", _split_classes(args.exclude_classes) if args.exclude_classes else None)):
        _set(tree, dotted, value)
    _apply_sets(tree, args.set)
    out = _pretrain_out(tree, args.overwrite)
    config = from_dict(DetectionPretrainConfig, tree)
    digest, info = run_detector_pretraining(config, out, overwrite=args.overwrite,
                                            progress=_progress_factory(not args.quiet))
    print(f"pre-trained detector on {config.data.dataset}: test mAP@0.5 {info['map50']:.2f}%, mAP {info['map']:.2f}% "
          f"in {info['seconds']:.0f}s")
    print(f"checkpoint: {out} (sha256 {digest[:16]})")
    return 0


def _task_of(args: argparse.Namespace, tree: dict[str, Any]) -> str:
    """``detection`` when the checkpoint is a detector's, else ``classification`` (a run records its task)."""
    checkpoint = args.checkpoint or tree.get("checkpoint")
    meta_path = Path(checkpoint) / "config.json" if checkpoint else None
    try:
        return json.loads(meta_path.read_text()).get("task", "classification") if meta_path else "classification"
    except (OSError, json.JSONDecodeError, AttributeError):
        return "classification"  # the classification path reports the unreadable file


# -- forget ---------------------------------------------------------------------------------------

def _read_requests(path: str) -> list[list[str | int]]:
    import yaml

    from gslora.config import load_yaml, yaml_problem

    if not Path(path).is_file():
        load_yaml(path)  # raises the "does not exist" error
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise GSLoRAError(f"requests file {path!r} is not valid YAML ({yaml_problem(exc)}); fix the file") from exc
    requests = data.get("requests") if isinstance(data, dict) else data
    if not isinstance(requests, list) or not requests:
        raise GSLoRAError(f"{path} must hold 'requests:', a list of requests, each a list of class names or ids")
    return requests


def cmd_forget(args: argparse.Namespace) -> int:
    from gslora.config import from_dict
    from gslora.engine import resume_config, run_forgetting
    from gslora.report import run_table
    from gslora.report.markdown import verification_section
    from gslora.tasks import get_task

    if bool(args.out) == bool(args.run):
        raise GSLoRAError("pass exactly one of --out DIR (start a run) or --run DIR (add requests to a run)")
    tree = _load_config(args.config, ("data", "sequence", "method", "train"))
    if args.classes is not None:
        classes = _split_classes(args.classes)
        if not classes:
            raise GSLoRAError("--classes is empty; name the classes to forget, for example --classes Bag,Trouser")
        _set(tree, "sequence.requests", [classes])
    elif args.requests:
        _set(tree, "sequence.requests", _read_requests(args.requests))
    for dotted, value in (("checkpoint", args.checkpoint), ("data.dataset", args.data),
                          ("sequence.num_requests", args.num_requests),
                          ("sequence.classes_per_request", args.classes_per_request),
                          ("sequence.ratio", args.ratio), ("sequence.shots", args.shots),
                          ("sequence.missing_classes", args.missing_classes),
                          ("train.epochs", args.epochs), ("train.lr", args.lr), ("train.batch_size", args.batch_size),
                          ("train.device", args.device), ("acceptance.accept_partial", args.accept_partial or None)):
        _set(tree, dotted, value)
    _apply_sets(tree, args.set)
    method = dict(tree.get("method", {}))
    if args.method and method.get("name", args.method) != args.method:
        method = {}  # another method: the file's hyper-parameters were for the one it named
    for key, value in (("name", args.method), ("beta", args.beta), ("bnd", args.bnd), ("alpha", args.alpha),
                       ("rank", args.rank)):
        _set(method, key, value)
    if method:
        tree["method"] = method
    if args.pending and not args.run:
        raise GSLoRAError("--pending processes the queue of an existing run: pass --run DIR")
    if args.run:
        if args.checkpoint:
            raise GSLoRAError("--checkpoint cannot change the model of an existing run; --run continues from the "
                              "run's latest model")
        sequence = tree.get("sequence", {})
        if not (sequence.get("requests") or args.num_requests or args.pending):
            raise GSLoRAError("--run needs the next request: pass --classes A,B, --requests FILE, --num-requests N "
                              "or --pending")
        config = resume_config(args.run, tree)
        run_dir, resume = args.run, True
    else:
        tree["method"] = {"name": "gs_lora", **tree.get("method", {})}
        config = from_dict(get_task(_task_of(args, tree)).config_class, tree)
        run_dir, resume = args.out, False
    from gslora.engine import distributed

    manifest = run_forgetting(config, distributed.writable_path(run_dir), resume=resume, pending=args.pending,
                              requester=args.requester, reason=args.reason, progress=_progress_factory(not args.quiet))
    print(run_table(manifest))
    verification = verification_section(manifest)
    if verification:
        print("\n".join(verification))
    print(f"run directory: {run_dir} (latest model: {Path(run_dir) / manifest['latest_checkpoint']}; report: "
          f"{Path(run_dir) / 'report.md'}, {Path(run_dir) / 'report.html'})")
    return 0


# -- compare --------------------------------------------------------------------------------------

def cmd_compare(args: argparse.Namespace) -> int:
    from gslora.config import from_dict
    from gslora.engine import CompareConfig, compare

    tree = _load_config(args.config, ("data", "sequence", "train", "methods"))
    for dotted, value in (("checkpoint", args.checkpoint), ("data.dataset", args.data),
                          ("sequence.num_requests", args.num_requests),
                          ("sequence.classes_per_request", args.classes_per_request),
                          ("sequence.ratio", args.ratio), ("sequence.shots", args.shots),
                          ("train.epochs", args.epochs), ("train.device", args.device)):
        _set(tree, dotted, value)
    _apply_sets(tree, args.set)
    if args.method_names:
        from gslora.methods import METHODS

        methods = tree.setdefault("methods", {})
        for name in _split_classes(args.method_names):
            METHODS.get(name)  # unknown names fail here, listing the valid ones
            methods.setdefault(name, {"name": name})
    config = from_dict(CompareConfig, tree)
    only = _split_classes(args.only) if args.only else None
    from gslora.engine import distributed

    out = distributed.writable_path(args.out)
    compare(config, out, only=only, progress=_progress_factory(not args.quiet))
    print((Path(out) / "comparison.md").read_text())  # as written, paired intervals included (not scored twice)
    print(f"comparison written to {Path(args.out) / 'comparison.md'} (.json, .png; runs/ holds each method's run)")
    return 0


# -- evaluate -------------------------------------------------------------------------------------

def cmd_evaluate(args: argparse.Namespace) -> int:
    from gslora.config import DataConfig, from_dict
    from gslora.data import for_model, load_dataset, resolve_classes
    from gslora.engine import predict
    from gslora.engine.loop import resolve_device
    from gslora.metrics import accuracy, per_class_accuracy, taken_for
    from gslora.models import load_checkpoint, read_checkpoint_meta

    tree = _load_config(args.config, ("data",))
    _set(tree, "data.dataset", args.data)
    checkpoint = args.checkpoint or tree.get("checkpoint")
    if not checkpoint:
        raise GSLoRAError("pass --checkpoint DIR (a gslora checkpoint or a run's requests/NNN/model)")
    _, meta = read_checkpoint_meta(checkpoint)
    dataset = load_dataset(for_model(from_dict(DataConfig, tree.get("data"), "data"), meta.get("model")))
    if meta.get("classes") and meta["classes"] != dataset.classes:
        raise GSLoRAError(f"checkpoint {checkpoint!r} was trained on other classes than {dataset.name}; pass the "
                          "data set it was trained on")
    model, _ = load_checkpoint(checkpoint)
    device = resolve_device(args.device or "auto")
    everything = predict(model.to(device), dataset.test, device=device)
    predictions, labels = everything.top1, dataset.test.labels
    per_class = per_class_accuracy(predictions, labels, dataset.num_classes)
    result: dict[str, Any] = {"checkpoint": str(checkpoint), "dataset": dataset.name,
                              "accuracy": accuracy(predictions, labels, range(dataset.num_classes)),
                              "per_class": dict(zip(dataset.classes, per_class)),
                              "taken_for": taken_for(predictions, labels, dataset.classes)}
    if everything.margin_top1 is not None:
        result["margin_accuracy"] = accuracy(everything.margin_top1, labels, range(dataset.num_classes))
    ids, rest = [], list(range(dataset.num_classes))
    if args.classes:
        ids = resolve_classes(_split_classes(args.classes), dataset.classes)
        rest = [c for c in range(dataset.num_classes) if c not in ids]
        result["selected"] = {"classes": [dataset.classes[c] for c in ids],
                              "accuracy": accuracy(predictions, labels, ids),
                              "accuracy_other": accuracy(predictions, labels, rest) if rest else None}
    if args.verify:
        if not args.classes:
            raise GSLoRAError("--verify measures forgetting of --classes A,B; name the classes that were forgotten")
        result["verification"] = _verify_checkpoint(args, model, dataset, ids, rest, device)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    margin = f" (margin-penalised {result['margin_accuracy']:.2f}%)" if "margin_accuracy" in result else ""
    print(f"{dataset.name}: top-1 accuracy {result['accuracy']:.2f}%{margin} on {len(labels)} test images")
    print("| class | accuracy | most often taken for |\n|---|---|---|")
    for name, acc in result["per_class"].items():
        other = next(iter(result["taken_for"][name].items()), None)
        print(f"| {name} | {'-' if acc is None else f'{acc:.2f}'} | "
              f"{'-' if other is None else f'{other[0]} {other[1]:.2f}%'} |")
    if "selected" in result:
        sel = result["selected"]
        other = sel["accuracy_other"]
        print(f"selected classes ({', '.join(sel['classes'])}): {sel['accuracy']:.2f}%; other classes: "
              f"{'-' if other is None else f'{other:.2f}%'}")
    if "verification" in result:
        from gslora.report.markdown import verification_section

        v = result["verification"]
        print("\n".join(verification_section({"requests": [], "verification": [
            {"time": "now", "after_request": None, "results": v["results"], "reference": v.get("reference")}]})))
    return 0


def _verify_checkpoint(args: argparse.Namespace, model, dataset, ids: list[int], rest: list[int], device) -> dict:
    """The verification suite on a bare checkpoint for the classes ``ids`` (with ``--original``: the relearn target
    and face prototypes; with ``--reference``: the same figures on a model retrained without them)."""
    from gslora.engine import predict
    from gslora.engine.verify import measure
    from gslora.metrics import accuracy
    from gslora.models import load_checkpoint
    from gslora.tasks import get_task
    from gslora.verification import VerifyConfig

    original = load_checkpoint(args.original)[0].to(device) if args.original else None
    before = {"selected": accuracy(predict(original, dataset.test, device=device).top1, dataset.test.labels, ids)} \
        if original is not None else None
    reference = (args.reference, load_checkpoint(args.reference)[0].to(device)) if args.reference else None
    return measure(get_task("classification"), model, dataset, {"selected": ids}, rest,
                   VerifyConfig(relearn=original is not None), device=device, acc_before=before, original=original,
                   reference=reference)


# -- verify ---------------------------------------------------------------------------------------

def cmd_verify(args: argparse.Namespace) -> int:
    from gslora.config import from_dict
    from gslora.engine.verify import verify_run
    from gslora.report.markdown import verification_section
    from gslora.verification import VerifyConfig

    tree = _load_config(args.config, ("verify",))
    _apply_sets(tree, args.set)
    config = from_dict(VerifyConfig, tree.get("verify"), "verify") if tree.get("verify") else None
    out = verify_run(args.run, data={"dataset": args.data} if args.data else None, request=args.request,
                     reference=args.reference, config=config, device=args.device or "auto")
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    from gslora.engine import read_manifest

    print("\n".join(verification_section(read_manifest(args.run))))
    return 0


# -- rollback and gate ------------------------------------------------------------------------------

def cmd_rollback(args: argparse.Namespace) -> int:
    from gslora.engine.rollback import rollback

    out = rollback(args.run, request=args.request, data={"dataset": args.data} if args.data else None,
                   device=args.device or "auto")
    if out["exact"]:
        print(f"rolled back request id {out['rolled_back']} exactly: the latest model is {out['checkpoint']} again "
              f"(sha256 {out['sha256'][:16]}, checked byte for byte)")
    else:
        m = out["scores"]
        print(f"rolled back request id {out['rolled_back']} approximately (its edit subtracted from the latest "
              f"weights): restored classes {m['forget_before']:.2f} -> {m['forget']:.2f}, retained "
              f"{m['retain_before']:.2f} -> {m['retain']:.2f}; new latest model {out['checkpoint']}; every remaining "
              "request verified again")
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from gslora.engine.gate import GateConfig, gate

    # every threshold is an option of the same name (--max-acc-f -> max_acc_f)
    config = GateConfig(**{f.name: getattr(args, f.name) for f in fields(GateConfig)})
    key = args.key or os.environ.get("GSLORA_SIGNING_KEY")
    certificate = gate(args.run, config, key=key)
    for miss in certificate["misses"]:
        print(miss)
    signed = f", signed ({certificate['signature']['algorithm']})" if certificate["signature"] else ", unsigned"
    print(f"gate {'passed' if certificate['passed'] else 'failed'}: certificate {Path(args.run) / 'certificate.json'}"
          f"{signed}")
    return 0 if certificate["passed"] else 1


def cmd_check_certificate(args: argparse.Namespace) -> int:
    from gslora.engine.gate import check_signature

    try:
        certificate = json.loads(Path(args.certificate).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise GSLoRAError(f"cannot read certificate {args.certificate!r} ({exc}); pass a certificate.json") from exc
    if not isinstance(certificate, dict) or not certificate.get("signature"):
        print(f"{args.certificate}: not signed")
        return 1
    valid = check_signature(certificate, args.key)
    print(f"{args.certificate}: signature {'valid' if valid else 'INVALID'} ({certificate['signature']['algorithm']}); "
          f"gate {'passed' if certificate.get('passed') else 'failed'}; latest model sha256 "
          f"{(certificate.get('latest_model') or {}).get('sha256', '?')[:16]}")
    return 0 if valid else 1


# -- requests -------------------------------------------------------------------------------------

def cmd_requests(args: argparse.Namespace) -> int:
    from gslora.engine.queue import list_requests, queue_request, show_request

    if args.action == "add":
        classes = _split_classes(args.classes or "")
        request_id = queue_request(args.run, classes, requester=args.requester, reason=args.reason)
        print(f"queued request {request_id} ({', '.join(classes)}) in {args.run}; process the queue with "
              f"`gslora forget --run {args.run} --pending`")
        return 0
    if args.action == "show":
        print(json.dumps(show_request(args.run, args.id), indent=2))
        return 0
    rows = list_requests(args.run)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print("| id | kind | classes | status | requester | reason | received | finished | error |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        error = (row["error"] or "")[:80]
        print(f"| {row['id']} | {row['kind']} | {', '.join(row['class_names'])} | {row['status']} | "
              f"{row['requester'] or ''} | {row['reason'] or ''} | {row['received']} | {row['finished'] or ''} | "
              f"{error} |")
    return 0


# -- parser ---------------------------------------------------------------------------------------

def _defaults() -> dict[str, Any]:
    """Defaults shown in --help, read from the config dataclasses (importing gslora.config needs no torch)."""
    from gslora.config import PRETRAIN_TRAIN, DataConfig, SequenceConfig, TrainConfig

    sequence, train, data = SequenceConfig(), TrainConfig(), DataConfig()
    return {"ratio": sequence.ratio, "num_requests": sequence.num_requests, "per_request": sequence.classes_per_request,
            "epochs": train.epochs, "lr": train.lr, "batch": train.batch_size, "device": train.device,
            "dataset": data.dataset, "pre_lr": PRETRAIN_TRAIN["lr"], "pre_batch": PRETRAIN_TRAIN["batch_size"]}


#: GS-LoRA's defaults as the forget command's help states them (tests compare them with GSLoRAConfig)
GS_LORA_HELP_DEFAULTS = {"beta": 0.2, "bnd": 105.0, "alpha": 1e-4, "rank": 8}


def _pretrain_arguments(p: argparse.ArgumentParser, d: dict[str, Any], *, importing: bool) -> None:
    """The options of ``gslora pretrain`` (and of ``gslora import``, which trains for 0 epochs)."""
    p.add_argument("--config",
                   help="YAML file with model:, data:, train:, distill: and out: (and task:) (default: none)")
    p.add_argument("--task", choices=["classification", "detection"],
                   help="detection trains a Deformable DETR on COCO-format data (default: classification)")
    p.add_argument("--data", help=f"fashion-mnist, an .npz file or an ImageFolder directory (default: {d['dataset']})")
    p.add_argument("--family", help="model family: timm, torchvision or hf (default: timm)")
    p.add_argument("--name", help="model name of the family, or a local Hugging Face directory (default: none, a ViT "
                   "of the shape below)")
    p.add_argument("--depth", type=int, help="transformer blocks (default: 4)")
    p.add_argument("--width", type=int, help="embedding width (default: 128)")
    p.add_argument("--heads", type=int, help="attention heads (default: 4)")
    p.add_argument("--patch-size", type=int, help="patch size; must divide the image size (default: the divisor of "
                   "the image size closest to an 8x8 grid of patches)")
    p.add_argument("--image-size", type=int, help="input size (default: the data's)")
    p.add_argument("--pretrained", action="store_true", help="start from the family's pretrained weights; needs "
                   "network (default: off)")
    p.add_argument("--weights", help="start from a local .safetensors or .pth state dict (default: none)")
    p.add_argument("--replace-head", action="store_true", help="the weights' head has another number of classes: "
                   "leave it out and start a new head for the data set's classes (default: off)")
    if importing:
        p.set_defaults(epochs=0, lr=None, batch_size=None, augment=None, teacher=None, distill_weight=None,
                       exclude_classes=None)
    else:
        p.add_argument("--epochs", type=int, help="passes over the training split; 0 imports --weights without "
                       "training (default: 10)")
        p.add_argument("--lr", type=float, help=f"peak learning rate (default: {d['pre_lr']:g}; detection 2e-4)")
        p.add_argument("--batch-size", type=int, help=f"images per batch (default: {d['pre_batch']}; detection 16)")
        p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                       help="random shifts and flips (default: off)")
        p.add_argument("--teacher", help=".npz with one target embedding per training image (default: none)")
        p.add_argument("--distill-weight", type=float, help="weight of the distillation term (default: 10)")
        p.add_argument("--exclude-classes", metavar="A,B",
                       help="leave these classes' training images out (the head keeps them; a detector keeps the "
                       "images and learns their objects as background): a run's Retrain reference (default: none)")
    p.add_argument("--device", help=f"cpu, cuda, cuda:N or auto (default: {d['device']})")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="set any config field, for example --set model.head=cosface --set train.jitter=0.3 (default: "
                   "none; repeatable)")
    p.add_argument("--out", help="checkpoint directory to write (required here or in --config)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (default: refuse)")
    p.set_defaults(func=cmd_pretrain)


def build_parser() -> argparse.ArgumentParser:
    d = _defaults()
    parser = argparse.ArgumentParser(prog="gslora", description="Continual forgetting for vision transformers: "
                                     "erasure requests applied one after another, each proven and recorded.")
    parser.add_argument("--version", action="version", version=_version())
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true",
                        help="log progress details, and show the traceback of an error (default: off)")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars (default: bars on)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", parents=[common],
                       help="train a base ViT (or a detector) on all classes of a data set; save a checkpoint")
    _pretrain_arguments(p, d, importing=False)
    imp = sub.add_parser("import", parents=[common],
                         help="turn your own weights (timm, torchvision, transformers, a state dict) into a gslora "
                         "checkpoint for a data set, without training (pretrain --epochs 0)")
    _pretrain_arguments(imp, d, importing=True)

    f = sub.add_parser("forget", parents=[common],
                       help="apply erasure requests to a model; writes or extends a run directory")
    f.add_argument("--config", help="YAML file with checkpoint:, data:, sequence:, method:, train: (default: none)")
    f.add_argument("--checkpoint", help="base model: a directory written by `gslora pretrain` (required for --out)")
    f.add_argument("--data", help=f"fashion-mnist, an .npz file or an ImageFolder directory (default: {d['dataset']})")
    group = f.add_mutually_exclusive_group()
    group.add_argument("--classes",
                       help="one request: comma-separated class names or ids (default: none; or --requests, "
                       "--num-requests)")
    group.add_argument("--requests",
                       help="YAML file with a list of requests, each a list of class names or ids (default: none)")
    group.add_argument("--pending", action="store_true",
                       help="with --run: process the run's queued requests (`gslora requests add`) in order "
                       "(default: off)")
    f.add_argument("--num-requests", type=int,
                   help=f"requests taken from the end of the seeded class order (default: {d['num_requests']})")
    f.add_argument("--classes-per-request", type=int, help=f"with --num-requests (default: {d['per_request']})")
    f.add_argument("--ratio", type=float, help=f"fraction of each class's training images per request "
                   f"(default: {d['ratio']})")
    f.add_argument("--shots", type=int, help="training images per class per request, few-shot (default: none, "
                   "--ratio applies)")
    f.add_argument("--missing-classes", type=int,
                   help="the first M classes of the seeded order are retained without training data (default: 0)")
    f.add_argument("--method", help="registered method name (default: gs_lora)")
    f.add_argument("--beta", type=float,
                   help=f"GS-LoRA(++) forgetting weight (default: {GS_LORA_HELP_DEFAULTS['beta']})")
    f.add_argument("--bnd", help=f"GS-LoRA(++) bound of the forgetting loss, a number or auto (the starting "
                   f"model's cross-entropy of a wrong class; default: {GS_LORA_HELP_DEFAULTS['bnd']:g})")
    f.add_argument("--alpha", type=float, help=f"GS-LoRA(++) group-lasso weight (default: "
                   f"{GS_LORA_HELP_DEFAULTS['alpha']:g})")
    f.add_argument("--rank", type=int, help=f"GS-LoRA(++) LoRA rank (default: {GS_LORA_HELP_DEFAULTS['rank']})")
    f.add_argument("--epochs", type=int, help=f"passes over each request's retained subset (default: {d['epochs']})")
    f.add_argument("--lr", type=float, help=f"peak learning rate (default: {d['lr']:g})")
    f.add_argument("--batch-size", type=int, help=f"retain and forget images per step, each (default: {d['batch']})")
    f.add_argument("--device", help=f"cpu, cuda, cuda:N or auto (default: {d['device']})")
    f.add_argument("--accept-partial", action="store_true",
                   help="commit a request even when it misses the acceptance thresholds (forget classes still "
                   "recognised on their training images, or retained accuracy fell too far); default: refuse, exit 3")
    f.add_argument("--requester", help="who asked for the erasure, recorded in the ledger (default: none)")
    f.add_argument("--reason", help="why, or a ticket reference, recorded in the ledger (default: none)")
    f.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="set any config field, for example --set method.w_r=0.1 --set train.min_lr=1e-6 "
                   "(default: none; "
                   "repeatable)")
    f.add_argument("--out", help="new run directory (one of --out and --run is required)")
    f.add_argument("--run", help="existing run directory: apply the requests on top of its latest model (one of "
                   "--out and "
                   "--run is required)")
    f.set_defaults(func=cmd_forget)

    r = sub.add_parser("requests", parents=[common], help="queue erasure requests on a run, list and show them")
    actions = r.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", parents=[common], help="queue a request (run it with forget --run R --pending)")
    add.add_argument("--run", required=True, help="the run directory")
    add.add_argument("--classes", required=True, help="comma-separated class names or ids")
    add.add_argument("--requester", help="who asked for the erasure (default: none)")
    add.add_argument("--reason", help="why, or a ticket reference (default: none)")
    listing = actions.add_parser("list", parents=[common], help="every request of a run and its status")
    listing.add_argument("--run", required=True, help="the run directory")
    listing.add_argument("--json", action="store_true", help="print JSON (default: a Markdown table)")
    show = actions.add_parser("show", parents=[common], help="one request's ledger row, metrics and file hashes")
    show.add_argument("--run", required=True, help="the run directory")
    show.add_argument("id", type=int, help="the request's id (see `gslora requests list`)")
    r.set_defaults(func=cmd_requests)

    c = sub.add_parser("compare", parents=[common],
                       help="run several methods over the same requests; write a comparison table and plot")
    c.add_argument("--config", help="YAML file with checkpoint:, data:, sequence:, train: and methods: "
                                    "(label -> {name: registered method, its hyper-parameters, train: overrides}; "
                                    "default: none)")
    c.add_argument("--checkpoint",
                   help="base model: a directory written by `gslora pretrain` (required here or in --config)")
    c.add_argument("--data", help=f"fashion-mnist, an .npz file or an ImageFolder directory (default: {d['dataset']})")
    c.add_argument("--method-names", metavar="A,B",
                   help="add registered methods with their default hyper-parameters (for example gs_lora,ewc,lwf)")
    c.add_argument("--methods", dest="only", metavar="LABEL,LABEL",
                   help="run only these labels of the config; the others keep their results in --out (default: all)")
    c.add_argument("--num-requests", type=int, help=f"default: {d['num_requests']}")
    c.add_argument("--classes-per-request", type=int, help=f"default: {d['per_request']}")
    c.add_argument("--ratio", type=float, help=f"default: {d['ratio']}")
    c.add_argument("--shots", type=int, help="default: none, --ratio applies")
    c.add_argument("--epochs", type=int, help=f"default: {d['epochs']}")
    c.add_argument("--device", help=f"default: {d['device']}")
    c.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="set any config field, for example --set train.lr=1e-3 --set methods.ewc.penalty=5 (default: "
                   "none; repeatable)")
    c.add_argument("--out", required=True, help="comparison directory")
    c.set_defaults(func=cmd_compare)

    v = sub.add_parser("verify", parents=[common],
                       help="prove forgetting beyond accuracy: membership inference, linear probe, relearn time and "
                       "face figures on a run's latest model for every request, recorded in its ledger")
    v.add_argument("--run", required=True, help="the run directory")
    v.add_argument("--request", type=int, help="only this request id (default: every applied request)")
    v.add_argument("--reference", help="a checkpoint retrained without the run's forgotten classes (`gslora pretrain "
                   "--exclude-classes`): every figure is also measured on it (default: none)")
    v.add_argument("--data", help="the run's data set, if it moved (default: the path the run recorded)")
    v.add_argument("--config", help="YAML file with a verify: section (default: the run's settings)")
    v.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="for example --set verify.relearn_max_steps=400 (default: none; repeatable)")
    v.add_argument("--device", help=f"default: {d['device']}")
    v.add_argument("--json", action="store_true", help="print JSON (default: a Markdown table)")
    v.set_defaults(func=cmd_verify)

    rb = sub.add_parser("rollback", parents=[common],
                        help="undo the latest request exactly, or an earlier one approximately (recorded in the "
                        "ledger)")
    rb.add_argument("--run", required=True, help="the run directory")
    rb.add_argument("--request", type=int, help="an earlier request id to undo approximately, by subtracting its edit "
                    "from the latest weights (default: the latest request, undone exactly)")
    rb.add_argument("--data", help="the run's data set, if it moved (default: the path the run recorded)")
    rb.add_argument("--device", help=f"default: {d['device']}")
    rb.set_defaults(func=cmd_rollback)

    g = sub.add_parser("gate", parents=[common],
                       help="exit 0 when the latest model meets every threshold for every request, else 1 with one "
                       "line per miss; writes a (signed) certificate.json into the run")
    g.add_argument("--run", required=True, help="the run directory")
    g.add_argument("--max-acc-f", type=float, help="each request's classes' accuracy, percent, at most (default: "
                   "not checked)")
    g.add_argument("--max-mia-auc", type=float, help="membership-inference AUC per request, at most (default: not "
                   "checked)")
    g.add_argument("--max-probe-accuracy", type=float, help="linear-probe accuracy per request, at most (default: not "
                   "checked)")
    g.add_argument("--min-acc-r-ratio", type=float, help="retained accuracy over the original model's, at least "
                   "(default: not checked)")
    g.add_argument("--max-mia-auc-vs-retrain", type=float, help="MIA AUC minus the Retrain reference's, at most "
                   "(default: not checked)")
    g.add_argument("--max-probe-vs-retrain", type=float, help="probe accuracy minus the Retrain reference's, points, "
                   "at most (default: not checked)")
    g.add_argument("--max-mia-auc-gap-to-retrain", type=float, help="|MIA AUC - the Retrain reference's|, at most: "
                   "forgetting more than Retrain misses too (default: not checked)")
    g.add_argument("--max-probe-gap-to-retrain", type=float, help="|probe accuracy - the Retrain reference's|, points, "
                   "at most: forgetting more than Retrain misses too (default: not checked)")
    g.add_argument("--key", help="sign the certificate: an Ed25519 private key (PEM) or any secret file for an HMAC "
                   "(default: $GSLORA_SIGNING_KEY, else unsigned)")
    g.set_defaults(func=cmd_gate)

    k = sub.add_parser("check-certificate", parents=[common],
                       help="check a gate certificate's signature against a trusted key (exit 0 valid, 1 not)")
    k.add_argument("certificate", help="a certificate.json written by `gslora gate`")
    k.add_argument("--key", required=True, help="the trusted key: an Ed25519 public (or private) key in PEM, or the "
                   "HMAC secret")
    k.set_defaults(func=cmd_check_certificate)

    e = sub.add_parser("evaluate", parents=[common], help="test accuracy of a checkpoint, per class, and what "
                       "each class is most often taken for")
    e.add_argument("--config", help="YAML file with checkpoint: and data: (default: none)")
    e.add_argument("--checkpoint",
                   help="a gslora checkpoint or a run's requests/NNN/model (required here or in --config)")
    e.add_argument("--data", help=f"the checkpoint's data set (default: {d['dataset']})")
    e.add_argument("--classes", help="also report accuracy on these classes and on the others (default: none)")
    e.add_argument("--device", help=f"default: {d['device']}")
    e.add_argument("--verify", action="store_true", help="also prove the forgetting of --classes: membership "
                   "inference, linear probe (and relearn time and face figures with --original) (default: off)")
    e.add_argument("--original", help="with --verify: the model before forgetting (default: none)")
    e.add_argument("--reference", help="with --verify: a model retrained without --classes (default: none)")
    e.add_argument("--json", action="store_true", help="print JSON (default: a Markdown table)")
    e.set_defaults(func=cmd_evaluate)
    return parser


def _version() -> str:
    from gslora.version import __version__

    return f"gslora {__version__}"


def _on_signal(signum: int, _frame: Any) -> None:
    from gslora.errors import Interrupted

    raise Interrupted(signum)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit codes: 0 success; 1 ``gslora gate``: a threshold missed; 2 bad input (one line naming
    the problem and the fix); 3 a request that ran but was not accepted; 130 / 143 interrupted by SIGINT / SIGTERM;
    70 anything else (a bug: "internal error")."""
    import signal

    from gslora.errors import user_error

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)
    if not args.verbose:  # hub clients log every retry; the one-line error says what matters
        for noisy in ("huggingface_hub", "transformers", "timm", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
    command = args.command if args.command != "requests" else f"requests {args.action}"
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, _on_signal)
    several = os.environ.get("WORLD_SIZE", "1") != "1"  # started by torchrun: gslora.engine.distributed
    try:
        if several:
            from gslora.engine import distributed

            distributed.init()
            if distributed.rank() != 0:  # rank 0 speaks for all
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
        return args.func(args)
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        message = getattr(exc, "message", "interrupted")
        if message == "interrupted":
            message = "interrupted; nothing was changed"
        print(f"gslora {command}: {message}", file=sys.stderr)
        return 128 + signum
    except Exception as exc:  # noqa: BLE001 - the one error boundary: every failure ends in one line
        if args.verbose:
            log.exception("%s failed", command)
        error = user_error(exc)
        if error is None:
            first = str(exc).splitlines()[0] if str(exc) else ""
            print(f"gslora {command}: internal error: {type(exc).__name__}: {first} (run with -v for the traceback, "
                  "and please report it)", file=sys.stderr)
            return 70  # EX_SOFTWARE: never 1, which is the gate's "no"
        print(f"gslora {command}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return error.exit_code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if several:
            from gslora.engine import distributed

            distributed.finish()


if __name__ == "__main__":
    sys.exit(main())
