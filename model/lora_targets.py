"""The LoRA targets `--target_modules auto` picks, by the LLM's model_type: every linear layer of attention and MLP,
named as each family names them (no torch: --help and docs read this table)."""

ATTENTION_MLP = "q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj"
LORA_TARGETS = {
    "qwen": "c_attn|w1|w2",  # the original project's choice for Qwen-7B
    "phi3": "qkv_proj|o_proj|gate_up_proj|down_proj",  # fused q/k/v and gate/up (Phi-3, Phi-4)
    "qwen3_moe": "q_proj|k_proj|v_proj|o_proj",  # the experts are fused 3-D tensors, not Linear layers
    **{family: ATTENTION_MLP for family in ("llama", "qwen2", "qwen3", "mistral", "gemma3_text", "gemma3", "smollm3",
                                            "olmo2", "gemma2", "gemma")},
}


def default_lora_targets(model_type: str) -> str:
    """'|'-separated module names for a family; all-linear (peft: every Linear but the output head) otherwise."""
    return LORA_TARGETS.get(model_type, "all-linear")

