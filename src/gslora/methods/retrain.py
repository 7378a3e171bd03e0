"""Retrain: a freshly initialised model of the same architecture trained on the request's retained data.

Loss: CE(retain). Everything trains, the head included (the new model has no trained head to keep).
The reference trains 100 epochs at lr 3e-4 with 5 warm-up epochs; set those in the method's ``train``
section of a comparison. Its section 9.17 bug (one random model reused across requests) is not copied:
every request builds a new one, seeded by the run's seed and the request index.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch.nn.functional as F

from gslora.methods.base import METHODS, TaskContext
from gslora.methods.finetune import FineTuneMethod
from gslora.models import VisionClassifier, build_model


@dataclass
class RetrainConfig:
    """Retrain has no hyper-parameters of its own (the ``train`` section sets its schedule)."""


@METHODS.register("retrain")
class Retrain(FineTuneMethod):
    config_class = RetrainConfig
    relabel = False

    def setup_task(self, model: VisionClassifier, task: TaskContext) -> None:
        fresh = build_model(dataclasses.replace(model.config, weights=None, pretrained=False)).to(task.device)
        super().setup_task(fresh, task)
        self.base_parameters = sum(p.numel() for p in model.parameters())

    def frozen_parameters(self, model: VisionClassifier):
        return iter(())

    def training_step(self, forget_batch, retain_batch, *, epoch):
        x_r, y_r = retain_batch
        retain = F.cross_entropy(self.model(x_r, y_r), y_r)
        return {"loss": retain, "retain": retain}
