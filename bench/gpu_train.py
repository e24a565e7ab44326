"""LoRA training throughput of a Qwen-7B-shaped VLM on one GPU (random weights, built on the meta device
and materialised on the GPU), SigLIP-so400m-384-shaped frozen tower (729 tokens), LoRA r=128 on
c_attn|w1|w2, bf16, SDPA, against transformers' LlavaForConditionalGeneration with peft LoRA r=128 on
q/k/v/gate/up of the same weights (its LLM converted to Qwen2, weights shared), in the same run. Reports
tokens/s, MFU and peak memory of both for batch 1/4/8 with activation checkpointing and batch 4 without.
--budget_gib 24 instead tries batch sizes and checkpointing settings and reports the fastest that fits, for LoRA
on the bf16 LLM and for QLoRA (the LLM's linear layers in NF4 with double quantisation, as --llm_mode qlora loads
them; needs bitsandbytes).

    python bench/gpu_train.py                    # about 5 minutes on one H100
    python bench/gpu_train.py --budget_gib 24    # the fastest setting under 24 GiB (an RTX 3090/4090)
    python bench/gpu_train.py --tiny             # a seconds-long smoke run of the same code on the CPU
    python bench/gpu_train.py --packing          # LLaVA-like lengths: padded batches vs packed rows, ours
    python bench/gpu_train.py --posttrain        # a DPO step and a GRPO step of the same LoRA model, part by part

--packing draws LLaVA-like text lengths (bench/common.py's mix, scaled to --text) for 64 samples, each with its
image, and trains ours on them padded (batches of 4, length-grouped) and packed (rows of 4,096 tokens, as many
rows a batch as hold a padded batch's tokens, dataset/packing.py): real tokens/s, padding and peak memory.

--posttrain times, on the same LoRA model (the reference: its adapter switched off), a DPO step of 4 pairs (8 rows)
and a GRPO step of 2 prompts x 8 completions of `new_tokens` tokens (rollouts with the static-cache sampler, KL 0.04),
part by part (bench/posttrain_steps.py), with their peak memory.

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


def build(shape, device, dtype, lora=True):
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
    model = VisionLanguageModel(config, tower, llm, tokenizer)
    if not lora:
        model.config.llm_mode = "frozen"
    return model.apply_trainable_modes()


def quantize_llm(model, dtype):
    """QLoRA's base, in place: every linear layer of the LLM's blocks (c_attn, c_proj, w1, w2) in NF4 with double
    quantisation, computing in `dtype`; then LoRA on top. Returns the GiB the LLM's weights take."""
    import bitsandbytes as bnb

    from model.quantization import prepare_for_training

    model.llm = model.llm.unload()  # the plain LoRA rows' adapters off: the base layers are quantised, then LoRA anew
    for name, module in list(model.llm.named_modules()):
        if isinstance(module, torch.nn.Linear) and ".h." in name:
            quantized = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=module.bias is not None,
                                          compute_dtype=dtype, compress_statistics=True, quant_type="nf4")
            quantized.weight = bnb.nn.Params4bit(module.weight.data.cpu(), requires_grad=False, quant_type="nf4",
                                                 compress_statistics=True).to(module.weight.device)
            if module.bias is not None:
                quantized.bias = module.bias
            model.llm.set_submodule(name, quantized)
    model.llm = prepare_for_training(model.llm)
    model.config.llm_mode = "lora"
    model.apply_trainable_modes()
    return sum(p.numel() * p.element_size() for p in model.llm.parameters()) / 2**30


def inputs(model, batch, text, device):
    n = model.config.num_image_tokens
    ids = torch.randint(0, 256, (batch, n + text), device=device)
    ids[:, 4:4 + n] = model.image_token_id
    size = model.vision_tower.image_size
    return ids, torch.randn(batch, 3, size, size, device=device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_run(model, batch, text, steps, device, every, vlm=None):
    """(seconds per step, peak GiB) of forward + backward + AdamW; every: activation checkpointing of every
    k-th block (0: off). `model` is ours (then vlm is None) or Llava with peft (vlm: ours, for the inputs)."""
    ours = vlm or model
    llm = model.llm if vlm is None else model
    llm.train()
    if every and vlm is None:
        model.checkpoint_every = every
        model.activation_checkpointing_enable()
    elif every:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        llm.enable_input_require_grads()
    else:
        llm.gradient_checkpointing_disable()
    ids, pixels = inputs(ours, batch, text, device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            if vlm is None:
                loss = model(ids, pixel_values=pixels, labels=ids).loss
            else:
                loss = model(input_ids=ids, pixel_values=pixels, labels=ids).loss
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


def packed_comparison(model, shape, device, samples: int = 64, max_length: int = 4096, batch: int = 4) -> list[list]:
    """Ours on the same samples, padded (length-grouped batches) against packed rows: real tokens/s, padding, peak."""
    import random

    from bench.common import LENGTHS
    from dataset import VLMCollator, plan_rows

    rng = random.Random(0)
    n = model.config.num_image_tokens
    scale = shape["text"] / max(LENGTHS)
    texts = [max(1, round(rng.choice(LENGTHS) * scale)) for _ in range(samples)]
    size = model.vision_tower.image_size
    items = []
    for i, t in enumerate(texts):
        ids = torch.cat([torch.full((n,), model.image_token_id), torch.randint(0, 256, (t,))])
        items.append({"id": str(i), "input_ids": ids, "labels": ids, "pixel_values": torch.randn(1, 3, size, size)})
    lengths = [len(it["input_ids"]) for it in items]
    by_length = sorted(range(samples), key=lambda i: -lengths[i])
    padded = [[items[i] for i in by_length[j:j + batch]] for j in range(0, samples, batch)]
    max_length = max(max_length, max(lengths))
    rows = plan_rows(lengths, max_length, seed=0)
    rows.sort(key=lambda r: -sum(lengths[i] for i in r))  # rows of about the same size together
    per_batch = max(1, round(batch * sum(lengths) / samples / max_length))
    packed = [[[items[i] for i in row] for row in rows[j:j + per_batch]] for j in range(0, len(rows), per_batch)]
    collate, table_rows = VLMCollator(0), []
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.llm.train()
    for name, batches in (("padded, length-grouped", padded), (f"packed, {per_batch} row(s) a batch", packed)):
        collated = [collate(b) for b in batches]
        real = sum(c.pop("num_tokens") for c in collated)
        slots = sum(c["input_ids"].numel() for c in collated)
        for c in collated:
            c.pop("sample_ids"), c.pop("skipped")
            for k, v in c.items():
                c[k] = v.to(device) if torch.is_tensor(v) else v
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

        def step(c):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = model(**c).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step(collated[0])
        sync(device)
        start = time.perf_counter()
        for c in collated:
            step(c)
        sync(device)
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        table_rows.append([name, f"{len(collated)}", f"{1 - real / slots:.1%}", f"{samples / seconds:.2f}",
                           f"{real / seconds:.0f}", f"{peak:.1f} GiB"])
    return table_rows


def posttrain_rows(model, shape, device, dtype) -> dict:
    """DPO and GRPO steps (seconds per part, tokens/s, peak memory) of the LoRA model, its adapter off the reference."""
    from bench.posttrain_steps import dpo_step, grpo_step

    model.checkpoint_every = 1
    model.activation_checkpointing_enable()
    model.tokenizer.pad_token_id = model.tokenizer.pad_token_id or 0
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    text, G = shape["text"], 8

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def dpo():
        ids, pixels = inputs(model, 8, text, device)  # 4 pairs: chosen rows, then rejected rows
        labels = ids.clone()
        labels[:, : ids.shape[1] - text // 2] = -100  # the answers: the last half of the text
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "pixel_values": pixels}
        return dpo_step(model, batch, optimizer, "adapter", autocast()), ids.numel()

    def grpo():
        ids, pixels = inputs(model, 2, text // 4, device)
        batch = {"input_ids": ids.repeat_interleave(G, 0), "attention_mask": torch.ones_like(ids).repeat_interleave(
            G, 0), "pixel_values": pixels.repeat_interleave(G, 0), "image_sizes": None}
        return grpo_step(model, batch, G, shape["new_tokens"], optimizer, "adapter", autocast())

    figures, rows = {}, []
    for name, step in (("dpo", dpo), ("grpo", grpo)):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        step()  # warm-up
        parts, tokens = step()
        total = sum(parts.values())
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        figures[name] = {"seconds": parts, "tokens": tokens, "peak_gib": peak}
        rows.append([name, f"{total:.2f} s", ", ".join(f"{k} {v:.2f} s" for k, v in parts.items()),
                     f"{tokens / total:.0f}", f"{peak:.1f} GiB"])
    print(table(rows, ["step (LoRA r=128)", "seconds", "parts", "tokens/s", "peak"]))
    return {"posttrain": figures}


def llava_peer(model, rank: int):
    """transformers' Llava on our (frozen, LoRA-free) weights, with peft LoRA on the LLM's q/k/v/gate/up."""
    from peft import LoraConfig, get_peft_model

    from model.export import to_llava_model

    llava, _ = to_llava_model(model)
    llava.requires_grad_(False)
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.05,
                      target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|gate_proj|up_proj)")
    return get_peft_model(llava, lora)


def attempt(fn):
    """fn() or None when it runs out of GPU memory."""
    try:
        return fn()
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--budget_gib", type=float, help="report the fastest setting of ours whose peak fits")
    p.add_argument("--packing", action="store_true", help="padded batches vs packed rows of LLaVA-like lengths (ours)")
    p.add_argument("--posttrain", action="store_true", help="a DPO step and a GRPO step (LoRA), part by part")
    args = p.parse_args()
    shape = SHAPES["tiny" if args.tiny else "full"]
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build(shape, device, dtype, lora=False)
    llava = llava_peer(model, rank=128)
    model.config.llm_mode = "lora"
    model.apply_trainable_modes()
    llm_params = sum(p.numel() for n, p in model.llm.named_parameters() if "wte" not in n and "lora_" not in n)
    vision_params = sum(p.numel() for p in model.vision_tower.parameters())
    n_img, text = model.config.num_image_tokens, shape["text"]
    result = {"benchmark": "gpu_train", **machine(), "device": str(device),
              "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
              "llm_params": llm_params, "vision_params": vision_params}

    def mfu(batch, seconds):
        tokens = batch * (n_img + text)
        return (4 * llm_params * tokens + 2 * vision_params * batch * n_img) / (seconds * PEAK_FLOPS)

    if args.packing:
        rows = packed_comparison(model, shape, device, max_length=4096 if not args.tiny else 256)
        print(table(rows, ["ours, LoRA, the same samples", "steps", "padding", "samples/s", "tokens/s", "peak"]))
        result["packing"] = rows
        emit(result)
        return
    if args.posttrain:
        del llava
        result.update(posttrain_rows(model, shape, device, dtype))
        emit(result)
        return
    if args.budget_gib:
        rows, best = [], None
        del llava  # its LoRA copies are not needed here, and QLoRA replaces the weights they share
        for mode in ("lora", "qlora"):
            if mode == "qlora":
                result["qlora_llm_weights_gib"] = quantize_llm(model, dtype)
                torch.cuda.empty_cache() if device.type == "cuda" else None
            for batch in (*shape["batches"], 2 * shape["batches"][-1]):
                for every in (0, 4, 2, 1):
                    r = attempt(lambda b=batch, e=every: train_run(model, b, text, shape["steps"], device, e))
                    label = f"{mode}, batch {batch}, checkpoint every {every or '-'}"
                    if r is None:
                        rows.append([label, "out of memory", "", ""])
                        continue
                    tps = batch * (n_img + text) / r[0]
                    fits = not r[1] > args.budget_gib
                    rows.append([label, f"{tps:.0f}", f"{r[1]:.1f} GiB", "yes" if fits else "no"])
                    if fits and (best is None or tps > best[0]):
                        best = (tps, mode, batch, every, r[1])
        print(table(rows, ["ours: setting", "tokens/s", "peak", f"<= {args.budget_gib} GiB"]))
        print(f"fastest within {args.budget_gib} GiB: " + ("none" if best is None else
              f"{best[1]}, batch {best[2]}, checkpoint every {best[3] or '-'}: {best[0]:.0f} tokens/s, "
              f"{best[4]:.1f} GiB"))
        result["budget"] = {"gib": args.budget_gib, "best": best}
        emit(result)
        return
    rows = []
    settings = [*((b, 1) for b in shape["batches"]), (4 if not args.tiny else 1, 0)]
    for batch, every in settings:
        ours = attempt(lambda b=batch, e=every: train_run(model, b, text, shape["steps"], device, e))
        theirs = attempt(lambda b=batch, e=every: train_run(llava, b, text, shape["steps"], device, e, vlm=model))
        tokens = batch * (n_img + text)
        label = f"{batch}, {'on' if every else 'off'}"
        if ours is None or theirs is None:
            rows.append([label, "OOM" if ours is None else f"{tokens / ours[0]:.0f}",
                         "OOM" if theirs is None else f"{tokens / theirs[0]:.0f}", "", "", "", ""])
            continue
        rows.append([label, f"{tokens / ours[0]:.0f}", f"{tokens / theirs[0]:.0f}", f"**{theirs[0] / ours[0]:.2f}x**",
                     f"{mfu(batch, ours[0]):.1%}", f"{ours[1]:.1f} GiB", f"{theirs[1]:.1f} GiB"])
        result[f"b{batch}_ckpt{int(bool(every))}"] = {
            "ours_tokens_per_s": tokens / ours[0], "llava_tokens_per_s": tokens / theirs[0],
            "ratio": theirs[0] / ours[0], "mfu": mfu(batch, ours[0]), "ours_peak_gib": ours[1],
            "llava_peak_gib": theirs[1]}
    print(table(rows, ["batch, activation checkpointing", "ours tokens/s", "Llava+peft tokens/s", "ours / Llava",
                       "ours MFU (4N)", "ours peak", "Llava peak"]))
    emit(result)


if __name__ == "__main__":
    main()
