"""Validated configuration dataclasses and YAML I/O.

Every section is a dataclass validated in ``__post_init__``; loading a YAML file with a key that no
field has is an error naming the key and the valid ones.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from gslora.errors import GSLoRAError

C = TypeVar("C")


def require(ok: bool, field_name: str, value: Any, rule: str) -> None:
    if not ok:
        raise GSLoRAError(f"{field_name}={value!r}: {rule}")


@dataclass
class ModelConfig:
    """Which transformer to build.

    Args:
        family: a registered model family (``gslora.models.FAMILIES``: ``timm``, ``torchvision``, ``hf``).
        name: a model name of that family (``vit_tiny_patch16_224``, ``vit_b_16``, a hub id); ``None``
            builds a ViT from the shape fields below.
        num_classes: size of the classification head.
        depth, width, heads, patch_size, mlp_ratio: the ViT shape when ``name`` is ``None``.
        image_size, in_chans: the input the model expects; images are resized and their channels
            repeated or averaged to match.
        pretrained: download the family's pretrained weights (needs network).
        weights: a local ``.safetensors`` or ``.pth`` file with the model's state dict.
        mean, std: input normalisation applied inside the model: one value or one per channel; ``None`` (the
            default) takes the named model's own (timm's ``pretrained_cfg``, the ImageNet statistics of torchvision's
            weights, a local Hugging Face model's image processor) and 0.5 for a ViT built by shape. The checkpoint
            records the values used.
        interpolation: how ``prepare`` resizes images to ``image_size`` (``bilinear``, ``bicubic``, ``nearest``);
            ``None`` takes the named model's own (timm's ``pretrained_cfg``, a Hugging Face image processor's
            ``resample``) and ``bilinear`` otherwise; recorded in the checkpoint. Data sets decoded for this model use
            it too unless ``data.interpolation`` says otherwise.
        head: ``linear`` (the family's head) or ``cosface`` (face recognition: CosFace on the embedding).
        cosface_s, cosface_m: CosFace scale and margin (reference: 64 and 0.35).
        hf_config: a transformers config as a dict (checkpoints store it to rebuild offline).
        kwargs: further keyword arguments of the family's constructor (timm ``create_model``, torchvision
            ``get_model``, transformers' config), for example ``{embed_dim: 192, depths: [2, 2, 6, 2]}``.
        replace_head: when ``weights`` hold a head for another number of classes, leave it out and start a new
            ``num_classes`` head (fine-tune it before forgetting: ``gslora pretrain --weights ... --replace-head``).
        drop_path: stochastic-depth rate (timm models; regularises pre-training on small data).
        stem: ``patch`` (the ViT patchify convolution) or ``conv`` (a convolutional stem, timm models
            built by shape; trains far better on small data sets).
    """

    family: str = "timm"
    name: str | None = None
    num_classes: int = 10
    depth: int = 4
    width: int = 128
    heads: int = 4
    patch_size: int = 7
    mlp_ratio: float = 4.0
    image_size: int = 28
    in_chans: int = 1
    pretrained: bool = False
    weights: str | None = None
    mean: float | list[float] | None = None
    std: float | list[float] | None = None
    interpolation: str | None = None
    head: str = "linear"
    cosface_s: float = 64.0
    cosface_m: float = 0.35
    hf_config: dict | None = None
    kwargs: dict[str, Any] | None = None
    replace_head: bool = False
    drop_path: float = 0.0
    stem: str = "patch"

    def __post_init__(self) -> None:
        require(isinstance(self.family, str) and bool(self.family), "model.family", self.family,
                "must name a registered model family")
        for name in ("num_classes", "depth", "width", "heads", "patch_size", "image_size", "in_chans"):
            require(getattr(self, name) >= 1, f"model.{name}", getattr(self, name), "must be >= 1")
        require(self.width % self.heads == 0, "model.width", self.width, f"must be divisible by heads={self.heads}")
        require(self.std is None or min(self.std if isinstance(self.std, list) else [self.std]) > 0, "model.std",
                self.std, "must be > 0 (one value or one per channel)")
        require(self.stem in ("patch", "conv"), "model.stem", self.stem, "must be patch or conv")
        require(self.interpolation in (None, *INTERPOLATIONS), "model.interpolation", self.interpolation,
                f"must be one of {', '.join(INTERPOLATIONS)}")
        if self.name is None:  # a ViT built by shape: its patches must tile the image
            require(self.image_size % self.patch_size == 0, "model.patch_size", self.patch_size,
                    f"must divide model.image_size={self.image_size} ({self.image_size // self.patch_size}x"
                    f"{self.image_size // self.patch_size} patches would cover "
                    f"{self.image_size // self.patch_size * self.patch_size} of {self.image_size} px); pick a "
                    f"divisor of {self.image_size}")
        require(0 <= self.drop_path < 1, "model.drop_path", self.drop_path, "must be in [0, 1)")
        require(self.head in ("linear", "cosface"), "model.head", self.head, "must be linear or cosface")
        require(self.cosface_s > 0 and self.cosface_m >= 0, "model.cosface_s/cosface_m",
                (self.cosface_s, self.cosface_m), "need s > 0 and m >= 0")


@dataclass
class DataConfig:
    """Where the images come from.

    Args:
        dataset: ``fashion-mnist`` (Debian's dataset-fashion-mnist), a ``.npz`` file with
            ``x_train, y_train, x_test, y_test, classes``, or an ImageFolder directory holding
            ``train/`` and ``test/`` (or ``val/``) sub-directories of one folder per class, or a Hugging Face
            ``datasets`` ``DatasetDict`` directory (``save_to_disk``) with an Image and a ClassLabel column.
        root: where the Fashion-MNIST IDX files are.
        image_size: ImageFolder and Hugging Face images are resized to this square size when decoded; ``None`` (the
            default): the model's ``image_size`` (the checkpoint's when forgetting, verifying or evaluating;
            ``model.image_size`` when pre-training), else 64.
        interpolation: the resize filter of that decoding; ``None``: the model's ``interpolation``, else bilinear.
        stream: ImageFolder and Hugging Face data sets: ``true`` decodes each batch when it is used (memory does
            not grow with the data set), ``false`` decodes everything into memory first, ``auto`` streams when the
            decoded images would take more than 2 GiB.
        validation: with a value in (0, 1), that share of each class's training images (drawn with
            ``validation_seed``) is held out and takes the test split's place: every figure is then measured on
            images no model trained on, for choosing settings (pre-train the base with the same ``data`` so that it
            never sees them either); report the test split once, with 0 (the default).
        workers: worker processes of the ``torch.utils.data.DataLoader`` that decodes a streamed data set's next
            batches while the model computes (0: decode in the training process).
    """

    dataset: str = "fashion-mnist"
    root: str = "/usr/share/datasets/fashion-mnist"
    image_size: int | None = None
    interpolation: str | None = None
    stream: str | bool = "auto"
    workers: int = 4
    validation: float = 0.0
    validation_seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.stream, bool):  # YAML's true/false
            self.stream = "true" if self.stream else "false"
        require(bool(self.dataset), "data.dataset", self.dataset, "must name a data set or a path")
        require(self.image_size is None or self.image_size >= 8, "data.image_size", self.image_size, "must be >= 8")
        require(self.interpolation in (None, *INTERPOLATIONS), "data.interpolation", self.interpolation,
                f"must be one of {', '.join(INTERPOLATIONS)}")
        require(self.stream in ("auto", "true", "false"), "data.stream", self.stream, "must be auto, true or false")
        require(self.workers >= 0, "data.workers", self.workers, "must be >= 0")
        require(0 <= self.validation < 1, "data.validation", self.validation, "must be in [0, 1)")


DEFAULT_IMAGE_SIZE = 64  # data.image_size when neither it nor the model says
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
STREAM_AUTO_BYTES = 2 << 30  # data.stream=auto streams an ImageFolder whose decoded images would exceed this


@dataclass
class SequenceConfig:
    """The erasure requests and the data each one trains on.

    Args:
        requests: explicit requests, each a list of class names or ids, applied in order. When
            empty, ``num_requests`` requests of ``classes_per_request`` classes are taken from the
            end of a class order shuffled with ``order_seed`` (the reference protocol).
        ratio: fraction of each class's training images used per request (reference: 0.1).
        min_per_class: with ``ratio``, each class gives at least this many images (or all it has): 10% of a
            small class is too little to forget it.
        shots: if set, exactly this many training images per class instead of ``ratio``.
        subset_seed: seed of the per-request subset draw.
        missing_classes: the first M classes of the seeded order are retained but have no training
            data in any request (the reference's missing-class setting, M = 5); reported as Acc_m.
    """

    requests: list[list[str | int]] = field(default_factory=list)
    num_requests: int = 4
    classes_per_request: int = 2
    order_seed: int = 1337
    ratio: float = 0.1
    min_per_class: int = 8
    shots: int | None = None
    subset_seed: int = 1337
    missing_classes: int = 0

    def __post_init__(self) -> None:
        require(self.missing_classes >= 0, "sequence.missing_classes", self.missing_classes, "must be >= 0")
        require(self.num_requests >= 1, "sequence.num_requests", self.num_requests, "must be >= 1")
        require(self.classes_per_request >= 1, "sequence.classes_per_request", self.classes_per_request,
                "must be >= 1")
        require(0 < self.ratio <= 1, "sequence.ratio", self.ratio, "must be in (0, 1]")
        require(self.min_per_class >= 1, "sequence.min_per_class", self.min_per_class, "must be >= 1")
        require(self.shots is None or self.shots >= 1, "sequence.shots", self.shots, "must be >= 1")
        for i, request in enumerate(self.requests):
            require(isinstance(request, list) and len(request) > 0, f"sequence.requests[{i}]", request,
                    "must be a non-empty list of class names or ids")
            require(all(isinstance(c, (str, int)) and not isinstance(c, bool) for c in request),
                    f"sequence.requests[{i}]", request, "must hold class names (text) or ids (whole numbers)")


@dataclass
class TrainConfig:
    """Optimisation settings shared by pre-training and forgetting.

    Args:
        epochs: passes over the retained (or, for pre-training, the whole) training subset.
        min_steps: a forgetting request takes at least this many optimiser steps: when ``epochs``
            passes over its retain subset are fewer, the epochs are raised to reach it (0 = off). Later
            requests retain fewer classes, so their subsets, and steps per epoch, shrink; a small data set
            would otherwise get a handful of steps and forget nothing.
        batch_size: images per batch; forgetting uses one retain and one forget batch per step.
        lr, weight_decay, min_lr: AdamW with a cosine schedule from ``lr`` to ``min_lr``.
        warmup_epochs: linear learning-rate warm-up (pre-training).
        augment: random shift and horizontal flip on training batches.
        jitter: with ``augment``, brightness/contrast jitter strength (0 = off).
        label_smoothing: of the pre-training cross-entropy (keep 0 with a margin head such as CosFace).
        seed: seed of initialisation and batch order.
        device: ``cpu``, ``cuda`` or ``auto``.
        max_grad_norm: gradient clipping (0 disables it).
        precision: ``fp32``, ``bf16`` or ``fp16``: the forward and loss under ``torch.autocast`` in that type (bf16
            runs on CPUs too; fp16 scales the loss on CUDA), the weights and optimiser state in fp32.
        compile: compile each training step with ``torch.compile`` (pays a compilation first).
        checkpointing: activation checkpointing (timm and transformers models): recompute activations in the
            backward pass instead of keeping them, for memory.
    """

    epochs: int = 10
    min_steps: int = 100
    batch_size: int = 48
    lr: float = 1e-2
    weight_decay: float = 0.05
    min_lr: float = 1e-5
    warmup_epochs: int = 0
    augment: bool = False
    jitter: float = 0.0
    label_smoothing: float = 0.0
    seed: int = 1337
    device: str = "auto"
    max_grad_norm: float = 0.0
    precision: str = "fp32"
    compile: bool = False
    checkpointing: bool = False

    def __post_init__(self) -> None:
        require(self.precision in ("fp32", "bf16", "fp16"), "train.precision", self.precision,
                "must be fp32, bf16 or fp16")
        require(self.epochs >= 0, "train.epochs", self.epochs,
                "must be >= 0 (0: pre-training only imports weights; a forgetting request needs >= 1)")
        require(self.min_steps >= 0, "train.min_steps", self.min_steps, "must be >= 0 (0 = off)")
        require(self.batch_size >= 1, "train.batch_size", self.batch_size, "must be >= 1")
        require(self.lr > 0 and math.isfinite(self.lr), "train.lr", self.lr, "must be a positive number")
        require(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "must be >= 0")
        require(0 <= self.min_lr <= self.lr, "train.min_lr", self.min_lr, f"must be in [0, lr={self.lr}]")
        require(0 <= self.label_smoothing < 1, "train.label_smoothing", self.label_smoothing, "must be in [0, 1)")
        require(self.max_grad_norm >= 0, "train.max_grad_norm", self.max_grad_norm, "must be >= 0 (0 disables)")
        require(0 <= self.warmup_epochs <= self.epochs, "train.warmup_epochs", self.warmup_epochs,
                f"must be in [0, epochs={self.epochs}]")
        require(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "train.device",
                self.device, "must be auto, cpu, cuda or cuda:N")

    def for_steps_per_epoch(self, steps_per_epoch: int) -> TrainConfig:
        """These settings with ``epochs`` raised so that a request takes at least ``min_steps`` steps."""
        epochs = max(self.epochs, -(-self.min_steps // max(1, steps_per_epoch)))
        return self if epochs == self.epochs else dataclasses.replace(self, epochs=epochs)


@dataclass
class ForgetTrainConfig(TrainConfig):
    """``TrainConfig`` of a forgetting request (pre-training configs, and the keys of what was pre-trained from them,
    do not change with it).

    Args:
        stop_when_forgotten: end the request after the first epoch at which the model's forget score on the
            request's forget training images is at or below this percentage: top-1 accuracy for a classifier,
            mAP@0.5 of the forget classes for a detector (None: off; ``epochs`` and ``min_steps`` are then upper
            bounds).
        forget_group: forget batches are cut from runs of this many images of one class (1: a plain shuffle, the
            reference). With 2, every forget batch of 4 holds two pairs of images of one class, so a term on such
            pairs (GS-LoRA++'s ``w_scatter``) acts at every step; with a plain shuffle of 4-shot requests of 20
            classes, about one batch in five holds a pair. A class whose image count is not a multiple of the group
            ends in a shorter run, which shifts later runs across batch boundaries. With several processes each gets
            a contiguous piece of every batch, so the runs stay whole. Classification only.
    """

    stop_when_forgotten: float | None = None
    forget_group: int = 1

    @classmethod
    def of(cls, train: TrainConfig) -> ForgetTrainConfig:
        """``train`` as a ``ForgetTrainConfig`` (the extra settings at their defaults when it is a plain one)."""
        return train if isinstance(train, cls) else cls(**dataclasses.asdict(train))

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.stop_when_forgotten is None or 0 <= self.stop_when_forgotten <= 100, "train.stop_when_forgotten",
                self.stop_when_forgotten, "must be a percentage in [0, 100], or null (off)")
        require(self.forget_group >= 1, "train.forget_group", self.forget_group,
                "must be >= 1 (1: forget batches are a plain shuffle)")


def default_patch_size(image_size: int) -> int:
    """The patch size that tiles ``image_size`` exactly into the grid closest to 8 x 8 patches (28 -> 4, 32 -> 4,
    56 -> 7, 64 -> 8, 112 -> 14, 224 -> 28); larger patches win ties."""
    divisors = [p for p in range(1, image_size + 1) if image_size % p == 0]
    return min(divisors, key=lambda p: (abs(image_size / p - 8), -p))


#: pre-training's optimisation defaults (a ViT from scratch on a whole data set), used by the CLI and the API
PRETRAIN_TRAIN = {"lr": 1e-3, "batch_size": 128, "warmup_epochs": 1}


@dataclass
class DistillConfig:
    """Distillation toward given per-image embeddings during pre-training (a face descriptor, say).

    Args:
        teacher: ``.npz`` with one target embedding per training image (None: no distillation).
        key: the array of that file to read.
        weight: weight of the ``1 - cos`` term between a linear map of the embedding and the target.
    """

    teacher: str | None = None
    key: str = "train"
    weight: float = 10.0

    def __post_init__(self) -> None:
        require(self.weight >= 0 and math.isfinite(self.weight), "distill.weight", self.weight, "must be >= 0")


@dataclass
class PretrainConfig:
    """Pre-training a base classifier (``gslora pretrain`` and ``gslora.run_pretraining``).

    Args:
        data: the data set; the model's ``num_classes`` must be its class count.
        model: the model to build (``model.weights`` starts from local weights).
        train: optimisation, with pre-training's defaults (lr 1e-3, batch 128, one warm-up epoch).
        distill: optional distillation toward teacher embeddings.
        exclude_classes: classes (names or ids) whose training images are left out; the head keeps every class.
            With a run's forgotten classes this trains its Retrain reference (what forgetting should look like).
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(**PRETRAIN_TRAIN))
    distill: DistillConfig = field(default_factory=DistillConfig)
    exclude_classes: list[str | int] = field(default_factory=list)


@dataclass
class AdaptersConfig:
    """Where adapters go.

    Args:
        allow_non_transformer: also adapt MLP blocks that have no attention (a CNN such as ConvNeXt; 1x1
            convolutions count as linear layers); off: such a model is refused with an error saying so.
    """

    allow_non_transformer: bool = False


@dataclass
class AcceptanceConfig:
    """When a finished request is committed. A request that misses a threshold is not committed: ``gslora forget``
    says which threshold in one line and exits with 3, and the run stays as it was (the ledger records the
    attempt as failed), unless ``accept_partial``.

    Args:
        max_forget: after the edit, the forget classes' score on the request's own forget training images must be
            at most this, in percent (top-1 accuracy; mAP@0.5 for a detector). ``None`` disables the check.
        max_retain_drop: the retained classes' test score (Acc_r; mAP@0.5) may fall by at most this many points
            from its value before the request. ``None`` disables the check.
        accept_partial: commit such a request anyway; the record says which thresholds it missed.
    """

    max_forget: float | None = 5.0
    max_retain_drop: float | None = 10.0
    accept_partial: bool = False

    def __post_init__(self) -> None:
        for name in ("max_forget", "max_retain_drop"):
            value = getattr(self, name)
            require(value is None or (math.isfinite(value) and value >= 0), f"acceptance.{name}", value,
                    "must be a number >= 0, or null to disable the check")


def from_dict(cls: type[C], data: dict[str, Any] | None, where: str = "") -> C:
    """Build dataclass ``cls`` from a mapping, recursing into nested dataclass fields.

    Raises:
        GSLoRAError: a key is not a field of ``cls`` or the mapping is not a mapping.
    """
    data = {} if data is None else data
    prefix = f"{where}." if where else ""
    if not isinstance(data, dict):
        raise GSLoRAError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise GSLoRAError(f"unknown key(s) {', '.join(prefix + k for k in unknown)}; valid keys: "
                          f"{', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            default = fields[key].default_factory  # a section's own defaults (PretrainConfig's train, say)
            if isinstance(value, dict) and default is not dataclasses.MISSING:
                value = {**to_dict(default()), **value}
            kwargs[key] = from_dict(hint, value, prefix + key)
        else:
            kwargs[key] = _coerce(value, hint, prefix + key)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Accept YAML scalars for typed fields: ints for floats, and reject obvious type mismatches."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        if len(args) == 1:
            return _coerce(value, args[0], where)
        list_args = [a for a in args if typing.get_origin(a) is list]
        scalar_args = [a for a in args if a not in list_args]
        if isinstance(value, list) and list_args:
            return _coerce(value, list_args[0], where)
        if any(a in (int, str, bool) and isinstance(value, a) and not (isinstance(value, bool) and a is int)
               for a in scalar_args):
            return value  # already one of the allowed types (a class id given as 3 or "3", say)
        return _coerce(value, scalar_args[0], where) if scalar_args else value
    if origin is list:
        if not isinstance(value, list):
            raise GSLoRAError(f"{where}={value!r}: must be a list")
        (item,) = typing.get_args(hint) or (Any,)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, bool) and hint in (int, float):
        raise GSLoRAError(f"{where}={value!r}: must be a number, not true/false")
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads "1e-4" as a string
        except ValueError:
            pass
    if hint is float and not isinstance(value, (int, float)):
        raise GSLoRAError(f"{where}={value!r}: must be a number")
    if hint in (int, str, bool) and not isinstance(value, hint):
        raise GSLoRAError(f"{where}={value!r}: must be of type {hint.__name__}")
    return value


def to_dict(obj: Any) -> dict[str, Any]:
    """A plain-data copy of a dataclass, for JSON and YAML."""
    return dataclasses.asdict(obj)


def yaml_problem(exc: Exception) -> str:
    """A YAML error in one line: what is wrong and where (line and column)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing or malformed file is a GSLoRAError."""
    path = Path(path)
    if not path.is_file():
        raise GSLoRAError(f"config file {str(path)!r} does not exist; pass the path of a YAML file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise GSLoRAError(f"config file {str(path)!r} is not valid YAML ({yaml_problem(exc)}); fix the file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise GSLoRAError(f"cannot read config file {str(path)!r} ({exc}); pass a readable YAML text file") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise GSLoRAError(f"config file {str(path)!r} must hold a mapping at the top level")
    return data
