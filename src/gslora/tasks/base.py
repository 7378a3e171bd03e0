"""The task extension point: what a kind of model (classifier, detector) supplies to the one request pipeline.

The engine owns the run directory, the request sequence and the pipeline of a request (train -> finish ->
measure -> judge -> record -> commit, ``gslora.engine.continual``); a task supplies only its data, its
model's loading and saving, its per-request training subsets and batches, and its metrics.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from gslora.adapters import injected_model
from gslora.config import ForgetTrainConfig, SequenceConfig, TrainConfig
from gslora.data import Request
from gslora.engine.loop import Profile, ProgressFactory
from gslora.errors import GSLoRAError
from gslora.methods import Method, TaskContext

#: task name -> the module that defines (and registers) it; importing a module registers its task
TASK_MODULES = {"classification": "gslora.tasks.classification", "detection": "gslora.detection.task"}
_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    if task.name in _TASKS:
        raise GSLoRAError(f"task {task.name!r} is already registered")
    _TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The registered task ``name`` (its module is imported on first use)."""
    if name not in TASK_MODULES:
        raise GSLoRAError(f"unknown task {name!r}; choose one of: {', '.join(sorted(TASK_MODULES))}")
    if name not in _TASKS:
        importlib.import_module(TASK_MODULES[name])
    return _TASKS[name]


@dataclass(frozen=True)
class Subsets:
    """A request's training subsets and how many images each holds.

    Attributes:
        forget, retain: the subsets (task-specific sets of images and targets).
        short: class name -> images used, for classes that had fewer training images than ``shots`` asked for.
        forget_per_class: class name -> images of that forget class in the forget subset.
    """

    forget: Any
    retain: Any
    short: dict[str, int] = field(default_factory=dict)
    forget_per_class: dict[str, int] = field(default_factory=dict)

    @property
    def sizes(self) -> dict[str, int]:
        return {"forget": len(self.forget), "retain": len(self.retain)}


class Task(ABC):
    """One kind of model and data (classification, detection)."""

    name: ClassVar[str]
    #: the run config dataclass of this task (``ForgetConfig``, ``DetectionForgetConfig``)
    config_class: ClassVar[type]
    #: a key that ``base_tensors`` always returns (checked when a run's saved predictions are read)
    base_key: ClassVar[str]

    # -- data and model ---------------------------------------------------------------------------

    @abstractmethod
    def load_data(self, config: Any) -> Any:
        """The data set of ``config.data`` (with ``classes``, ``train``, ``test``, ``num_classes``)."""

    @abstractmethod
    def data_record(self, dataset: Any) -> dict[str, Any]:
        """What the run records of its data set, to refuse another one later."""

    def check_same_data(self, dataset: Any, recorded: dict[str, Any], run_dir: Path) -> None:
        current = self.data_record(dataset)
        if any(current.get(k) != v for k, v in recorded.items() if k in current and k != "name"):
            raise GSLoRAError(f"data set {dataset.name!r} is not the one run {str(run_dir)!r} was measured on (other "
                              "classes or test split); pass the run's data set")

    @abstractmethod
    def read_meta(self, checkpoint: str | Path) -> tuple[Path, dict[str, Any]]:
        """(weights file, config.json) of a checkpoint directory, without building the model."""

    @abstractmethod
    def load_model(self, checkpoint: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
        """Build and load a checkpoint: (model, its config.json)."""

    @abstractmethod
    def save_model(self, model: torch.nn.Module, directory: Path, *, classes: list[str],
                   extra: dict[str, Any]) -> str:
        """Write a checkpoint directory; return the weights' SHA-256."""

    def check_model(self, dataset: Any, meta: dict[str, Any], checkpoint: str | Path) -> None:
        """Refuse a checkpoint trained on other classes than ``dataset``."""
        classes = meta.get("classes")
        num_classes = (meta.get("model") or {}).get("num_classes")
        if num_classes != dataset.num_classes or (classes and list(classes) != dataset.classes):
            shown = list(classes)[:5] if isinstance(classes, list) else ""
            raise GSLoRAError(f"checkpoint {str(checkpoint)!r} was trained on {num_classes} classes {shown} but data "
                              f"set {dataset.name!r} has {dataset.num_classes} classes {dataset.classes[:5]}; use the "
                              "data set the model was trained on")

    # -- requests ---------------------------------------------------------------------------------

    @abstractmethod
    def subsets(self, dataset: Any, request: Request, sequence: SequenceConfig) -> Subsets:
        """The request's training subsets; raises GSLoRAError when one is empty or cannot be measured."""

    @abstractmethod
    def train(self, method: Method, context: TaskContext, subsets: Subsets, config: TrainConfig, *,
              device: torch.device, progress: ProgressFactory, profile: Profile | None = None
              ) -> list[dict[str, float]]:
        """Run the engine's loop over this task's batches (``profile`` sums the seconds of each phase); returns the
        per-epoch loss terms."""

    # -- measurement ------------------------------------------------------------------------------

    @abstractmethod
    def evaluate(self, model: torch.nn.Module, dataset: Any, config: Any, *, device: torch.device) -> Any:
        """What the model says about the test split (predictions, per-class AP, ...)."""

    @abstractmethod
    def overall(self, evaluation: Any, dataset: Any) -> dict[str, Any]:
        """``{"metric": name, "score": percent over every class, "per_class": [percent or None]}`` of a model."""

    @abstractmethod
    def base_tensors(self, evaluation: Any) -> dict[str, torch.Tensor]:
        """The original model's evaluation as tensors (saved as ``base_predictions.safetensors``)."""

    @abstractmethod
    def measure(self, dataset: Any, request: Request, before: Any, after: Any, base: dict[str, torch.Tensor],
                config: Any) -> dict[str, Any]:
        """Every metric of a request from the evaluations before and after it and the original model's."""

    @abstractmethod
    def training_forget_score(self, model: torch.nn.Module, subsets: Subsets, request: Request, *,
                              device: torch.device) -> float | None:
        """The forget classes' score (percent) on the request's own forget training images, after the edit."""

    def old_subset(self, dataset: Any, request: Request, sequence: SequenceConfig) -> Any:
        """Training images of the classes forgotten by earlier requests, drawn as the forget subset is (what GS-LoRA's
        ``hold_old`` trains on; ``TaskContext.old_data`` calls it for a method that asks); None where the task has
        none."""
        return None

    def stop_check(self, method: Method, context: TaskContext, subsets: Subsets, config: TrainConfig, *,
                   device: torch.device) -> Callable[[], bool] | None:
        """``done()`` for ``train.stop_when_forgotten``: True once ``training_forget_score`` of the model being
        trained (its adapters in place) is at or below the bound; None when the setting is off or nothing is
        forgotten. Every task's loop asks it after each epoch."""
        bound = ForgetTrainConfig.of(config).stop_when_forgotten
        if bound is None or not len(subsets.forget):
            return None

        def forgotten() -> bool:
            model = injected_model(method.model)
            score = self.training_forget_score(model, subsets, context.request, device=device)
            return score is not None and score <= bound

        return forgotten

    def verify(self, model: torch.nn.Module, dataset: Any, groups: dict[str, list[int]], retained: list[int],
               config: Any, *, device: torch.device, acc_before: dict[str, float], original: torch.nn.Module | None
               ) -> dict[str, Any] | None:
        """The verification suite (``gslora.verification``) per forgotten group; None where the task has none."""
        return None

    @abstractmethod
    def scores(self, metrics: dict[str, Any]) -> dict[str, float | None]:
        """``forget``, ``forget_before``, ``retain``, ``retain_before`` (percent) for the log and the judgement."""
