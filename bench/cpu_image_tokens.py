"""Fewer image tokens on the CPU: a training step with a 384 px SigLIP-style tower (patch 14: 729 tokens an image)
square against pixel shuffle 2 (196) and 3 (81); and SigLIP2 NaFlex (--image_aspect_ratio native) on a wide and a
tall image against anyres at the same image-token budget (NaFlex's --max_image_tokens set to anyres' count for the
image). Everything in the same run, on the same LLM.

Each variant runs in a process of its own, so its peak RSS is its own: a batch of 2 samples, each one image and 64
text tokens, forward + backward + AdamW (LLM and projector trained, fp32), median step time and the peak resident
memory during the steps.

    python bench/cpu_image_tokens.py [--steps 3] [--vocab 151936]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import (  # noqa: E402
    Qwen2Config,
    Qwen2ForCausalLM,
    Siglip2ImageProcessor,
    Siglip2VisionConfig,
    Siglip2VisionModel,
    SiglipImageProcessor,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from bench.common import adamw_step_stats, emit, image_batch, in_own_process, machine, table, tmpdir  # noqa: E402
from demo.bases import byte_level_tokenizer  # noqa: E402
from model import VisionLanguageModel, VLMConfig  # noqa: E402

TOWER = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4)
SHUFFLE = {"square": 1, "pixel_shuffle_2": 2, "pixel_shuffle_3": 3}  # 384 px, patch 14: a 27 x 27 grid
SHAPES = {"wide": (336, 1008), "tall": (1008, 336)}  # (height, width)
ANYRES_TILE = 224  # SigLIP-base-224 style: patch 16, 196 tokens a tile; LLaVA-NeXT's default grids


def write_llm(root: str, vocab: int) -> str:
    torch.manual_seed(0)
    folder = os.path.join(root, "llm")
    Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, hidden_size=512, num_hidden_layers=4, num_attention_heads=8,
                                 num_key_value_heads=8, intermediate_size=2048, max_position_embeddings=8192,
                                 tie_word_embeddings=False)).save_pretrained(folder)
    byte_level_tokenizer().save_pretrained(folder)
    return folder


def write_siglip(root: str, size: int, patch: int) -> str:
    folder = os.path.join(root, f"siglip{size}")
    SiglipVisionModel(SiglipVisionConfig(**TOWER, image_size=size, patch_size=patch)).save_pretrained(folder)
    SiglipImageProcessor(size={"height": size, "width": size}).save_pretrained(folder)
    return folder


def write_siglip2(root: str, max_patches: int) -> str:
    folder = os.path.join(root, "siglip2")
    Siglip2VisionModel(Siglip2VisionConfig(**TOWER, patch_size=16, num_patches=256)).save_pretrained(folder)
    Siglip2ImageProcessor(patch_size=16, max_num_patches=max_patches).save_pretrained(folder)
    return folder


def build(variant: str, vocab: int, budget: int | None) -> VisionLanguageModel:
    root = tmpdir()
    llm = write_llm(root, vocab)
    torch.manual_seed(0)
    if variant in SHUFFLE:
        factor = SHUFFLE[variant]
        config = VLMConfig(llm=llm, vision=write_siglip(root, 384, 14), llm_mode="full", pixel_shuffle=factor,
                           projector_type="pixel_shuffle_mlp" if factor > 1 else "mlp2x_gelu")
    elif variant.startswith("native"):
        config = VLMConfig(llm=llm, vision=write_siglip2(root, budget), llm_mode="full", image_aspect_ratio="native",
                           max_image_tokens=budget)
    else:
        config = VLMConfig(llm=llm, vision=write_siglip(root, ANYRES_TILE, 16), llm_mode="full",
                           image_aspect_ratio="anyres")
    return VisionLanguageModel.build(config).apply_trainable_modes()


def run(variant: str, shape: str, steps: int, vocab: int, budget: int | None) -> dict:
    model = build(variant, vocab, budget)
    height, width = SHAPES.get(shape, (384, 384))
    g = torch.Generator().manual_seed(0)
    images = [Image.fromarray(torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8).numpy())
              for _ in range(2)]
    batch = image_batch(model, images)
    tokens = int((batch["input_ids"][0] == model.image_token_id).sum())
    return {**adamw_step_stats(model, batch, steps), "tokens_per_image": tokens}


def in_process(variant: str, shape: str, steps: int, vocab: int, budget: int | None = None) -> dict:
    return in_own_process(__file__, "--only", f"{variant}:{shape}:{budget or 0}", "--steps", str(steps),
                          "--vocab", str(vocab))


def cell(r: dict) -> str:
    return f"{r['step_ms']:.0f} ms / {r['peak_rss_mb']:.0f} MB"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--vocab", type=int, default=151936, help="LLM vocabulary (Qwen's: 151,936)")
    p.add_argument("--only", help="(internal) VARIANT:SHAPE:BUDGET in this process")
    args = p.parse_args()
    if args.only:
        variant, shape, budget = args.only.split(":")
        emit(run(variant, shape, args.steps, args.vocab, int(budget) or None))
        return
    shuffle = {v: in_process(v, "square", args.steps, args.vocab) for v in SHUFFLE}
    base = shuffle["square"]
    print(table([[v, str(r["tokens_per_image"]), cell(r), f"{base['step_ms'] / r['step_ms']:.2f}x",
                  f"{r['peak_rss_mb'] / base['peak_rss_mb']:.2f}x"] for v, r in shuffle.items()],
                ["384 px SigLIP-style tower", "tokens an image", "step / peak RSS", "speed vs square",
                 "memory vs square"]))
    native = {}
    for shape in SHAPES:
        anyres = in_process("anyres", shape, args.steps, args.vocab)
        native[shape] = {"anyres": anyres,
                         "native": in_process("native", shape, args.steps, args.vocab, anyres["tokens_per_image"])}
    print()
    print(table([[shape, f"{r['anyres']['tokens_per_image']}", cell(r["anyres"]), f"{r['native']['tokens_per_image']}",
                  cell(r["native"])] for shape, r in native.items()],
                ["image (h x w)", "anyres tokens", "anyres: step / peak RSS", "NaFlex tokens (same budget)",
                 "NaFlex: step / peak RSS"]))
    emit({"benchmark": "cpu_image_tokens", **machine(), "vocab": args.vocab, "pixel_shuffle": shuffle,
          "native": native})


if __name__ == "__main__":
    main()
