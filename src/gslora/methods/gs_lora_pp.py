"""GS-LoRA++: GS-LoRA with prototype regularisation (Zhao et al., "Practical Continual Forgetting for
Pre-trained Vision Models", arXiv 2501.09705).

Loss: GS-LoRA's loss + w_f * ReLU(BND_pro - d(z_f, p_{y_f})) + w_r * d(z_r, p_{y_r}), with p_c the mean
embedding of class c over the request's training data, taken at the start of the request; gslora adds
w_absorb * d(z_f, p_nearest retained class) and w_scatter * mean ReLU(cos(z_f,i, z_f,j) - s_impostor) over pairs of
one forgotten class (both off by default); with GS-LoRA's hold_old, the scatter term also acts, weighted by hold_old,
on the images of classes forgotten by earlier requests (the push and absorb terms do not).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from gslora.config import require
from gslora.data import ImageSet
from gslora.losses import (
    absorb_loss,
    class_prototypes,
    impostor_similarity,
    prototype_pull_loss,
    prototype_push_loss,
    scatter_loss,
)
from gslora.methods.base import METHODS, TaskContext
from gslora.methods.gs_lora import GSLoRA, GSLoRAConfig
from gslora.models import VisionClassifier, evaluating

SCATTER_SAMPLE = 2000  # retained embeddings that estimate the scatter margin (a 2000 x 2000 similarity matrix)
log = logging.getLogger(__name__)


@dataclass
class GSLoRAPPConfig(GSLoRAConfig):
    """GS-LoRA++ hyper-parameters on top of GS-LoRA's (reference values in brackets).

    Args:
        w_f: weight of the push term, one value or one per request [0.01 full data; 0.015, 0.06, 0.025,
            0.012 few-shot].
        w_r: weight of the pull term [0 in every released script].
        bnd_pro: bound of the push term [18; 50 few-shot].
        distance: ``kl`` (the reference: KL between softmaxes over feature dimensions) or ``cosine``.
        prototypes: ``current`` (the model at the start of the request, as the reference) or ``original``
            (the pre-trained model).
        w_absorb: weight of the absorb term: each forgotten image's embedding is pulled to the nearest retained
            class prototype, so the forgotten class dissolves into the classes the model keeps, as in a model
            that never saw it, instead of moving away as one cluster that a linear probe still separates
            [0: not in the reference].
        w_scatter: weight of the scatter term: for each pair of forgotten images of one class in a batch,
            ReLU(cos(z_i, z_j) - s), with s the mean cosine of two images of different retained classes (up to
            2000 images, a seeded sample) under the model the prototypes come from (the request's starting model
            with ``prototypes: current``); off, with a warning, when fewer than 2 retained classes have images.
            A forgotten identity's images then look no more alike than two strangers', so the identity stops
            verifying (TAR at FAR) and its embeddings form no cluster for a probe, which the push and absorb terms,
            moving the class as a whole, leave intact [0: not in the reference].
    """

    w_f: float | list[float] = 0.01
    w_r: float = 0.0
    bnd_pro: float = 18.0
    distance: str = "kl"
    prototypes: str = "current"
    w_absorb: float = 0.0
    w_scatter: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        weights = self.w_f if isinstance(self.w_f, list) else [self.w_f]
        require(len(weights) > 0 and all(w >= 0 for w in weights), "method.w_f", self.w_f,
                "must be a number >= 0 or a non-empty list of them")
        require(self.w_r >= 0, "method.w_r", self.w_r, "must be >= 0")
        require(self.bnd_pro > 0, "method.bnd_pro", self.bnd_pro, "must be > 0")
        require(self.distance in ("kl", "cosine"), "method.distance", self.distance, "must be kl or cosine")
        require(self.prototypes in ("current", "original"), "method.prototypes", self.prototypes,
                "must be current or original")
        require(self.w_absorb >= 0, "method.w_absorb", self.w_absorb, "must be >= 0")
        require(self.w_scatter >= 0, "method.w_scatter", self.w_scatter, "must be >= 0")

    def w_f_for(self, request_index: int) -> float:
        weights = self.w_f if isinstance(self.w_f, list) else [self.w_f]
        return float(weights[min(request_index, len(weights) - 1)])


@torch.no_grad()
def embed_all(model: VisionClassifier, images: torch.Tensor, *, device: torch.device,
              batch_size: int = 256) -> torch.Tensor:
    """Embeddings of ``images`` in eval mode (the model's mode is restored)."""
    with evaluating(model):
        return torch.cat([model.embed(images[i:i + batch_size].to(device))
                          for i in range(0, len(images), batch_size)])


@METHODS.register("gs_lora_pp")
class GSLoRAPP(GSLoRA):
    config_class = GSLoRAPPConfig

    def setup_task(self, model: VisionClassifier, task: TaskContext) -> None:
        super().setup_task(model, task)
        source = task.original_model() if self.config.prototypes == "original" and task.original_model else model
        source = source.to(task.device)
        both = ImageSet.join(task.forget_data, task.retain_data)
        embeddings = embed_all(source, both.images, device=task.device)
        labels = both.labels.to(task.device)
        self.prototypes, self.has_prototype = class_prototypes(embeddings, labels, model.config.num_classes)
        self.impostor_similarity = None
        if self.config.w_scatter > 0:  # its margin: how alike two retained classes look to the prototypes' model
            start = len(task.forget_data)  # ``both`` is the forget images, then the retained ones
            order = torch.randperm(len(both) - start, generator=torch.Generator().manual_seed(0))[:SCATTER_SAMPLE]
            retained = (start + order.sort()[0]).to(task.device)
            margin = impostor_similarity(embeddings[retained], labels[retained])
            if margin is not None:
                self.impostor_similarity = float(margin)
            else:
                log.warning("method.w_scatter: the request keeps fewer than 2 classes with training images, so "
                            "there is no pair of different classes to set the scatter margin; the term is off")
        self.w_f = self.config.w_f_for(task.request.index)
        keep = [c for c in task.request.retain if self.has_prototype[c]]
        self.retained_prototypes = self.prototypes[keep]  # (R, D): the absorb term's targets

    def loss_terms(self, logits: torch.Tensor, embedding: torch.Tensor, y_r: torch.Tensor, y_f: torch.Tensor, *,
                   epoch: int) -> dict[str, torch.Tensor]:
        terms = super().loss_terms(logits, embedding, y_r, y_f, epoch=epoch)
        z_r, z_f = embedding[: len(y_r)], embedding[len(y_r):]
        if self.held is not None:  # hold_old's images: the scatter term only, with its weight
            held = self.split_held(y_f)
            (z_h, y_h), (z_f, y_f) = (z_f[held], y_f[held]), (z_f[~held], y_f[~held])

        def unless_empty(term: Callable[[], torch.Tensor]) -> torch.Tensor:  # a shard may hold only held images
            return term() if len(y_f) else z_f.sum() * 0.0

        push = unless_empty(lambda: prototype_push_loss(z_f, self.prototypes[y_f], self.config.bnd_pro,
                                                        self.config.distance))
        pull = prototype_pull_loss(z_r, self.prototypes[y_r], self.config.distance)
        terms["loss"] = terms["loss"] + self.w_f * push + self.config.w_r * pull
        terms = {**terms, "proto_push": push, "proto_pull": pull}
        if self.config.w_absorb > 0 and len(self.retained_prototypes):
            absorb = unless_empty(lambda: absorb_loss(z_f, self.retained_prototypes, self.config.distance))
            terms = {**terms, "loss": terms["loss"] + self.config.w_absorb * absorb, "absorb": absorb}
        if self.impostor_similarity is not None:
            scatter = scatter_loss(z_f, y_f, self.impostor_similarity)
            terms = {**terms, "loss": terms["loss"] + self.config.w_scatter * scatter, "scatter": scatter}
            if self.held is not None:
                scatter = scatter_loss(z_h, y_h, self.impostor_similarity)
                terms = {**terms, "loss": terms["loss"] + self.config.w_scatter * self.config.hold_old * scatter,
                         "hold_old_scatter": scatter}
        return terms

    def diagnostics(self) -> dict[str, Any]:
        return {**super().diagnostics(), "prototype_classes": int(self.has_prototype.sum()),
                "impostor_similarity": self.impostor_similarity}
