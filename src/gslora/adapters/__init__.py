"""LoRA via peft on transformer FFNs, block groups and the group-lasso penalty."""

from gslora.adapters.lora import (
    BlockGroup,
    attach_lora,
    delta_norms,
    find_ffn_groups,
    group_lasso,
    group_norms,
    group_parameters,
    injected_model,
    merge_adapter,
    save_adapter,
)

__all__ = ["BlockGroup", "attach_lora", "delta_norms", "find_ffn_groups", "group_lasso", "group_norms",
           "group_parameters", "injected_model", "merge_adapter", "save_adapter"]
