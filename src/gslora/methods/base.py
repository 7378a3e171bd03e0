"""The method extension point: the engine owns the loop, a method supplies the hooks."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from gslora.config import from_dict
from gslora.data import Request
from gslora.errors import GSLoRAError
from gslora.models import VisionClassifier
from gslora.registry import Registry

METHODS: Registry = Registry("method")

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class TaskContext:
    """What a method may know about the request it is trained for.

    Attributes:
        request: the class sets of this request.
        epochs: epochs the engine will run.
        steps_per_epoch: optimisation steps per epoch.
        forget_data, retain_data: the request's training subsets (an ``ImageSet`` for classification, a
            ``DetectionSet`` for detection).
        old_data: returns training images of the classes forgotten by earlier requests, drawn as the forget subset is
            (classification; an empty set on the first request), built on call: only a method that holds them asks.
        original_model: returns the run's original (pre-trained) model, loaded on first use.
        device: where training runs.
        allow_non_transformer: adapters may go on MLP blocks without attention (``adapters.allow_non_transformer``).
    """

    request: Request
    epochs: int
    steps_per_epoch: int
    forget_data: Any = None
    retain_data: Any = None
    old_data: Callable[[], Any] | None = None
    original_model: Callable[[], VisionClassifier] | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    allow_non_transformer: bool = False


class Method(ABC):
    """Base class of forgetting methods.

    A subclass sets ``config_class`` and implements ``training_step``. ``setup_task`` receives the
    current model and must not change it: the method edits its own copy, which ``end_task`` returns.
    A registered method handles ``task`` (classification); a subclass registered with ``variant_of``
    gives the same method name another task (GS-LoRA's detection loss).
    """

    config_class: ClassVar[type]
    #: the kind of task this class trains for
    task: ClassVar[str] = "classification"
    #: task -> the class that implements this method for it (filled by ``variant_of``)
    variants: ClassVar[dict[str, type[Method]]] = {}
    #: a method that edits the model in ``end_task`` without optimisation steps (SSD); the engine skips the loop
    training_free: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.variants = {}

    @classmethod
    def tasks(cls) -> list[str]:
        return [cls.task, *cls.variants]

    @classmethod
    def for_task(cls, task: str) -> type[Method] | None:
        """The class that runs this method on ``task`` (None: the method does not support it)."""
        return cls if task == cls.task else cls.variants.get(task)

    def __init__(self, config: Any) -> None:
        self.config = config
        self.model: nn.Module | None = None

    @abstractmethod
    def setup_task(self, model: VisionClassifier, task: TaskContext) -> None:
        """Prepare a request: copy the model, attach adapters, freeze, snapshot teachers."""

    @abstractmethod
    def training_step(self, forget_batch: Batch, retain_batch: Batch, *, epoch: int) -> dict[str, torch.Tensor]:
        """One step's loss: a dict with ``"loss"`` and every named term (the engine logs all keys)."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        assert self.model is not None, "setup_task first"
        return [p for p in self.model.parameters() if p.requires_grad]

    def held_data(self) -> Any:
        """Images the training loop appends to every forget batch, as a batch of their own (GS-LoRA's ``hold_old``:
        classes forgotten by earlier requests); None by default."""
        return None

    def after_step(self) -> None:
        """Called after each optimiser step (masking, running averages); nothing by default."""
        return None

    @abstractmethod
    def end_task(self, task: TaskContext) -> VisionClassifier:
        """Finish the request and return the edited model (adapters merged)."""

    def save_artifacts(self, directory: Path) -> dict[str, str]:
        """Write per-request artifacts (an adapter) under ``directory``; return name -> relative path."""
        return {}

    def diagnostics(self) -> dict[str, Any]:
        """Per-request facts to report (group norms, parameter counts)."""
        return {}


def variant_of(base: type[Method], task: str):
    """Class decorator: the decorated class runs ``base``'s registered method on ``task``."""

    def decorator(cls: type[Method]) -> type[Method]:
        cls.task = task
        base.variants[task] = cls
        return cls

    return decorator


def build_method(spec: dict[str, Any], task: str = "classification") -> Method:
    """Instantiate the registered method ``spec["name"]`` for ``task``, with the other keys as its config.

    Raises:
        GSLoRAError: unknown name, a method that does not support ``task``, or bad hyper-parameters.
    """
    if not isinstance(spec, dict) or "name" not in spec:
        raise GSLoRAError("method must be a mapping with a 'name' (for example {name: gs_lora})")
    cls = METHODS.get(spec["name"]).for_task(task)
    if cls is None:
        able = [name for name in METHODS if task in METHODS.get(name).tasks()]
        raise GSLoRAError(f"method {spec['name']!r} does not support {task}; methods that do: {', '.join(able)}")
    return cls(from_dict(cls.config_class, {k: v for k, v in spec.items() if k != "name"}, "method"))


def resolved_spec(method: Method, name: str) -> dict[str, Any]:
    """``{"name": name, **every hyper-parameter}``: what a run records, defaults included."""
    import dataclasses

    return {"name": name, **dataclasses.asdict(method.config)}
