"""LoRA adapters: discovery, merge invariants, freezing, the group-lasso penalty, peft round trip."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import PeftModel

from gslora.adapters import (
    attach_lora,
    find_ffn_groups,
    group_lasso,
    group_norms,
    group_parameters,
    merge_adapter,
    save_adapter,
)
from gslora.errors import GSLoRAError
from gslora.models import FAMILIES, build_model
from tests.conftest import tiny_model_config

FAMILY_NAMES = FAMILIES.names()


def _randomise_lora(peft_model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("depth", [2, 3])
def test_discovery_finds_one_ffn_group_per_block(family, depth):
    model = build_model(tiny_model_config(family, depth))
    groups = find_ffn_groups(model)
    assert len(groups) == depth
    for g in groups:
        up, down = (model.get_submodule(t) for t in g.targets)
        assert isinstance(up, torch.nn.Linear) and isinstance(down, torch.nn.Linear)
        assert (up.in_features, up.out_features) == (32, 128)
        assert (down.in_features, down.out_features) == (128, 32)
        assert all(t.startswith(g.block + ".") for t in g.targets)
    assert len({g.block for g in groups}) == depth


def test_discovery_rejects_a_model_without_blocks():
    with pytest.raises(GSLoRAError, match="found no transformer blocks"):
        find_ffn_groups(torch.nn.Sequential(torch.nn.Linear(4, 4)))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_merged_output_equals_unmerged_with_nonzero_lora(family):
    torch.manual_seed(0)
    model = build_model(tiny_model_config(family)).eval()
    x = torch.randint(0, 255, (4, 1, 28, 28), dtype=torch.uint8)
    base_embedding = model.embed(x)  # torchvision zero-initialises its head, so compare features too
    peft_model = attach_lora(copy.deepcopy(model), find_ffn_groups(model), rank=4, lora_alpha=1.0)
    _randomise_lora(peft_model)
    peft_model.eval()
    unmerged, unmerged_embedding = peft_model(x), peft_model.base_model.model.embed(x)
    assert not torch.allclose(unmerged_embedding, base_embedding, atol=1e-3), "the adapter should change features"
    merged = merge_adapter(peft_model)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(merged(x), unmerged, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(merged.embed(x), unmerged_embedding, atol=1e-4, rtol=1e-4)


def test_step_changes_only_the_adapter():
    torch.manual_seed(0)
    model = build_model(tiny_model_config())
    peft_model = attach_lora(copy.deepcopy(model), find_ffn_groups(model), rank=4, lora_alpha=1.0)
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    x, y = torch.randint(0, 255, (8, 1, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (8,))
    torch.nn.functional.cross_entropy(peft_model(x), y).backward()
    opt.step()
    changed = {n for n, p in peft_model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    frozen = [n for n in before if "lora_" not in n]
    assert frozen and all(torch.equal(dict(peft_model.named_parameters())[n], before[n]) for n in frozen)


def test_group_lasso_matches_hand_computation():
    model = build_model(tiny_model_config(depth=3))
    groups = find_ffn_groups(model)
    peft_model = attach_lora(model, groups, rank=2, lora_alpha=1.0)
    _randomise_lora(peft_model, seed=3)
    params = group_parameters(peft_model, groups)
    assert [len(g) for g in params] == [4, 4, 4]  # A and B of fc1 and fc2
    expected = []
    for g in groups:
        squares = 0.0
        for target in g.targets:
            module = peft_model.base_model.model.get_submodule(target)
            squares += float((module.lora_A["default"].weight.detach().double() ** 2).sum())
            squares += float((module.lora_B["default"].weight.detach().double() ** 2).sum())
        expected.append(squares ** 0.5)
    torch.testing.assert_close(group_norms(params).double(), torch.tensor(expected, dtype=torch.double), rtol=1e-5,
                               atol=1e-6)
    assert group_lasso(params).item() == pytest.approx(sum(expected), rel=1e-5)


def test_peft_adapter_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_model_config()).eval()
    peft_model = attach_lora(copy.deepcopy(model), find_ffn_groups(model), rank=4, lora_alpha=1.0)
    _randomise_lora(peft_model)
    peft_model.eval()
    x = torch.randint(0, 255, (3, 1, 28, 28), dtype=torch.uint8)
    save_adapter(peft_model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    reloaded = PeftModel.from_pretrained(copy.deepcopy(model), str(tmp_path / "adapter")).eval()
    torch.testing.assert_close(reloaded(x), peft_model(x))


def test_scaling_is_lora_alpha_over_rank():
    model = build_model(tiny_model_config())
    groups = find_ffn_groups(model)
    peft_model = attach_lora(model, groups, rank=8, lora_alpha=1.0)
    layer = peft_model.base_model.model.get_submodule(groups[0].targets[0])
    assert layer.scaling["default"] == pytest.approx(1 / 8)


def test_delta_norm_is_zero_for_fresh_adapters_and_matches_the_merged_change():
    from gslora.adapters import delta_norms

    model = build_model(tiny_model_config())
    groups = find_ffn_groups(model)
    original = {t: model.get_submodule(t).weight.detach().clone() for g in groups for t in g.targets}
    peft_model = attach_lora(copy.deepcopy(model), groups, rank=4, lora_alpha=2.0)
    assert delta_norms(peft_model, groups) == [0.0, 0.0]  # B = 0 at init
    _randomise_lora(peft_model)
    deltas = delta_norms(peft_model, groups)
    merged = merge_adapter(peft_model)
    for g, d in zip(groups, deltas):
        change = sum(float((merged.get_submodule(t).weight - original[t]).pow(2).sum()) for t in g.targets) ** 0.5
        assert change == pytest.approx(d, rel=1e-4)


def test_discovery_prefers_the_mlp_pair_over_qkv_with_mlp_ratio_3():
    from gslora.config import ModelConfig

    model = build_model(ModelConfig(depth=2, width=48, heads=2, mlp_ratio=3.0))
    assert [g.targets for g in find_ffn_groups(model)] == [
        ("net.blocks.0.mlp.fc1", "net.blocks.0.mlp.fc2"), ("net.blocks.1.mlp.fc1", "net.blocks.1.mlp.fc2")]


class Attention(torch.nn.Module):
    def __init__(self, d: int = 8):
        super().__init__()
        self.qkv = torch.nn.Linear(d, 3 * d)


def test_discovery_takes_the_innermost_blocks_of_staged_models():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn, self.fc1, self.fc2 = Attention(), torch.nn.Linear(8, 32), torch.nn.Linear(32, 8)

    class Stage(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.Sequential(Block(), Block())

    groups = find_ffn_groups(torch.nn.Sequential(Stage(), Stage()))
    assert [g.block for g in groups] == ["0.blocks.0", "0.blocks.1", "1.blocks.0", "1.blocks.1"]
    assert groups[0].targets == ("0.blocks.0.fc1", "0.blocks.0.fc2")


def _blocks(make) -> torch.nn.Module:
    return torch.nn.ModuleList([make(), make()])


def test_gated_ffns_adapt_their_gate_and_fused_gates_count():
    class SwiGLU(torch.nn.Module):  # timm's SwiGLU / EVA-02 base: separate gate and value projections
        def __init__(self):
            super().__init__()
            self.attn = Attention()
            self.mlp = torch.nn.ModuleDict({"fc1_g": torch.nn.Linear(8, 20), "fc1_x": torch.nn.Linear(8, 20),
                                            "fc2": torch.nn.Linear(20, 8)})

    class Fused(torch.nn.Module):  # timm's GluMlp (EVA-02 tiny): one projection to 2h, split into gate and value
        def __init__(self):
            super().__init__()
            self.attn, self.fc1, self.fc2 = Attention(), torch.nn.Linear(8, 40), torch.nn.Linear(20, 8)

    assert find_ffn_groups(_blocks(SwiGLU))[0].targets == ("0.mlp.fc1_g", "0.mlp.fc1_x", "0.mlp.fc2")
    assert find_ffn_groups(_blocks(Fused))[0].targets == ("0.fc1", "0.fc2")


def test_the_widest_ffn_wins_over_a_small_position_bias_mlp():
    class SwinV2Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = Attention(16)
            self.attn.cpb_mlp = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
            self.mlp = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 16))

    assert find_ffn_groups(_blocks(SwinV2Block))[0].targets == ("0.mlp.0", "0.mlp.2")


def test_blocks_without_attention_are_adapted_only_when_asked():
    class ConvMlpBlock(torch.nn.Module):  # ConvNeXt: depthwise conv, then an MLP of 1x1 convolutions
        def __init__(self):
            super().__init__()
            self.conv_dw = torch.nn.Conv2d(8, 8, 7, padding=3, groups=8)
            self.fc1, self.fc2 = torch.nn.Conv2d(8, 32, 1), torch.nn.Conv2d(32, 8, 1)

    model = _blocks(ConvMlpBlock)
    with pytest.raises(GSLoRAError, match="has MLP blocks but no attention.*adapters.allow_non_transformer=true"):
        find_ffn_groups(model)
    groups = find_ffn_groups(model, allow_non_transformer=True)
    assert [g.targets for g in groups] == [("0.fc1", "0.fc2"), ("1.fc1", "1.fc2")]
    peft_model = attach_lora(copy.deepcopy(model), groups, rank=2, lora_alpha=2.0)
    _randomise_lora(peft_model)
    x = torch.randn(1, 8, 5, 5)
    with torch.no_grad():
        expected = peft_model.base_model.model[0].fc2(peft_model.base_model.model[0].fc1(x))
        merged = merge_adapter(peft_model)
        torch.testing.assert_close(merged[0].fc2(merged[0].fc1(x)), expected, atol=1e-5, rtol=1e-5)
