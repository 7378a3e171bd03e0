"""Every supported kind of vision backbone through the command line, with random weights at a tiny size: pretrain ->
forget -> merge -> evaluate, the merged model equal to the base model plus the saved adapter. Plus the refusals:
a CNN without attention (unless asked), a head of another size (unless replaced)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from gslora.cli import main
from gslora.models import load_checkpoint
from tests.conftest import make_npz

TINY_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 8}
TINY_SWIN = {"embed_dim": 32, "depths": [1, 1], "num_heads": [2, 4], "window_size": 4}


def _hf_configs(root: Path) -> dict[str, Path]:
    """Tiny transformers configs saved as local model directories (what a user's downloaded model looks like)."""
    from transformers import BeitConfig, CLIPConfig, DeiTConfig, Dinov2Config, SwinConfig, Swinv2Config, ViTConfig

    shape = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
             "image_size": 32, "patch_size": 8}
    configs = {"vit": ViTConfig(**shape), "deit": DeiTConfig(**shape), "beit": BeitConfig(**shape),
               "dinov2": Dinov2Config(**shape),
               "swin": SwinConfig(embed_dim=32, depths=[1, 1], num_heads=[2, 4], window_size=4, image_size=32),
               "swinv2": Swinv2Config(embed_dim=32, depths=[1, 1], num_heads=[2, 4], window_size=4, image_size=32),
               "clip": CLIPConfig(vision_config=shape, text_config={k: v for k, v in shape.items()
                                                                    if k not in ("image_size", "patch_size")})}
    for name, config in configs.items():
        config.save_pretrained(root / name)
    return {name: root / name for name in configs}


CASES = [
    ("timm", "vit_tiny_patch16_224", TINY_VIT),
    ("timm", "deit_tiny_patch16_224", TINY_VIT),
    ("timm", "beit_base_patch16_224", TINY_VIT),
    ("timm", "swin_tiny_patch4_window7_224", TINY_SWIN),
    ("timm", "swinv2_tiny_window8_256", TINY_SWIN),
    ("timm", "eva02_tiny_patch14_224", TINY_VIT),  # a gated FFN (GLU)
    ("timm", "vit_small_patch14_dinov2", TINY_VIT),
    ("timm", "vit_base_patch16_clip_224", TINY_VIT),  # CLIP's vision tower with a linear head
    ("torchvision", None, None),  # a VisionTransformer by shape
    ("torchvision", "swin_t", None),
    *[("hf", name, None) for name in ("vit", "deit", "beit", "dinov2", "swin", "swinv2", "clip")],
]


def run(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, err.getvalue()


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    data = make_npz(root / "data.npz", per_class_train=[16] * 4, per_class_test=4, size=32, seed=5)
    return root, data, _hf_configs(root / "hf")


def _model_args(family: str, name: str | None, kwargs: dict | None, hf: dict[str, Path]) -> list[str]:
    args = ["--family", family, "--image-size", "32"]
    if family == "hf":
        args += ["--name", str(hf[name])]
    elif name is not None:
        args += ["--name", name]
    else:
        args += ["--depth", "2", "--width", "32", "--heads", "2", "--patch-size", "8"]
    if kwargs:
        args += ["--set", f"model.kwargs={json.dumps(kwargs)}"]
    return args


FAST_FORGET = ["--epochs", "1", "--batch-size", "8", "--set", "train.min_steps=4", "--set", "verify.enabled=false",
               "--accept-partial", "--device", "cpu", "-q"]


@pytest.mark.parametrize("family, name, kwargs", CASES, ids=[f"{f}-{n or 'shape'}" for f, n, _ in CASES])
def test_each_backbone_pretrains_forgets_merges_and_evaluates(setting, tmp_path, family, name, kwargs):
    root, data, hf = setting
    base, run_dir = tmp_path / "base", tmp_path / "run"
    code, err = run("pretrain", "--data", str(data), *_model_args(family, name, kwargs, hf), "--epochs", "1",
                    "--batch-size", "16", "--device", "cpu", "-q", "--out", str(base))
    assert code == 0, err
    code, err = run("forget", "--checkpoint", str(base), "--data", str(data), "--classes", "class_0", *FAST_FORGET,
                    "--out", str(run_dir))
    assert code == 0, err
    record = json.loads((run_dir / "manifest.json").read_text())["requests"][0]
    assert record["group_norms"] and 0 < record["trainable_ratio"] < 0.5
    before, _ = load_checkpoint(base)
    merged, _ = load_checkpoint(run_dir / record["checkpoint"])
    with_adapter = PeftModel.from_pretrained(before, str(run_dir / record["adapter"])).eval()
    x = torch.randint(0, 255, (4, 1, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(x), with_adapter(x), atol=1e-4, rtol=1e-4)
    code, err = run("evaluate", "--checkpoint", str(run_dir / record["checkpoint"]), "--data", str(data), "--json")
    assert code == 0, err


def test_a_cnn_is_refused_unless_asked(setting, tmp_path):
    _, data, _ = setting
    base = tmp_path / "convnext"
    code, err = run("pretrain", "--data", str(data), "--family", "timm", "--name", "convnext_atto", "--epochs", "1",
                    "--batch-size", "16", "--device", "cpu", "-q", "--out", str(base))
    assert code == 0, err
    forget = ["forget", "--checkpoint", str(base), "--data", str(data), "--classes", "class_0", *FAST_FORGET]
    code, err = run(*forget, "--out", str(tmp_path / "refused"))
    assert code == 2 and "no attention" in err and "adapters.allow_non_transformer=true" in err, err
    assert not (tmp_path / "refused").exists()
    code, err = run(*forget, "--set", "adapters.allow_non_transformer=true", "--out", str(tmp_path / "run"))
    assert code == 0, err


def test_weights_with_a_head_of_another_size_need_replace_head(setting, tmp_path):
    """An 'ImageNet' checkpoint (a timm state dict with a 1,000-class head) brought to a 4-class data set."""
    import timm
    from safetensors.torch import save_file

    _, data, _ = setting
    source = timm.create_model("vit_tiny_patch16_224", num_classes=1000, img_size=32, **TINY_VIT)
    save_file(source.state_dict(), str(tmp_path / "imagenet.safetensors"))
    weights = str(tmp_path / "imagenet.safetensors")
    common = ["import", "--data", str(data), "--family", "timm", "--name", "vit_tiny_patch16_224", "--image-size",
              "32", "--set", f"model.kwargs={json.dumps(TINY_VIT)}", "--weights", weights, "--device", "cpu", "-q"]
    code, err = run(*common, "--out", str(tmp_path / "refused"))
    assert code == 2 and "1000-class head but the model has 4 classes" in err and "--replace-head" in err, err
    code, err = run(*common, "--replace-head", "--out", str(tmp_path / "imported"))
    assert code == 0, err
    model, meta = load_checkpoint(tmp_path / "imported")
    assert meta["pretrain"]["seconds"] < 60 and model.head_module().out_features == 4
    kept = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    assert all(torch.equal(model.net.state_dict()[k], v) for k, v in kept.items())  # every other weight imported
