"""QLoRA's 4-bit base: the LLM's linear layers in NF4 with double quantisation (bitsandbytes, through transformers'
BitsAndBytesConfig), computing in the run's dtype (bf16 on a GPU, fp32 on the CPU), LoRA on top in full precision.

The embeddings, norms and LM head stay unquantised (transformers skips the output layer), and the projector is
ours, so it is never quantised. Exporting dequantises first and merges LoRA into those dequantised weights: the
adapter was trained against them, not against the original full-precision ones.
"""

import importlib.util

import torch

from common.quiet import let_bitsandbytes_in


def require_bitsandbytes():
    let_bitsandbytes_in()  # entry points keep it out of runs that never use 4-bit (common/quiet.py)
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("--llm_mode qlora needs bitsandbytes, which is not installed: pip install bitsandbytes")


def nf4_config(compute_dtype: torch.dtype):
    """The QLoRA paper's recipe: NF4 weights, their scales quantised again (double quantisation)."""
    require_bitsandbytes()
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_quant_storage=torch.uint8)


def quantized_bytes(llm) -> dict[str, torch.Tensor]:
    """Every 4-bit weight's packed bytes, by module name: what must not change while LoRA trains."""
    import bitsandbytes as bnb

    return {name: module.weight.data.clone() for name, module in llm.named_modules()
            if isinstance(module, bnb.nn.Linear4bit)}


def prepare_for_training(llm):
    """peft's preparation for training on a k-bit base: every base weight frozen, the unquantised ones (norms,
    embeddings, head) cast to fp32 for stable updates of what flows through them. Activation checkpointing is left
    to the model's own switch (VisionLanguageModel.activation_checkpointing_enable)."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(llm, use_gradient_checkpointing=False)
