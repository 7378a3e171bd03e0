"""LoRA adapters on the FFN of every transformer block, through peft, grouped per block.

Blocks and their FFN layers are found by walking the module tree: a *block container* is a
``ModuleList``/``Sequential`` whose children are all of one type, and a block's FFN is the pair of
``nn.Linear`` layers inside it that expand and contract the width (d -> h -> d, h != d). This finds
timm ``blocks.i.mlp.fc1/fc2``, torchvision ``encoder_layer_i.mlp.0/3`` and transformers
``layer.i.intermediate.dense / output.dense`` without naming any of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from gslora.errors import GSLoRAError


@dataclass(frozen=True)
class BlockGroup:
    """The FFN layers of one transformer block: one group of the group lasso.

    Attributes:
        block: module name of the block (``net.blocks.3``).
        targets: module names of the expanding and the contracting linear layer.
    """

    block: str
    targets: tuple[str, str]


def _common_depth(a: str, b: str) -> int:
    depth = 0
    for x, y in zip(a.split("."), b.split(".")):
        if x != y:
            break
        depth += 1
    return depth


def _ffn_pair(block: nn.Module, prefix: str) -> tuple[str, str] | None:
    """The block's FFN: linear layers up (d -> h) and down (h -> d), h != d.

    Several pairs can fit (with mlp_ratio 3 a qkv projection d -> 3d also pairs with fc2); the FFN
    is the pair with the deepest common parent (timm ``mlp.fc1/fc2``), then the closest in order.
    """
    linears = [(name, m) for name, m in block.named_modules() if isinstance(m, nn.Linear)]
    candidates = []
    for i, (up_name, up) in enumerate(linears):
        for j, (down_name, down) in enumerate(linears[i + 1:], start=i + 1):
            if (up.out_features == down.in_features and up.in_features == down.out_features
                    and up.out_features != up.in_features):
                candidates.append((-_common_depth(up_name, down_name), j - i, up_name, down_name))
    if not candidates:
        return None
    _, _, up_name, down_name = min(candidates)
    return f"{prefix}.{up_name}", f"{prefix}.{down_name}"


def find_ffn_groups(model: nn.Module) -> list[BlockGroup]:
    """One ``BlockGroup`` per transformer block of ``model``, in forward order.

    A block container is a ``ModuleList``/``Sequential`` whose children share one type and each hold
    an FFN; when containers nest (stages of blocks), only the innermost ones count.

    Raises:
        GSLoRAError: no block with an FFN was found.
    """
    containers: dict[str, list[BlockGroup]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)):
            continue
        children = list(module.named_children())
        if not children or len({type(child) for _, child in children}) != 1:
            continue
        paths = [f"{name}.{child_name}" if name else child_name for child_name, _ in children]
        pairs = [_ffn_pair(child, path) for (_, child), path in zip(children, paths)]
        if all(pairs):
            containers[name] = [BlockGroup(path, pair) for path, pair in zip(paths, pairs)]
    innermost = [name for name in containers
                 if not any(other != name and (name == "" or other.startswith(name + ".")) for other in containers)]
    groups = [g for name in innermost for g in containers[name]]
    if not groups:
        raise GSLoRAError(f"found no transformer blocks with an FFN (two linear layers d -> h -> d) in "
                          f"{type(model).__name__}; gslora adapts ViT-style models")
    return groups


def attach_lora(model: nn.Module, groups: list[BlockGroup], *, rank: int, lora_alpha: float,
                dropout: float = 0.0) -> PeftModel:
    """Wrap ``model`` in a peft model with LoRA on every group's FFN layers; everything else frozen.

    peft's default init (A Kaiming-uniform, B = 0) makes the adapter start as the identity edit.
    The scaling is ``lora_alpha / rank`` (reference: 1 / 8).
    """
    targets = [t for g in groups for t in g.targets]
    config = LoraConfig(r=rank, lora_alpha=lora_alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    return get_peft_model(model, config)


def group_parameters(peft_model: PeftModel, groups: list[BlockGroup]) -> list[list[nn.Parameter]]:
    """The LoRA tensors (A and B of both FFN layers) of each group."""
    base = peft_model.base_model.model
    return [[p for t in g.targets for n, p in base.get_submodule(t).named_parameters() if "lora_" in n]
            for g in groups]


def group_norms(params: list[list[nn.Parameter]]) -> torch.Tensor:
    """(G,) tensor of ||theta_g||_2 = sqrt(sum of squared entries of the group's tensors)."""
    return torch.stack([torch.sqrt(sum((p * p).sum() for p in group)) for group in params])


def group_lasso(params: list[list[nn.Parameter]]) -> torch.Tensor:
    """The group-lasso penalty sum_g ||theta_g||_2 (no sqrt(group size) weight, as in the reference)."""
    return group_norms(params).sum()


def delta_norms(peft_model: PeftModel, groups: list[BlockGroup]) -> list[float]:
    """Frobenius norm of each group's weight edit, sqrt(sum over its layers of ||scaling * B A||_F^2).

    Unlike the group norm this is zero for a block the adapter left alone (B = 0), whatever A is.
    """
    base = peft_model.base_model.model
    norms = []
    with torch.no_grad():
        for g in groups:
            squares = sum(float(base.get_submodule(t).get_delta_weight("default").float().pow(2).sum())
                          for t in g.targets)
            norms.append(squares ** 0.5)
    return norms


def merge_adapter(peft_model: PeftModel) -> nn.Module:
    """Fold W <- W + scaling * B A into the base weights and return the plain model.

    peft's safe merge checks the merged weights for NaN/inf before writing them.
    """
    try:
        return peft_model.merge_and_unload(safe_merge=True)
    except ValueError as exc:
        raise GSLoRAError(f"the adapter holds non-finite values and was not merged: {exc}") from exc


def save_adapter(peft_model: PeftModel, directory: str | Path) -> None:
    """Save the adapter in peft format (adapter_config.json + adapter_model.safetensors)."""
    peft_model.save_pretrained(str(directory))
