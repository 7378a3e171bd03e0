"""The ``gslora`` command line: parses arguments into config objects and calls the library.

Exit codes: 0 success, 2 bad input (the message names the problem and the fix), 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import logging
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

    for item in assignments or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise GSLoRAError(f"--set {item!r}: use --set section.key=value, for example --set method.w_r=0.1")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise GSLoRAError(f"--set {item!r}: the value is not valid YAML ({exc})") from exc
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
    from gslora.config import PretrainConfig, from_dict
    from gslora.data import load_dataset
    from gslora.engine import run_pretraining

    tree = _load_config(args.config, ("model", "data", "train", "distill"))
    if (args.task or tree.get("task")) == "detection":
        return _pretrain_detection(args, tree)
    tree.pop("task", None)
    for dotted, value in (("data.dataset", args.data), ("model.family", args.family), ("model.name", args.name),
                          ("model.depth", args.depth), ("model.width", args.width), ("model.heads", args.heads),
                          ("model.patch_size", args.patch_size), ("model.image_size", args.image_size),
                          ("model.pretrained", args.pretrained or None), ("model.weights", args.weights),
                          ("train.epochs", args.epochs), ("train.lr", args.lr), ("train.batch_size", args.batch_size),
                          ("train.augment", args.augment), ("train.device", args.device), ("out", args.out),
                          ("distill.teacher", args.teacher), ("distill.weight", args.distill_weight)):
        _set(tree, dotted, value)
    _apply_sets(tree, args.set)
    out = _pretrain_out(tree, args.overwrite)
    config = from_dict(PretrainConfig, tree)  # unknown keys and bad values fail here, before the data loads
    dataset = load_dataset(config.data)
    model = tree.get("model", {})
    tree["model"] = {"num_classes": dataset.num_classes, "in_chans": dataset.image_shape[0],
                     "image_size": dataset.image_shape[1], **model}  # the data's shape unless given
    if "warmup_epochs" not in tree.get("train", {}) and config.train.epochs <= 1:
        tree.setdefault("train", {})["warmup_epochs"] = 0
    config = from_dict(PretrainConfig, tree)
    digest, info = run_pretraining(config, out, overwrite=args.overwrite, dataset=dataset,
                                   progress=_progress_factory(not args.quiet))
    margin = f" (margin-penalised {info['test_acc_margin']:.2f}%)" if "test_acc_margin" in info else ""
    print(f"pre-trained {config.model.family} model on {dataset.name}: test accuracy {info['test_acc']:.2f}%{margin} "
          f"in {info['seconds']:.0f}s")
    print(f"checkpoint: {out} (sha256 {digest[:16]})")
    return 0


def _pretrain_out(tree: dict[str, Any], overwrite: bool) -> str:
    """The checkpoint directory to write (``out`` of the config), refused if it holds something already."""
    out = tree.pop("out", None)
    if not out:
        raise GSLoRAError("no output directory: pass --out DIR (or 'out:' in the config file)")
    if Path(out).exists() and (not Path(out).is_dir() or any(Path(out).iterdir())) and not overwrite:
        raise GSLoRAError(f"{out!r} already exists; pass --overwrite to replace it or choose another --out")
    return out


def _pretrain_detection(args: argparse.Namespace, tree: dict[str, Any]) -> int:
    from gslora.config import TrainConfig, from_dict, to_dict
    from gslora.detection import (
        DetectionDataConfig,
        DetectorConfig,
        load_detection_dataset,
        pretrain_detector,
        save_detector,
    )

    tree.pop("task", None)
    unknown = set(tree) - {"model", "data", "train", "out"}
    if unknown:
        raise GSLoRAError(f"unknown key(s) {', '.join(sorted(unknown))} for detection; valid: data, model, out, train")
    for dotted, value in (("data.dataset", args.data), ("model.name", args.name), ("model.image_size", args.image_size),
                          ("model.pretrained", args.pretrained or None), ("train.epochs", args.epochs),
                          ("train.lr", args.lr), ("train.batch_size", args.batch_size), ("train.device", args.device),
                          ("out", args.out)):
        _set(tree, dotted, value)
    _apply_sets(tree, args.set)
    out = _pretrain_out(tree, args.overwrite)
    data_cfg = from_dict(DetectionDataConfig, tree.get("data"), "data")
    dataset = load_detection_dataset(data_cfg)
    model_cfg = from_dict(DetectorConfig, {"num_classes": dataset.num_classes, "image_size": data_cfg.image_size,
                                           **tree.get("model", {})}, "model")
    train_cfg = from_dict(TrainConfig, {"lr": 2e-4, "batch_size": 16, "max_grad_norm": 0.1, "weight_decay": 1e-4,
                                        **tree.get("train", {})}, "train")
    model, info = pretrain_detector(model_cfg, dataset, train_cfg, progress=_progress_factory(not args.quiet))
    digest = save_detector(model, out, classes=dataset.classes, replace=Path(out).exists(),
                           extra={"pretrain": {**{k: v for k, v in info.items() if k != "history"},
                                               "dataset": dataset.name, "train": to_dict(train_cfg)}})
    print(f"pre-trained detector on {dataset.name}: test mAP@0.5 {info['map50']:.2f}%, mAP {info['map']:.2f}% "
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

    from gslora.config import load_yaml

    if not Path(path).is_file():
        load_yaml(path)  # raises the "does not exist" error
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise GSLoRAError(f"requests file {path!r} is not valid YAML: {exc}") from exc
    requests = data.get("requests") if isinstance(data, dict) else data
    if not isinstance(requests, list) or not requests:
        raise GSLoRAError(f"{path} must hold 'requests:', a list of requests, each a list of class names or ids")
    return requests


def cmd_forget(args: argparse.Namespace) -> int:
    from gslora.config import from_dict
    from gslora.engine import resume_config, run_forgetting
    from gslora.report import run_table
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
                          ("train.device", args.device)):
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
    if args.run:
        if args.checkpoint:
            raise GSLoRAError("--checkpoint cannot change the model of an existing run; --run continues from the "
                              "run's latest model")
        sequence = tree.get("sequence", {})
        if not (sequence.get("requests") or args.num_requests):
            raise GSLoRAError("--run needs the next request: pass --classes A,B, --requests FILE or --num-requests N")
        config = resume_config(args.run, tree)
        run_dir, resume = args.run, True
    else:
        tree["method"] = {"name": "gs_lora", **tree.get("method", {})}
        config = from_dict(get_task(_task_of(args, tree)).config_class, tree)
        run_dir, resume = args.out, False
    manifest = run_forgetting(config, run_dir, resume=resume, progress=_progress_factory(not args.quiet))
    print(run_table(manifest))
    print(f"run directory: {run_dir} (latest model: {Path(run_dir) / manifest['latest_checkpoint']})")
    return 0


# -- compare --------------------------------------------------------------------------------------

def cmd_compare(args: argparse.Namespace) -> int:
    from gslora.config import from_dict
    from gslora.engine import CompareConfig, compare
    from gslora.report import comparison_markdown

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
    comparison = compare(config, args.out, only=only, progress=_progress_factory(not args.quiet))
    print(comparison_markdown(comparison))
    print(f"comparison written to {Path(args.out) / 'comparison.md'} (.json, .png; runs/ holds each method's run)")
    return 0


# -- evaluate -------------------------------------------------------------------------------------

def cmd_evaluate(args: argparse.Namespace) -> int:
    from gslora.config import DataConfig, from_dict
    from gslora.data import load_dataset, resolve_classes
    from gslora.engine import predict
    from gslora.engine.loop import resolve_device
    from gslora.metrics import accuracy, per_class_accuracy
    from gslora.models import load_checkpoint, read_checkpoint_meta

    tree = _load_config(args.config, ("data",))
    _set(tree, "data.dataset", args.data)
    checkpoint = args.checkpoint or tree.get("checkpoint")
    if not checkpoint:
        raise GSLoRAError("pass --checkpoint DIR (a gslora checkpoint or a run's requests/NNN/model)")
    _, meta = read_checkpoint_meta(checkpoint)
    dataset = load_dataset(from_dict(DataConfig, tree.get("data"), "data"))
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
                              "per_class": dict(zip(dataset.classes, per_class))}
    if everything.margin_top1 is not None:
        result["margin_accuracy"] = accuracy(everything.margin_top1, labels, range(dataset.num_classes))
    if args.classes:
        ids = resolve_classes(_split_classes(args.classes), dataset.classes)
        rest = [c for c in range(dataset.num_classes) if c not in ids]
        result["selected"] = {"classes": [dataset.classes[c] for c in ids],
                              "accuracy": accuracy(predictions, labels, ids),
                              "accuracy_other": accuracy(predictions, labels, rest) if rest else None}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    margin = f" (margin-penalised {result['margin_accuracy']:.2f}%)" if "margin_accuracy" in result else ""
    print(f"{dataset.name}: top-1 accuracy {result['accuracy']:.2f}%{margin} on {len(labels)} test images")
    print("| class | accuracy |\n|---|---|")
    for name, acc in result["per_class"].items():
        print(f"| {name} | {'-' if acc is None else f'{acc:.2f}'} |")
    if "selected" in result:
        sel = result["selected"]
        other = sel["accuracy_other"]
        print(f"selected classes ({', '.join(sel['classes'])}): {sel['accuracy']:.2f}%; other classes: "
              f"{'-' if other is None else f'{other:.2f}%'}")
    return 0


# -- parser ---------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gslora", description="Continual forgetting for vision transformers.")
    parser.add_argument("--version", action="version", version=_version())
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", parents=[common],
                       help="train a base ViT on all classes of a data set; save a checkpoint")
    p.add_argument("--config", help="YAML file with model:, data:, train: and out: sections (and task:)")
    p.add_argument("--task", choices=["classification", "detection"],
                   help="detection trains a Deformable DETR on COCO-format data (default classification)")
    p.add_argument("--data", help="fashion-mnist, an .npz file or an ImageFolder directory")
    p.add_argument("--family", choices=["timm", "torchvision", "hf"])
    p.add_argument("--name", help="model name of the family (default: a ViT of the shape below)")
    p.add_argument("--depth", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--patch-size", type=int)
    p.add_argument("--image-size", type=int)
    p.add_argument("--pretrained", action="store_true", help="start from the family's pretrained weights (network)")
    p.add_argument("--weights", help="start from a local .safetensors or .pth state dict")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--teacher", help=".npz with one target embedding per training image (distillation)")
    p.add_argument("--distill-weight", type=float, help="weight of the distillation term (default 10)")
    p.add_argument("--device")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="set any config field, for example --set model.head=cosface --set train.jitter=0.3")
    p.add_argument("--out", help="checkpoint directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=cmd_pretrain)

    f = sub.add_parser("forget", parents=[common],
                       help="apply erasure requests to a model; writes or extends a run directory")
    f.add_argument("--config", help="YAML file with checkpoint:, data:, sequence:, method:, train:")
    f.add_argument("--checkpoint", help="base model (a directory written by `gslora pretrain`)")
    f.add_argument("--data", help="fashion-mnist, an .npz file or an ImageFolder directory")
    group = f.add_mutually_exclusive_group()
    group.add_argument("--classes", help="one request: comma-separated class names or ids")
    group.add_argument("--requests", help="YAML file with a list of requests, each a list of classes")
    f.add_argument("--num-requests", type=int, help="requests taken from the seeded class order")
    f.add_argument("--classes-per-request", type=int)
    f.add_argument("--ratio", type=float, help="fraction of each class's training images per request")
    f.add_argument("--shots", type=int, help="training images per class per request (few-shot)")
    f.add_argument("--missing-classes", type=int,
                   help="the first M classes of the seeded order are retained without training data (Acc_m)")
    f.add_argument("--method", help="registered method name (default gs_lora)")
    f.add_argument("--beta", type=float)
    f.add_argument("--bnd", type=float)
    f.add_argument("--alpha", type=float)
    f.add_argument("--rank", type=int)
    f.add_argument("--epochs", type=int)
    f.add_argument("--lr", type=float)
    f.add_argument("--batch-size", type=int)
    f.add_argument("--device")
    f.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="set any config field, for example --set method.w_r=0.1 --set train.min_lr=1e-6")
    f.add_argument("--out", help="new run directory")
    f.add_argument("--run", help="existing run directory: apply the requests on top of its latest model")
    f.set_defaults(func=cmd_forget)

    c = sub.add_parser("compare", parents=[common],
                       help="run several methods over the same requests; write a comparison table and plot")
    c.add_argument("--config", help="YAML file with checkpoint:, data:, sequence:, train: and methods: "
                                    "(label -> {name: registered method, its hyper-parameters, train: overrides})")
    c.add_argument("--checkpoint", help="base model (a directory written by `gslora pretrain`)")
    c.add_argument("--data", help="fashion-mnist, an .npz file or an ImageFolder directory")
    c.add_argument("--method-names", metavar="A,B",
                   help="add registered methods with their default hyper-parameters (for example gs_lora,ewc,lwf)")
    c.add_argument("--methods", dest="only", metavar="LABEL,LABEL",
                   help="run only these labels of the config; the others keep their results in --out")
    c.add_argument("--num-requests", type=int)
    c.add_argument("--classes-per-request", type=int)
    c.add_argument("--ratio", type=float)
    c.add_argument("--shots", type=int)
    c.add_argument("--epochs", type=int)
    c.add_argument("--device")
    c.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="set any config field, for example --set train.lr=1e-3 --set methods.ewc.penalty=5")
    c.add_argument("--out", required=True, help="comparison directory")
    c.set_defaults(func=cmd_compare)

    e = sub.add_parser("evaluate", parents=[common], help="test accuracy of a checkpoint, per class")
    e.add_argument("--config", help="YAML file with checkpoint: and data:")
    e.add_argument("--checkpoint")
    e.add_argument("--data")
    e.add_argument("--classes", help="also report accuracy on these classes and on the others")
    e.add_argument("--device")
    e.add_argument("--json", action="store_true", help="print JSON")
    e.set_defaults(func=cmd_evaluate)
    return parser


def _version() -> str:
    from gslora.version import __version__

    return f"gslora {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except GSLoRAError as exc:
        print(f"gslora {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
