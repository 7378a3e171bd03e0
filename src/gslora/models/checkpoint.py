"""Checkpoints: a directory with ``model.safetensors`` and ``config.json`` (model config, classes, version)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from gslora.config import ModelConfig, from_dict, to_dict
from gslora.errors import GSLoRAError
from gslora.io import atomic_directory, atomic_write_json, sha256_file
from gslora.models.builders import VisionClassifier, build_model
from gslora.models.weights import load_weights
from gslora.version import __version__

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def save_checkpoint(model: VisionClassifier, directory: str | Path, *, classes: list[str],
                    extra: dict[str, Any] | None = None, replace: bool = False) -> str:
    """Write ``model`` atomically as a checkpoint directory; return the weights' SHA-256."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_directory(directory, replace=replace) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "gslora_version": __version__})
        digest = sha256_file(tmp / WEIGHTS_FILE)
        model_config = to_dict(model.config) | {"weights": None, "pretrained": False}  # weights are in the file
        model_config.update(model.family.saved_config(model.net))
        meta = {"gslora_version": __version__, "model": model_config,
                "classes": list(classes), "sha256": digest, **(extra or {})}
        atomic_write_json(tmp / CONFIG_FILE, meta)
    return digest


def read_checkpoint_meta(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """Find a checkpoint's weights file and read its config.json.

    ``path`` is a checkpoint directory or its ``model.safetensors``.
    """
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    weights = directory / WEIGHTS_FILE if path.is_dir() else path
    config_path = directory / CONFIG_FILE
    if not weights.is_file() or not config_path.is_file():
        raise GSLoRAError(f"{str(path)!r} is not a gslora checkpoint (it needs {WEIGHTS_FILE} and {CONFIG_FILE}); "
                          "create one with `gslora pretrain` or pass model.weights with a model config")
    return weights, read_meta_file(config_path)


def read_meta_file(config_path: Path) -> dict[str, Any]:
    """A checkpoint's ``config.json``: a JSON object with a ``model`` mapping.

    Raises:
        GSLoRAError: unreadable, not JSON, or not shaped like a gslora checkpoint config.
    """
    try:
        meta = json.loads(config_path.read_text())
    except OSError as exc:
        raise GSLoRAError(f"cannot read {config_path}: {exc.strerror or exc}; check the checkpoint path") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GSLoRAError(f"{config_path} is not valid JSON ({exc}); the checkpoint is damaged: restore or re-create "
                          "it") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise GSLoRAError(f"{config_path} is not a gslora checkpoint config (a JSON object with a 'model' "
                          "mapping); the checkpoint is damaged: restore or re-create it")
    return meta


def load_checkpoint(path: str | Path) -> tuple[VisionClassifier, dict[str, Any]]:
    """Build the model a checkpoint describes and load its weights; returns (model, config.json)."""
    weights, meta = read_checkpoint_meta(path)
    config = from_dict(ModelConfig, meta.get("model"), "model")
    model = build_model(config)
    load_weights(model, weights)
    return model, meta
