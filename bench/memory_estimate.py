"""GPU memory of training Qwen-7B-Chat in our VLM, setting by setting, without a GPU: the numbers behind "QLoRA
fits one 24 GB card". Each part is counted, not guessed:

- parameters: the Qwen-7B-shaped QWen and the SigLIP-so400m-384 tower built on the meta device (exact counts), LoRA
  r=128 on c_attn|w1|w2 through peft, the mlp2x_gelu projector;
- NF4 bytes: bitsandbytes' layout with double quantisation: 4 bits a weight, one 8-bit scale per 64 weights and one
  fp32 scale per 256 of those; the embeddings and the output layer stay unquantised, and peft's
  prepare_model_for_kbit_training keeps them (and the norms) in fp32;
- trained weights: fp32, with an fp32 gradient and AdamW's two fp32 moments (16 bytes a parameter); full
  fine-tuning keeps fp32 master weights (train.py), sharded by FSDP2 or ZeRO-3 across the GPUs;
- activations: measured, not modelled: one QWen block of Qwen-7B's width (LoRA on, bf16) runs forward on the CPU and
  the tensors autograd keeps for the backward pass are added up, per token; with activation checkpointing a block
  keeps only its input, and one block's activations live again while it is recomputed;
- the loss: our labelled-only chunked loss computes logits for the labelled (text) positions only, at most 2,048
  rows of the 151,936-wide logits at a time (bf16 logits, their fp32 copy and softmax, the bf16 gradient: 12 bytes
  a logit).

Not counted: the CUDA context and the allocator's fragmentation (about 1 GiB together on current GPUs).

    python bench/memory_estimate.py                 # Qwen-7B, 1,024 text + 729 image tokens a sample
    python bench/memory_estimate.py --tiny          # the same arithmetic on the tests' tiny shape, in seconds
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import SiglipVisionConfig, SiglipVisionModel  # noqa: E402

from bench.common import emit, table  # noqa: E402
from bench.gpu_train import SHAPES  # noqa: E402
from model.loss import CHUNK  # noqa: E402
from model.projector import build_projector  # noqa: E402
from qwen import QWenConfig, QWenLMHeadModel  # noqa: E402

GIB = 2 ** 30
LORA_TARGETS = ["c_attn", "w1", "w2"]
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # a weight, its share of the 8-bit scale, that scale's share of an fp32


def lora_config(rank: int) -> LoraConfig:
    return LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=LORA_TARGETS,
                      task_type="CAUSAL_LM")


def parameter_counts(shape: dict, rank: int) -> dict:
    """Exact counts, from the models built on the meta device."""
    with torch.device("meta"):
        llm = QWenLMHeadModel(QWenConfig(**shape["llm"]))
        vision = SiglipVisionModel(SiglipVisionConfig(**shape["vision"]))
        projector = build_projector("mlp2x_gelu", shape["vision"]["hidden_size"], shape["llm"]["hidden_size"])
        block_linears = sum(m.weight.numel() for n, m in llm.named_modules()
                            if isinstance(m, torch.nn.Linear) and ".h." in n)  # what NF4 quantises
        total = sum(p.numel() for p in llm.parameters())
        lora = sum(p.numel() for n, p in get_peft_model(llm, lora_config(rank)).named_parameters() if "lora_" in n)
    return {"llm": total, "llm_block_linears": block_linears, "llm_other": total - block_linears, "lora": lora,
            "vision": sum(p.numel() for p in vision.parameters()),
            "projector": sum(p.numel() for p in projector.parameters()),
            "layers": shape["llm"]["num_hidden_layers"], "hidden": shape["llm"]["hidden_size"],
            "vocab": shape["llm"]["vocab_size"]}


def weight_bytes(counts: dict, base: str) -> float:
    """The frozen LLM's bytes: bf16, or NF4 linear layers with the rest in fp32 (prepare_model_for_kbit_training)."""
    if base == "bf16":
        return 2 * counts["llm"]
    return NF4_BYTES * counts["llm_block_linears"] + 4 * counts["llm_other"]


def saved_activation_bytes(shape: dict, rank: int, tokens: int = 64) -> float:
    """Bytes autograd keeps per token for one QWen block of this width, LoRA on, bf16 (measured on the CPU): every
    tensor saved for backward, counted once per storage, parameters excluded."""
    torch.manual_seed(0)
    config = QWenConfig(**{**shape["llm"], "num_hidden_layers": 1, "vocab_size": 16})
    llm = get_peft_model(QWenLMHeadModel(config).to(torch.bfloat16), lora_config(rank))
    block = llm.base_model.model.transformer.h[0]
    params = {p.untyped_storage().data_ptr() for p in llm.parameters()}
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    x = torch.randn(1, tokens, config.hidden_size, dtype=torch.bfloat16, requires_grad=True)
    rotary = llm.base_model.model.transformer.rotary_emb(torch.arange(tokens)[None], torch.ones(1))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x, rotary=rotary).float().sum().backward()
    return sum(storages.values()) / tokens


def estimate(counts: dict, per_token_layer: float, tokens: int, text: int) -> list[dict]:
    """One row per setting: the frozen weights, the trained state, activations and the loss, in bytes."""
    vision = 2 * counts["vision"]  # frozen, bf16
    lora_state = 16 * (counts["lora"] + counts["projector"])  # fp32 weight, gradient, AdamW's two moments
    rows = []
    for name, base, batch, ckpt, gpus in (("LoRA r=128, bf16 base", "bf16", 1, True, 1),
                                          ("LoRA r=128, bf16 base", "bf16", 1, False, 1),
                                          ("LoRA r=128, bf16 base", "bf16", 4, True, 1),
                                          ("QLoRA r=128, NF4 base", "nf4", 1, True, 1),
                                          ("QLoRA r=128, NF4 base", "nf4", 1, False, 1),
                                          ("QLoRA r=128, NF4 base", "nf4", 4, True, 1),
                                          ("full fine-tuning, FSDP2 over 8 GPUs", "full", 1, True, 8)):
        per_layer = per_token_layer * tokens * batch  # one block's kept activations for the batch
        block_input = 2 * counts["hidden"] * tokens * batch  # bf16
        activations = (counts["layers"] * block_input + per_layer) if ckpt else counts["layers"] * per_layer
        logits = 12 * min(CHUNK, batch * text) * counts["vocab"]
        if base == "full":  # fp32 master weights, gradients and AdamW, sharded; a block gathered at a time (bf16)
            weights, trained = 2 * counts["llm"] / counts["layers"], 16 * (counts["llm"] + counts["projector"]) / gpus
        else:
            weights, trained = weight_bytes(counts, base), lora_state
        parts = {"llm_weights": weights, "vision": vision, "trained": trained, "activations": activations,
                 "loss": logits}
        rows.append({"setting": name, "batch": batch, "checkpointing": ckpt, "gpus": gpus, **parts,
                     "total": sum(parts.values())})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="the tests' tiny shape instead of Qwen-7B")
    p.add_argument("--rank", type=int, default=128, help="LoRA rank (r=128 on c_attn|w1|w2, as train.sh)")
    args = p.parse_args(argv)
    shape = SHAPES["tiny" if args.tiny else "full"]
    n_image = (shape["vision"]["image_size"] // shape["vision"]["patch_size"]) ** 2
    tokens = shape["text"] + n_image
    counts = parameter_counts(shape, args.rank)
    per_token_layer = saved_activation_bytes(shape, args.rank)
    rows = estimate(counts, per_token_layer, tokens, shape["text"])
    print(f"parameters: LLM {counts['llm']:,} ({counts['llm_block_linears']:,} in the blocks' linear layers), "
          f"LoRA {counts['lora']:,}, vision {counts['vision']:,}, projector {counts['projector']:,}; activations "
          f"kept per token and block (LoRA, bf16, measured): {per_token_layer / 1024:.1f} KiB; "
          f"{tokens} tokens a sample")
    print(table([[r["setting"], r["batch"], "on" if r["checkpointing"] else "off", r["gpus"],
                  *(f"{r[k] / GIB:.1f}" for k in ("llm_weights", "vision", "trained", "activations", "loss", "total"))]
                 for r in rows],
                ["setting", "batch", "checkpointing", "GPUs", "LLM weights", "vision", "trained (+grad, AdamW)",
                 "activations", "loss", "total GiB per GPU"]))
    emit({"counts": counts, "activation_bytes_per_token_layer": per_token_layer, "rows": rows})


if __name__ == "__main__":
    main()
