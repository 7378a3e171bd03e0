"""The method extension point: the engine owns the loop, a method supplies the hooks."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from gslora.data import ImageSet, Request
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
        forget_data, retain_data: the request's training subsets.
        original_model: returns the run's original (pre-trained) model, loaded on first use.
        device: where training runs.
    """

    request: Request
    epochs: int
    steps_per_epoch: int
    forget_data: ImageSet | None = None
    retain_data: ImageSet | None = None
    original_model: Callable[[], VisionClassifier] | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


class Method(ABC):
    """Base class of forgetting methods.

    A subclass sets ``config_class`` and implements ``training_step``. ``setup_task`` receives the
    current model and must not change it: the method edits its own copy, which ``end_task`` returns.
    """

    config_class: ClassVar[type]
    #: a method that edits the model in ``end_task`` without optimisation steps (SSD); the engine skips the loop
    training_free: ClassVar[bool] = False

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
