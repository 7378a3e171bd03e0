"""Loading a state dict from a file into a model, with a precise error when it does not fit."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from gslora.errors import GSLoRAError


def load_weights(model: nn.Module, path: str | Path, *, replace_head: bool = False) -> None:
    """Load a ``.safetensors`` or ``.pth`` state dict into ``model`` (strict).

    A gslora state dict (keys ``net.*`` and ``head.*``) loads into the whole model; any other, such
    as a timm, torchvision or transformers state dict, into the family's network ``model.net``.
    ``.pth`` files are read with ``torch.load(weights_only=True)``; a ``{"state_dict": ...}`` or
    ``{"model": ...}`` wrapper is unwrapped. With ``replace_head`` the weights' classification head is left out
    and the model keeps its new one (an ImageNet model brought to a data set with other classes).

    Raises:
        GSLoRAError: unreadable file, or keys or shapes that do not fit the model (a head of another size names
            both class counts and the flag that replaces it).
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
    except pickle.UnpicklingError as exc:
        raise GSLoRAError(f"refused to load {str(path)!r}: it is a pickle that holds more than tensors, and unpickling "
                          "an untrusted file can run code; save the state dict as .safetensors "
                          "(safetensors.torch.save_file) and pass that") from exc
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GSLoRAError(f"cannot read weights {str(path)!r} ({first[:200]}); the file is damaged or not a state "
                          "dict") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise GSLoRAError(f"{str(path)!r} does not hold a state dict (a mapping of names to tensors)")
    check_finite_weights(state, path)
    target = model if any(k.startswith("net.") for k in state) else model.net
    expected = target.state_dict()
    head = _head_prefix(model, target)
    if replace_head and head is not None:
        state = {k: v for k, v in state.items() if not k.startswith(head)}
        expected = {k: v for k, v in expected.items() if not k.startswith(head)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k}: {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items()
                  if k in state and tuple(state[k].shape) != tuple(v.shape)]
    head_only = head is not None and mismatched and all(m.startswith(head) for m in mismatched) and \
        not missing and not unexpected
    if head_only:
        weight = next(k for k in expected if k.startswith(head) and state[k].ndim == 2)
        raise GSLoRAError(f"the weights in {str(path)!r} have a {state[weight].shape[0]}-class head but the model has "
                          f"{expected[weight].shape[0]} classes (model.num_classes); pass --replace-head "
                          "(model.replace_head: true) to start a new head, then train it (gslora pretrain)")
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                parts.append(f"{label}: {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}")
        raise GSLoRAError(f"checkpoint {str(path)!r} does not fit the model ({'; '.join(parts)}); check the model "
                          "config (family, name, depth, width, heads, patch_size, image_size, num_classes)")
    target.load_state_dict(state, strict=not replace_head)


def _head_prefix(model: nn.Module, target: nn.Module) -> str | None:
    """The state-dict prefix of ``model``'s classification head inside ``target`` (None if it has none)."""
    head_module = getattr(model, "head_module", None)
    if head_module is None:
        return None
    head = head_module()
    names = [name for name, m in target.named_modules() if m is head]
    return f"{names[0]}." if names and names[0] else None


def check_finite_weights(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Refuse weights holding NaN or inf: a damaged checkpoint, named as such before any training starts."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise GSLoRAError(f"checkpoint {str(path)!r} holds non-finite weights (NaN or inf in {', '.join(bad[:3])}"
                          f"{' ...' if len(bad) > 3 else ''}); it is damaged: restore it or train it again")
