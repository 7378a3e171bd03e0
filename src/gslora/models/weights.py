"""Loading a state dict from a file into a model, with a precise error when it does not fit."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from gslora.errors import GSLoRAError


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a ``.safetensors`` or ``.pth`` state dict into ``model`` (strict).

    A gslora state dict (keys ``net.*`` and ``head.*``) loads into the whole model; any other, such
    as a timm, torchvision or transformers state dict, into the family's network ``model.net``.
    ``.pth`` files are read with ``torch.load(weights_only=True)``; a ``{"state_dict": ...}`` or
    ``{"model": ...}`` wrapper is unwrapped.

    Raises:
        GSLoRAError: unreadable file, or keys or shapes that do not fit the model.
    """
    path = Path(path)
    if not path.is_file():
        raise GSLoRAError(f"weights file {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            for key in ("state_dict", "model"):
                if isinstance(state, dict) and isinstance(state.get(key), dict):
                    state = state[key]
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise GSLoRAError(f"cannot read weights {str(path)!r}: {exc}") from exc
    target = model if any(k.startswith("net.") for k in state) else model.net
    expected = target.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k}: {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items()
                  if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                parts.append(f"{label}: {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}")
        raise GSLoRAError(f"checkpoint {str(path)!r} does not fit the model ({'; '.join(parts)}); check the model "
                          "config (family, name, depth, width, heads, patch_size, image_size, num_classes)")
    target.load_state_dict(state, strict=True)
