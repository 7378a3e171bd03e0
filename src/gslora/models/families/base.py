"""The family extension point and its registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gslora.errors import GSLoRAError
from gslora.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn

    from gslora.config import ModelConfig

FAMILIES: Registry = Registry("model family")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def require_patch_stem(config: ModelConfig) -> None:
    """Only timm ViTs built by shape take the convolutional stem."""
    if config.stem != "patch":
        raise GSLoRAError(f"model.stem={config.stem} is available for timm ViTs built by shape; use model.family=timm "
                          "without model.name, or model.stem=patch")


def require_hub(name: str, host: str) -> None:
    """Fail at once, not after minutes of retries, when ``name`` must come from ``host`` and the host cannot even be
    resolved (an offline machine). Local paths and ``HF_HUB_OFFLINE`` (cached files) skip the check."""
    import os
    import socket
    from pathlib import Path

    if Path(name).exists() or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        return
    try:
        socket.getaddrinfo(host, 443)
    except OSError as exc:
        raise unreachable_weights(name, exc) from exc


def unreachable_weights(name: str, exc: BaseException) -> GSLoRAError:
    """The error for pretrained weights that cannot be fetched (offline machine, unknown hub id)."""
    return GSLoRAError(f"cannot fetch the pretrained weights of {name!r} ({type(exc).__name__}: {first_line(exc)}); "
                       "without network, drop --pretrained and pass local weights with --weights FILE (or "
                       "model.weights), or a local directory as model.name for Hugging Face models")


class Family(ABC):
    """How gslora builds and reads one library's vision transformers."""

    @abstractmethod
    def build(self, config: ModelConfig) -> tuple[nn.Module, int, int]:
        """(network, input channels its patch embedding takes, embedding size the head reads).

        Raises:
            GSLoRAError: unknown name, a config the family cannot build, or weights that cannot be fetched.
        """

    @abstractmethod
    def head(self, net: nn.Module) -> nn.Module:
        """The module that maps the embedding to logits."""

    @abstractmethod
    def drop_head(self, net: nn.Module) -> None:
        """Remove the family's head (a CosFace head on the embedding replaces it)."""

    @abstractmethod
    def embed(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """(N, D) embedding of normalised images ``x`` (N, C, H, W): what the head reads."""

    def classify(self, net: nn.Module, embedding: torch.Tensor) -> torch.Tensor:
        return self.head(net)(embedding)

    def preprocessing(self, net: nn.Module, config: ModelConfig) -> dict[str, Any]:
        """What the named model was trained with, as far as it says: per-channel ``mean`` and ``std``, resize
        ``interpolation``; what is missing falls back to 0.5 and bilinear."""
        return {}

    def saved_config(self, net: nn.Module) -> dict[str, Any]:
        """What a checkpoint must record beyond the ``ModelConfig`` to rebuild ``net`` offline (transformers'
        config, for one)."""
        return {}


def module_path(net: nn.Module, module: nn.Module) -> str:
    """The dotted name of ``module`` inside ``net``."""
    return next(name for name, m in net.named_modules() if m is module)


def last_linear(net: nn.Module) -> tuple[str, nn.Module]:
    """The classifier of a torchvision-style network: its last linear layer (``heads.head``, ``head``, ``fc``,
    ``classifier.2``)."""
    from torch import nn

    found = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise GSLoRAError(f"{type(net).__name__} has no linear classifier; gslora needs a classification head")
    return found[-1]


def replace_module(net: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, name, module)


def embed_through_head(net: nn.Module, head: nn.Module, run: Callable[[], Any]) -> torch.Tensor:
    """The embedding a network's head reads: the head's input, caught by a forward hook while ``run()`` runs the
    network. Works for any architecture whose head is one module (Swin's pooled features, DINOv2's CLS and mean
    patch tokens side by side, a ViT's CLS token)."""
    caught: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda _m, inputs, _out: caught.append(inputs[0]))
    try:
        run()
    finally:
        handle.remove()
    if not caught:
        raise GSLoRAError(f"{type(net).__name__} never called its head; gslora cannot read its embedding")
    return caught[-1]
