"""LIRF, Learning with Recoverable Forgetting (Ye et al. 2022), the target network's objective.

The network is split at the middle block: the lower blocks (and the patch embedding) train, the upper
blocks and the head stay the original's. With the teacher the frozen model at the request's start:

    (1 - a) * CE(forget relabelled to random retained classes)
    + a * T^2 KL_T(teacher || student) on the retained batch          (knowledge preservation)
    + attention * AT(student, teacher) on the retained batch's middle-block tokens
    - attention_forget * min(AT(student, teacher), 1) on the forget batch's middle-block tokens
    + rehearsal * CE(retain)                                           (the * variant's buffer)

AT is the distance between L2-normalised attention maps (the mean squared activation per token).
The deposit module that stores the forgotten knowledge for recovery is left out: gslora does not
recover classes, and in the reference its loss had no effect (section 9.15). The reference's fixed
logit slicing, which assumes forget classes come first, is not copied.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gslora.adapters import find_ffn_groups
from gslora.config import require
from gslora.methods.base import METHODS, TaskContext
from gslora.methods.finetune import FineTuneConfig, FineTuneMethod, kd_loss
from gslora.models import VisionClassifier


@dataclass
class LIRFConfig(FineTuneConfig):
    """Args:
        a: balance of forgetting CE and preservation KD [0.1].
        temperature: distillation temperature [10].
        attention: weight of the retained attention-transfer term [300, the reference's AT weight].
        attention_forget: weight of the (bounded) forget attention push [0.05].
        rehearsal: weight of CE on the retained batch [5, the reference's replay weight].
    """

    a: float = 0.1
    temperature: float = 10.0
    attention: float = 300.0
    attention_forget: float = 0.05
    rehearsal: float = 5.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 <= self.a <= 1, "method.a", self.a, "must be in [0, 1]")
        require(self.temperature > 0, "method.temperature", self.temperature, "must be > 0")
        require(self.attention >= 0, "method.attention", self.attention, "must be >= 0")
        require(self.attention_forget >= 0, "method.attention_forget", self.attention_forget, "must be >= 0")


def attention_map(tokens: torch.Tensor) -> torch.Tensor:
    """(N, L, D) tokens -> (N, L) L2-normalised mean squared activation per token."""
    return F.normalize(tokens.pow(2).mean(dim=-1), dim=1)


def attention_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return (attention_map(student) - attention_map(teacher)).norm(dim=1).mean()


class _Tap:
    """Keeps the last output of a module."""

    def __init__(self, module: nn.Module) -> None:
        self.output: torch.Tensor | None = None
        module.register_forward_hook(self.hook)

    def hook(self, module: nn.Module, inputs, output) -> None:
        self.output = output[0] if isinstance(output, tuple) else output


@METHODS.register("lirf")
class LIRF(FineTuneMethod):
    config_class = LIRFConfig
    uses_teacher = True

    def setup_task(self, model: VisionClassifier, task: TaskContext) -> None:
        blocks = [g.block for g in find_ffn_groups(model)]
        self.split = max(1, len(blocks) // 2)
        self.upper = blocks[self.split:]
        super().setup_task(model, task)
        middle = blocks[self.split - 1]
        self.student_tap = _Tap(self.model.get_submodule(middle))
        self.teacher_tap = _Tap(self.teacher.get_submodule(middle))

    def frozen_parameters(self, model: VisionClassifier):
        """The upper half of the blocks, everything after them (final norm) and the head."""
        names = [n for n, _ in model.named_parameters()]
        first_upper = next(i for i, n in enumerate(names) if any(n.startswith(b + ".") for b in self.upper))
        frozen = set(names[first_upper:])
        return (p for n, p in model.named_parameters() if n in frozen)

    def loss_terms(self, x_f, y_f, x_r, y_r, *, epoch):
        forget_logits, retain_logits, _, retain_plain = self.forward_both(x_f, y_f, x_r, y_r)
        mid = self.student_tap.output
        n = len(y_r)
        mid_r, mid_f = mid[:n], mid[n:]
        teacher_r = self.teacher_logits(torch.cat([x_r, x_f]))[:n]
        teacher_mid_r, teacher_mid_f = self.teacher_tap.output[:n], self.teacher_tap.output[n:]
        cfg = self.config
        forget = F.cross_entropy(forget_logits, y_f)
        distill = kd_loss(retain_plain, teacher_r, cfg.temperature)
        at_r = attention_distance(mid_r, teacher_mid_r)
        at_f = attention_distance(mid_f, teacher_mid_f)
        rehearsal, retain_ce = self.rehearsal_terms(retain_logits, y_r)
        loss = ((1 - cfg.a) * forget + cfg.a * distill + cfg.attention * at_r
                - cfg.attention_forget * at_f.clamp(max=1.0) + rehearsal)
        return {"loss": loss, "forget_relabelled": forget, "distill": distill, "attention_retain": at_r,
                "attention_forget": at_f, "retain": retain_ce}
