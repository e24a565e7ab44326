"""LoRA training throughput of a Qwen-7B-shaped VLM on one GPU (random weights, built on the meta device
and materialised on the GPU), SigLIP-so400m-384-shaped frozen tower (729 tokens), LoRA r=128 on
c_attn|w1|w2, bf16, SDPA. Reports tokens/s, MFU and peak memory for batch 1/4/8 with activation
checkpointing and batch 4 without; then generate() tokens/s (batch 1, 256 new tokens).

    python bench/gpu_train.py            # about 5 minutes on one H100
    python bench/gpu_train.py --tiny     # a seconds-long smoke run of the same code on the CPU

MFU = (4 * N_llm * T + 2 * N_vision * T_img) / (seconds * 989e12): frozen weights take no weight
gradients, hence 4N rather than 6N; 989 TFLOP/s is the H100 SXM dense bf16 peak. N_llm excludes the
input embedding table (a lookup). The 6N figure is printed too, for full-fine-tune comparisons.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
from transformers import SiglipVisionConfig, SiglipVisionModel  # noqa: E402

from bench.common import emit, machine, table, tmpdir  # noqa: E402
from model import VisionLanguageModel, VLMConfig  # noqa: E402
from qwen import QWenConfig, QWenLMHeadModel, QWenTokenizer, write_byte_vocab  # noqa: E402
from visual import FeatureSelection  # noqa: E402
from visual.hf_tower import HFVisionTower  # noqa: E402

PEAK_FLOPS = 989e12
SHAPES = {
    "full": dict(llm=dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, kv_channels=128,
                          intermediate_size=22016, vocab_size=151936),
                 vision=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                             image_size=384, patch_size=14),
                 text=1024, batches=(1, 4, 8), steps=5, new_tokens=256),
    "tiny": dict(llm=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, kv_channels=16,
                          intermediate_size=256, vocab_size=512),
                 vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             image_size=56, patch_size=14),
                 text=32, batches=(1, 4), steps=2, new_tokens=8),
}


def materialise(module, device, dtype):
    """Allocates a meta-device module on `device` and fills it like a fresh model (normal(0.02), norms 1)."""
    module.to_empty(device=device)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1:
                p.fill_(1.0 if "norm" in name or "ln" in name else 0.0)
            else:
                p.normal_(0, 0.02)
        for name, b in module.named_buffers():
            if "position_ids" in name:
                b.copy_(torch.arange(b.shape[-1], device=device).expand_as(b))
    return module.to(dtype)


def build(shape, device, dtype):
    vocab = write_byte_vocab(os.path.join(tmpdir(), "qwen.tiktoken"))
    tokenizer = QWenTokenizer(vocab)
    with torch.device("meta"):
        llm = QWenLMHeadModel(QWenConfig(seq_length=8192, max_position_embeddings=8192, **shape["llm"]))
        vision = SiglipVisionModel(SiglipVisionConfig(**shape["vision"]))
    llm, vision = materialise(llm, device, dtype), materialise(vision, device, dtype)
    tower = HFVisionTower(vision, image_processor=None, selection=FeatureSelection()).set_trainable(False)
    config = VLMConfig(llm="(random)", vision="(random)", lora_rank=128, target_modules="c_attn|w1|w2",
                       image_token="<|extra_0|>", num_image_tokens=tower.num_patches,
                       vision_hidden_size=tower.hidden_size, llm_hidden_size=llm.config.hidden_size)
    return VisionLanguageModel(config, tower, llm, tokenizer).apply_trainable_modes()


def inputs(model, batch, text, device):
    n = model.config.num_image_tokens
    ids = torch.randint(0, 256, (batch, n + text), device=device)
    ids[:, 4:4 + n] = model.image_token_id
    size = model.vision_tower.image_size
    return ids, torch.randn(batch, 3, size, size, device=device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_run(model, batch, text, steps, device, checkpointing):
    model.llm.train()
    if checkpointing:
        model.activation_checkpointing_enable()
    else:
        model.llm.gradient_checkpointing_disable()
    ids, pixels = inputs(model, batch, text, device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(ids, pixel_values=pixels, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return seconds, peak


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true")
    args = p.parse_args()
    shape = SHAPES["tiny" if args.tiny else "full"]
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build(shape, device, dtype)
    llm_params = sum(p.numel() for n, p in model.llm.named_parameters() if "wte" not in n and "lora_" not in n)
    vision_params = sum(p.numel() for p in model.vision_tower.parameters())
    n_img, text = model.config.num_image_tokens, shape["text"]
    rows, result = [], {"benchmark": "gpu_train", **machine(), "device": str(device),
                        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
                        "llm_params": llm_params, "vision_params": vision_params}
    for batch, checkpointing in [*((b, True) for b in shape["batches"]), (4 if not args.tiny else 1, False)]:
        try:
            seconds, peak = train_run(model, batch, text, shape["steps"], device, checkpointing)
        except torch.OutOfMemoryError:
            rows.append([f"batch {batch}, checkpointing {checkpointing}", "out of memory", "", "", ""])
            torch.cuda.empty_cache()
            continue
        tokens, image_tokens = batch * (n_img + text), batch * n_img
        mfu = (4 * llm_params * tokens + 2 * vision_params * image_tokens) / (seconds * PEAK_FLOPS)
        mfu6 = (6 * llm_params * tokens + 2 * vision_params * image_tokens) / (seconds * PEAK_FLOPS)
        rows.append([f"batch {batch} x ({text}+{n_img}), checkpointing {checkpointing}", f"{tokens / seconds:.0f}",
                     f"**{mfu:.1%}**", f"{mfu6:.1%}", f"{peak:.1f} GiB"])
        result[f"b{batch}_ckpt{int(checkpointing)}"] = {"tokens_per_s": tokens / seconds, "mfu": mfu, "mfu_6n": mfu6,
                                                        "peak_gib": peak, "step_s": seconds}
    model.llm.eval()
    ids, pixels = inputs(model, 1, 32, device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        model.generate(ids, pixel_values=pixels, max_new_tokens=4, min_new_tokens=4, eos_token_id=None)
        sync(device)
        start = time.perf_counter()
        model.generate(ids, pixel_values=pixels, max_new_tokens=shape["new_tokens"],
                       min_new_tokens=shape["new_tokens"], eos_token_id=None)
        sync(device)
    gen_tps = shape["new_tokens"] / (time.perf_counter() - start)
    result["generate_tokens_per_s"] = gen_tps
    print(table(rows, ["LoRA training step", "tokens/s", "MFU (4N)", "MFU (6N)", "peak memory"]))
    print(f"generate, batch 1, {shape['new_tokens']} new tokens: {gen_tps:.1f} tokens/s")
    emit(result)


if __name__ == "__main__":
    main()
