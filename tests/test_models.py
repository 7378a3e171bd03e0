"""Model builders, input adaptation and checkpoint I/O."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from gslora.config import ModelConfig
from gslora.errors import GSLoRAError
from gslora.models import FAMILIES, build_model, load_checkpoint, load_weights, save_checkpoint
from tests.conftest import tiny_model_config


@pytest.mark.parametrize("family", FAMILIES.names())
def test_every_family_gives_logits_and_embeddings_for_grey_and_colour_input(family):
    model = build_model(tiny_model_config(family)).eval()
    for images in (torch.randint(0, 255, (2, 1, 28, 28), dtype=torch.uint8),
                   torch.randint(0, 255, (2, 3, 40, 40), dtype=torch.uint8)):
        assert model(images).shape == (2, 10)
        assert model.embed(images).shape == (2, 32)


@pytest.mark.parametrize("family, name, size, width", [("timm", "vit_tiny_patch16_224", 32, 192),
                                                       ("torchvision", "vit_b_32", 64, 768)])
def test_named_models_build_offline(family, name, size, width):
    model = build_model(ModelConfig(family=family, name=name, image_size=size, in_chans=3, num_classes=7)).eval()
    x = torch.randint(0, 255, (1, 3, size, size), dtype=torch.uint8)
    assert model(x).shape == (1, 7) and model.embed(x).shape == (1, width)


def test_unknown_named_model_is_a_clear_error():
    with pytest.raises(GSLoRAError, match="torchvision has no model 'vit_z_99'"):
        build_model(ModelConfig(family="torchvision", name="vit_z_99"))


def test_checkpoint_round_trip_and_pth_weights(tmp_path):
    model = build_model(tiny_model_config()).eval()
    digest = save_checkpoint(model, tmp_path / "ck", classes=[str(i) for i in range(10)])
    meta = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert meta["sha256"] == digest and meta["gslora_version"] and meta["model"]["depth"] == 2
    loaded, _ = load_checkpoint(tmp_path / "ck")
    x = torch.randint(0, 255, (2, 1, 28, 28), dtype=torch.uint8)
    torch.testing.assert_close(loaded.eval()(x), model(x))
    torch.save({"state_dict": model.net.state_dict()}, tmp_path / "w.pth")
    other = build_model(tiny_model_config())
    load_weights(other, tmp_path / "w.pth")
    torch.testing.assert_close(other.eval()(x), model(x))
    with pytest.raises(FileExistsError):
        save_checkpoint(model, tmp_path / "ck", classes=[])


def test_weights_that_do_not_fit_name_the_mismatch(tmp_path):
    model = build_model(tiny_model_config(num_classes=5))
    torch.save(model.net.state_dict(), tmp_path / "w.pth")
    with pytest.raises(GSLoRAError, match=r"5-class head but the model has 10 classes.*--replace-head"):
        load_weights(build_model(tiny_model_config()), tmp_path / "w.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(GSLoRAError, match="cannot read weights"):
        load_weights(model, tmp_path / "bad.safetensors")


def test_a_named_model_normalises_with_its_own_statistics_and_the_checkpoint_keeps_them(tmp_path):
    clip = build_model(ModelConfig(family="timm", name="vit_base_patch16_clip_224", image_size=32, in_chans=3,
                                   kwargs={"embed_dim": 64, "depth": 1, "num_heads": 2, "patch_size": 8}))
    assert clip.config.mean == pytest.approx([0.48145466, 0.4578275, 0.40821073])  # CLIP's, not ImageNet's
    save_checkpoint(clip, tmp_path / "clip", classes=[str(i) for i in range(10)])
    again, _ = load_checkpoint(tmp_path / "clip")
    assert again.config.mean == clip.config.mean and again.config.std == clip.config.std
    x = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    expected = (x.float() / 255 - torch.tensor(clip.config.mean).view(1, 3, 1, 1)) / torch.tensor(
        clip.config.std).view(1, 3, 1, 1)
    torch.testing.assert_close(again.prepare(x), expected)
    assert build_model(tiny_model_config()).config.mean == 0.5  # a ViT built by shape: gslora's own
    with pytest.raises(GSLoRAError, match="model.mean has 3 values but the model takes 1 channel"):
        build_model(tiny_model_config(mean=[0.1, 0.2, 0.3]))


def test_a_named_model_resizes_with_its_own_filter_and_data_decoded_for_it_follows(tmp_path):
    """timm's pretrained_cfg says bicubic for CLIP; the checkpoint keeps it, prepare resizes with it, and a data set
    loaded for that checkpoint decodes at the model's size with the same filter unless data says otherwise."""
    from gslora.config import DataConfig
    from gslora.data import for_model

    clip = build_model(ModelConfig(family="timm", name="vit_base_patch16_clip_224", image_size=32, in_chans=3,
                                   kwargs={"embed_dim": 64, "depth": 1, "num_heads": 2, "patch_size": 8}))
    assert clip.config.interpolation == "bicubic"
    save_checkpoint(clip, tmp_path / "clip", classes=[str(i) for i in range(10)])
    again, meta = load_checkpoint(tmp_path / "clip")
    x = torch.randint(0, 255, (2, 3, 48, 48), dtype=torch.uint8)
    bicubic = F.interpolate(x.float() / 255, size=(32, 32), mode="bicubic", align_corners=False, antialias=True)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (clip.config.mean, clip.config.std))
    torch.testing.assert_close(again.prepare(x), (bicubic - mean) / std)
    assert build_model(tiny_model_config()).config.interpolation == "bilinear"  # built by shape
    assert build_model(ModelConfig(family="timm", name="vit_base_patch16_clip_224", image_size=32, in_chans=3,
                                   interpolation="nearest", kwargs={"embed_dim": 64, "depth": 1, "num_heads": 2,
                                                                    "patch_size": 8})).config.interpolation == "nearest"
    decoding = for_model(DataConfig(dataset="folder"), meta["model"])
    assert (decoding.image_size, decoding.interpolation) == (32, "bicubic")
    mine = for_model(DataConfig(dataset="folder", image_size=96, interpolation="bilinear"), meta["model"])
    assert (mine.image_size, mine.interpolation) == (96, "bilinear")
    with pytest.raises(GSLoRAError, match="model.interpolation"):
        ModelConfig(interpolation="lanczos")
