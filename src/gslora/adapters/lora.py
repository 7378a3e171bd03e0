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
from typing import TYPE_CHECKING

import torch
from torch import nn

from gslora.errors import GSLoRAError

if TYPE_CHECKING:  # peft imports transformers (seconds): only a request that attaches LoRA loads it
    from peft import PeftModel


@dataclass(frozen=True)
class BlockGroup:
    """The FFN layers of one transformer block: one group of the group lasso.

    Attributes:
        block: module name of the block (``net.blocks.3``).
        targets: module names of the FFN's layers: expanding (and gate, for a gated FFN), then contracting.
    """

    block: str
    targets: tuple[str, ...]


def _common_depth(a: str, b: str) -> int:
    depth = 0
    for x, y in zip(a.split("."), b.split(".")):
        if x != y:
            break
        depth += 1
    return depth


def _projection(module: nn.Module, allow_conv: bool) -> tuple[int, int] | None:
    """(in, out) features of a layer that can be one side of an FFN: a linear layer, or (CNN MLP blocks, when
    allowed) a 1x1 convolution."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if allow_conv and isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1:
        return module.in_channels, module.out_channels
    return None


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _ffn(block: nn.Module, prefix: str, *, allow_conv: bool = False) -> tuple[str, ...] | None:
    """The block's FFN: layers up (d -> h) and down (h -> d), h != d, plus a gate (d -> h) beside the up layer when
    the FFN is a gated linear unit (SwiGLU's ``fc1_g``); a fused gate (up: d -> 2h, as timm's ``GluMlp``) counts too.

    Several pairs can fit: the FFN works on the residual stream, so the widest d wins (a Swin-V2 block's tiny
    position-bias MLP, 2 -> 512 -> heads, loses); then the deepest common parent (timm ``mlp.fc1/fc2``, not a qkv
    projection d -> 3d with ``fc2`` when mlp_ratio is 3), then the closest in order.
    """
    layers = [(name, dims) for name, m in block.named_modules() if (dims := _projection(m, allow_conv))]
    candidates = []
    for i, (up_name, (d, h)) in enumerate(layers):
        for j, (down_name, (h_down, d_out)) in enumerate(layers[i + 1:], start=i + 1):
            if d_out != d or h == d or h not in (h_down, 2 * h_down):
                continue
            gates = [name for name, dims in layers if name not in (up_name, down_name) and dims == (d, h_down)
                     and _parent(name) == _parent(up_name)] if h == h_down else []
            order = [n for n, _ in layers]
            expanding = sorted([up_name, *gates[:1]], key=order.index)  # gate and value in module order
            targets = tuple(f"{prefix}.{n}" for n in (*expanding, down_name))
            candidates.append((-d, -_common_depth(up_name, down_name), j - i, targets))
    return min(candidates)[-1] if candidates else None


def _has_attention(block: nn.Module) -> bool:
    """Whether a block mixes tokens with attention (timm, torchvision, transformers and DETR attention modules)."""
    return any(isinstance(m, nn.MultiheadAttention) or "attention" in type(m).__name__.lower()
               for m in block.modules())


def find_ffn_groups(model: nn.Module, *, allow_non_transformer: bool = False) -> list[BlockGroup]:
    """One ``BlockGroup`` per transformer block of ``model``, in forward order.

    A block container is a ``ModuleList``/``Sequential`` whose children share one type and each hold an FFN; when
    containers nest (stages of blocks, as in Swin), only the innermost ones count. Blocks without attention (a CNN's
    MLP blocks, ConvNeXt) are adapted only with ``allow_non_transformer``, which also admits 1x1 convolutions.

    Raises:
        GSLoRAError: no block with an FFN was found, or only blocks without attention (and not allowed).
    """
    containers: dict[str, list[tuple[BlockGroup, bool]]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)):
            continue
        children = list(module.named_children())
        if not children or len({type(child) for _, child in children}) != 1:
            continue
        paths = [f"{name}.{child_name}" if name else child_name for child_name, _ in children]
        ffns = [_ffn(child, path, allow_conv=allow_non_transformer) for (_, child), path in zip(children, paths)]
        if all(ffns):
            containers[name] = [(BlockGroup(path, ffn), _has_attention(child))
                                for (_, child), path, ffn in zip(children, paths, ffns)]
    innermost = [name for name in containers
                 if not any(other != name and (name == "" or other.startswith(name + ".")) for other in containers)]
    found = [g for name in innermost for g in containers[name]]
    groups = [g for g, attention in found if attention or allow_non_transformer]
    looked_for = ("ModuleList/Sequential containers of blocks that hold attention and an FFN (layers d -> h -> d, "
                  "gated or not)")
    if not groups and not allow_non_transformer and not found:
        try:  # MLP blocks of 1x1 convolutions (ConvNeXt) show only when convolutions count
            found = [(g, False) for g in find_ffn_groups(model, allow_non_transformer=True)]
        except GSLoRAError:
            pass
    if not groups and found:
        raise GSLoRAError(f"{type(model).__name__} has MLP blocks but no attention in them (a CNN such as ConvNeXt; "
                          f"looked for {looked_for}); gslora's groups are a transformer's FFNs. To adapt its MLP "
                          "blocks anyway pass adapters.allow_non_transformer=true "
                          "(--set adapters.allow_non_transformer=true)")
    if not groups:
        raise GSLoRAError(f"found no transformer blocks in {type(model).__name__} (looked for {looked_for}); gslora "
                          "adapts transformer-style vision models (ViT, DeiT, BEiT, Swin, EVA, DINOv2, CLIP, DETR)")
    return groups


def attach_lora(model: nn.Module, groups: list[BlockGroup], *, rank: int, lora_alpha: float,
                dropout: float = 0.0) -> PeftModel:
    """Wrap ``model`` in a peft model with LoRA on every group's FFN layers; everything else frozen.

    peft's default init (A Kaiming-uniform, B = 0) makes the adapter start as the identity edit.
    The scaling is ``lora_alpha / rank`` (reference: 1 / 8).
    """
    from peft import LoraConfig, get_peft_model

    targets = [t for g in groups for t in g.targets]
    config = LoraConfig(r=rank, lora_alpha=lora_alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    return get_peft_model(model, config)


def injected_model(model: nn.Module) -> nn.Module:
    """The model inside a peft wrapper, its LoRA layers in place; any other model as it is."""
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


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
