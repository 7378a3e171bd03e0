"""The one training loop of forgetting requests, and the shared optimiser, schedule and batching."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Protocol

import torch
from torch import nn

from gslora.config import ForgetTrainConfig, TrainConfig
from gslora.data import ImageSet, load_batches
from gslora.engine import distributed
from gslora.errors import GSLoRAError, NonFiniteLossError
from gslora.methods import Method, TaskContext

log = logging.getLogger(__name__)


class ProgressBar(Protocol):
    def update(self, n: int = 1) -> Any: ...
    def set_postfix(self, values: dict[str, Any]) -> Any: ...


ProgressFactory = Callable[[int, str], AbstractContextManager[ProgressBar]]


class _NoProgress:
    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, values: dict[str, Any]) -> None: ...


def no_progress(total: int, desc: str) -> AbstractContextManager[ProgressBar]:
    return nullcontext(_NoProgress())


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GSLoRAError(f"device {name!r} was asked for but this machine has no CUDA GPU; use --device cpu or auto")
    return torch.device(name)


def cosine_lr(epoch: int, config: TrainConfig) -> float:
    """Per-epoch lr: linear warm-up, then cosine from ``lr`` to ``min_lr`` (the reference's timm schedule)."""
    if epoch < config.warmup_epochs:
        return config.lr * (epoch + 1) / (config.warmup_epochs + 1)
    progress = (epoch - config.warmup_epochs) / max(1, config.epochs - config.warmup_epochs)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


def make_optimizer(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (biases and norms exempt, as timm does)."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr)


def index_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index tensors of one shuffled pass over ``n`` samples."""
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def grouped_index_batches(labels: torch.Tensor, batch_size: int, group: int, generator: torch.Generator, *,
                          shares: int = 1) -> Iterator[torch.Tensor]:
    """Index tensors of one shuffled pass over samples with ``labels``: each class's samples (in a shuffled order) cut
    into runs of ``group``, its last run shorter when its count is not a multiple, the runs shuffled and the result cut
    into batches. Runs of one class follow each other, so with counts that are multiples of ``group`` and a batch size
    that is one too, each batch is whole runs (two may share a class); a shorter run shifts the later runs across batch
    boundaries. With ``shares`` processes each batch is ordered for ``distributed.shard`` so that every process gets a
    contiguous piece of it (runs stay together when the piece size is a multiple of ``group``)."""
    shuffled = torch.randperm(len(labels), generator=generator)
    by_class = shuffled[labels[shuffled].argsort(stable=True)]  # class by class, each in the shuffled order
    counts = labels.unique(return_counts=True)[1]
    position = torch.arange(len(labels)) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    runs = -(-counts // group)
    run = torch.repeat_interleave(runs.cumsum(0) - runs, counts) + position // group  # each sample's run
    place = torch.empty(int(runs.sum()), dtype=torch.long)
    place[torch.randperm(len(place), generator=generator)] = torch.arange(len(place))  # the runs' shuffled places
    order = by_class[place[run].argsort(stable=True)]
    for idx in order.split(batch_size):
        yield distributed.interleave(idx, shares)


def batches(data: ImageSet, batch_size: int, generator: torch.Generator, *, pin_memory: bool = False,
            group: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One shuffled pass over ``data`` in batches (a streamed set's next batches decode while this one is used);
    ``group`` > 1 keeps runs of that many images of one class together (``grouped_index_batches``, ordered for this
    run's processes)."""
    order = list(index_batches(len(data), batch_size, generator) if group == 1 else
                 grouped_index_batches(data.labels, batch_size, group, generator, shares=distributed.world_size()))
    for idx, images in zip(order, load_batches(data.images, order, pin_memory=pin_memory), strict=True):
        yield images, data.labels[idx]


def set_lr(optimizer: torch.optim.Optimizer, epoch: int, config: TrainConfig) -> None:
    for group in optimizer.param_groups:
        group["lr"] = cosine_lr(epoch, config)


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, params: list[nn.Parameter],
                   max_grad_norm: float, scaler: torch.amp.GradScaler | None = None) -> None:
    """Backward, gradients averaged over the processes, optional clipping, step (through ``scaler`` for fp16)."""
    optimizer.zero_grad(set_to_none=True)
    (loss if scaler is None else scaler.scale(loss)).backward()
    distributed.average_gradients(params)
    if max_grad_norm > 0:
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()


def autocast(config: TrainConfig, device: torch.device) -> AbstractContextManager:
    """The forward pass's precision: nothing for fp32, ``torch.autocast`` for bf16 and fp16."""
    if config.precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if config.precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(config: TrainConfig, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 gradients underflow without loss scaling (on CUDA); bf16 and fp32 need none."""
    return torch.amp.GradScaler(device.type) if config.precision == "fp16" and device.type == "cuda" else None


def prepare(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.amp.GradScaler | None:
    """What ``config`` asks of a training loop before its first step: activation checkpointing, and the loss scaler
    (fp16 on CUDA; else ``None``)."""
    if config.checkpointing:
        enable_checkpointing(model)
    return grad_scaler(config, device)


def enable_checkpointing(model: nn.Module) -> None:
    """Activation checkpointing on the first network inside ``model`` that offers it (timm's
    ``set_grad_checkpointing``, transformers' ``gradient_checkpointing_enable``)."""
    for module in model.modules():
        if hasattr(module, "set_grad_checkpointing"):
            module.set_grad_checkpointing(True)
            return
        if hasattr(module, "gradient_checkpointing_enable") and getattr(module, "supports_gradient_checkpointing",
                                                                        False):
            module.gradient_checkpointing_enable()
            return
    raise GSLoRAError(f"train.checkpointing: {type(model).__name__} offers no activation checkpointing (timm and "
                      "transformers models do); set train.checkpointing=false")


class Profile:
    """Seconds spent in each phase of a request (data, forward, backward, ...), summed; on CUDA the clock waits for
    the GPU at each phase boundary, so the phases are attributed right."""

    def __init__(self, device: torch.device) -> None:
        self.seconds: dict[str, float] = {}
        self.sync = device.type == "cuda"

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self.sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def cycle(data: ImageSet, batch_size: int, generator: torch.Generator, *, pin_memory: bool = False, group: int = 1
          ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled batches: the forget loader is re-created when exhausted, as in the reference."""
    while True:
        yield from batches(data, batch_size, generator, pin_memory=pin_memory, group=group)


def augment(images: torch.Tensor, generator: torch.Generator, *, jitter: float = 0.0) -> torch.Tensor:
    """Random shift (zero padding of 1/7 of the side), horizontal flip and, with ``jitter`` > 0,
    brightness and contrast scaled by factors in [1 - jitter, 1 + jitter]; per image, uint8 in and out."""
    n, _, h, w = images.shape
    pad = max(1, h // 7)
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    out[flip] = out[flip].flip(-1)
    if jitter > 0:
        x = out.float()
        brightness = 1 + jitter * (2 * torch.rand(n, 1, 1, 1, generator=generator) - 1)
        contrast = 1 + jitter * (2 * torch.rand(n, 1, 1, 1, generator=generator) - 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        out = ((x - mean) * contrast + mean * brightness).clamp(0, 255).to(torch.uint8)
    return out


def train_mode(model: nn.Module) -> None:
    """Training mode for a request: dropout and the like active, but normalisation layers whose parameters are
    frozen keep their running statistics (a conv stem's BatchNorm would otherwise drift on every request and
    the drift would survive the merge, so "model before + adapter" would no longer be the request's model)."""
    model.train()
    for module in model.modules():
        stats = isinstance(module, nn.modules.batchnorm._NormBase) or hasattr(module, "running_mean")
        if stats and not any(p.requires_grad for p in module.parameters(recurse=False)):
            module.eval()


def check_finite(terms: dict[str, torch.Tensor], *, epoch: int, step: int) -> None:
    loss = terms["loss"]
    if not torch.isfinite(loss):
        shown = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
        raise NonFiniteLossError(f"the loss became non-finite at epoch {epoch}, step {step} ({shown}); lower "
                                 "train.lr or the loss weights (method.beta, method.bnd)")


def train_epochs(model: nn.Module, params: list[nn.Parameter], n: int, config: TrainConfig,
                 batch_loss: Callable[[torch.Tensor, torch.Generator], torch.Tensor], *, desc: str,
                 progress: ProgressFactory = no_progress) -> list[dict[str, float]]:
    """Pre-training: ``config.epochs`` shuffled passes over ``n`` samples, each batch's loss from
    ``batch_loss(indices, generator)`` (which takes this rank's share of the batch after drawing its random
    augmentation, so every rank's generator stays in step); returns the mean loss per epoch."""
    optimizer = make_optimizer(params, config)
    device = next(iter(params)).device if params else torch.device("cpu")
    scaler = prepare(model, config, device)
    generator = torch.Generator().manual_seed(config.seed)
    steps = -(-n // config.batch_size)
    history = []
    with progress(config.epochs * steps, desc) as bar:
        for epoch in range(config.epochs):
            set_lr(optimizer, epoch, config)
            model.train()
            total = 0.0
            for step, idx in enumerate(index_batches(n, config.batch_size, generator)):
                with autocast(config, device):
                    loss = batch_loss(idx, generator)
                check_finite({"loss": loss}, epoch=epoch, step=step)
                optimizer_step(optimizer, loss, params, config.max_grad_norm, scaler)
                total += loss.item()
                bar.update(1)
            history.append({"epoch": epoch, "loss": distributed.average_values({"loss": total / steps})["loss"]})
            bar.set_postfix({"loss": f"{total / steps:.3f}"})
            log.info("%s epoch %d: loss %.4f", desc, epoch, total / steps)
    return history


PairedBatches = Iterator[tuple[Any, Any]]


def optimise(method: Method, config: TrainConfig, *, steps_per_epoch: int, epoch_batches: Callable[[], PairedBatches],
             desc: str, progress: ProgressFactory = no_progress, device: torch.device | None = None,
             profile: Profile | None = None, done: Callable[[], bool] | None = None) -> list[dict[str, float]]:
    """The loop every forgetting request runs: per epoch set the lr, take ``method.training_step`` on each
    (forget batch, retain batch) of ``epoch_batches()``, step the optimiser; returns each term's epoch mean.
    The epochs are raised to reach ``config.min_steps``; ``profile`` sums the seconds of data, forward and backward;
    ``done()``, asked after each epoch, ends the request early when it returns True."""
    config = config.for_steps_per_epoch(steps_per_epoch)
    device = device or torch.device("cpu")
    profile = profile or Profile(device)
    params = method.trainable_parameters()
    if not params:
        raise GSLoRAError(f"{type(method).__name__} has no trainable parameters; nothing to optimise")
    optimizer = make_optimizer(params, config)
    scaler = prepare(method.model, config, device)
    step_fn = torch.compile(method.training_step) if config.compile else method.training_step
    history = []
    with progress(config.epochs * steps_per_epoch, desc) as bar:
        for epoch in range(config.epochs):
            set_lr(optimizer, epoch, config)
            train_mode(method.model)
            sums: dict[str, float] = {}
            batches_of_epoch, step = epoch_batches(), 0
            while True:
                with profile.phase("data"):
                    batch = next(batches_of_epoch, None)
                if batch is None:
                    break
                forget_batch, retain_batch = distributed.shard(batch)
                with profile.phase("forward"), autocast(config, device):
                    terms = step_fn(forget_batch, retain_batch, epoch=epoch)
                check_finite(terms, epoch=epoch, step=step)
                with profile.phase("backward"):
                    optimizer_step(optimizer, terms["loss"], params, config.max_grad_norm, scaler)
                    method.after_step()
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v.item()
                bar.update(1)
                step += 1
            means = distributed.average_values({k: v / steps_per_epoch for k, v in sums.items()})
            history.append({"epoch": epoch, "lr": cosine_lr(epoch, config), **means})
            bar.set_postfix({k: f"{v:.3g}" for k, v in means.items()})
            log.debug("%s epoch %d: %s", desc, epoch, means)
            if done is not None and epoch + 1 < config.epochs and done():
                log.info("%s: forgotten after epoch %d of %d; stopping", desc, epoch + 1, config.epochs)
                break
    return history


def train_request(method: Method, task: TaskContext, forget: ImageSet, retain: ImageSet, config: TrainConfig, *,
                  device: torch.device, progress: ProgressFactory = no_progress,
                  profile: Profile | None = None, done: Callable[[], bool] | None = None) -> list[dict[str, float]]:
    """Optimise ``method`` on one request; returns the mean of every loss term per epoch.

    One epoch is one pass over the retain subset; each step pairs a retain batch with the next batch of the cycled
    forget subset (the reference's schedule), followed by a batch of the method's ``held_data`` when it has any. A
    training-free method takes no step. ``done()``, asked after each epoch, ends the request early
    (``Task.stop_check``: ``train.stop_when_forgotten``).
    """
    if method.training_free:
        return []
    config = ForgetTrainConfig.of(config)
    generator = torch.Generator().manual_seed(config.seed + task.request.index)
    pin = device.type == "cuda"
    forget_batches = cycle(forget, config.batch_size, generator, pin_memory=pin, group=config.forget_group)
    held = method.held_data()
    # their own generator (order and augmentation), so that holding changes none of the other batches
    held_generator = torch.Generator().manual_seed(config.seed + task.request.index + 1)
    held_batches = cycle(held, config.batch_size, held_generator, pin_memory=pin, group=config.forget_group) \
        if held is not None and len(held) else None

    def epoch_batches() -> PairedBatches:
        for x_r, y_r in batches(retain, config.batch_size, generator, pin_memory=pin):
            x_f, y_f = next(forget_batches)
            if config.augment:
                x_r = augment(x_r, generator, jitter=config.jitter)
                x_f = augment(x_f, generator, jitter=config.jitter)
            if held_batches is not None:
                x_h, y_h = next(held_batches)
                x_h = augment(x_h, held_generator, jitter=config.jitter) if config.augment else x_h
                x_f, y_f = torch.cat([x_f, x_h]), torch.cat([y_f, y_h])
            yield (x_f.to(device), y_f.to(device)), (x_r.to(device), y_r.to(device))

    return optimise(method, config, steps_per_epoch=task.steps_per_epoch, epoch_batches=epoch_batches,
                    desc=f"request {task.request.index}", progress=progress, device=device, profile=profile,
                    done=done)
