"""Images at their own shape on the CPU: image tokens, step time and peak memory of anyres against square for a
336 px tower (patch 14: 576 tokens a tile) at the 1x1, 2x2 and 1x3 grids, and our anyres step against
transformers' LlavaNextForConditionalGeneration with the same weights (through the export), in the same run.

Each (grid, variant) runs in a process of its own, so its peak RSS is its own: a batch of 2 samples, each one
image of the grid's exact shape and 64 text tokens, forward + backward + AdamW (LLM and projector trained, fp32),
median step time and the peak resident memory during the steps.

    python bench/cpu_anyres.py [--steps 3] [--vocab 151936]
"""

import argparse
import gc
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import (  # noqa: E402
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlavaNextForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from bench.common import adamw_step_stats, emit, image_batch, in_own_process, machine, table, tmpdir  # noqa: E402
from demo.bases import byte_level_tokenizer  # noqa: E402
from model import VisionLanguageModel, VLMConfig, save_checkpoint  # noqa: E402
from model.export import export  # noqa: E402

TILE = 336
GRIDS = {"1x1": (336, 336), "2x2": (672, 672), "1x3": (336, 1008)}  # (height, width) of an image that fills it
PINPOINTS = [[336, 336], [672, 672], [336, 1008]]
VARIANTS = ("square", "anyres", "llava_next")


def build(root: str, aspect: str, vocab: int) -> VisionLanguageModel:
    torch.manual_seed(0)
    llm_dir, vision_dir = os.path.join(root, "llm"), os.path.join(root, "vision")
    Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, hidden_size=512, num_hidden_layers=4, num_attention_heads=8,
                                 num_key_value_heads=8, intermediate_size=2048, max_position_embeddings=8192,
                                 tie_word_embeddings=False)).save_pretrained(llm_dir)
    byte_level_tokenizer().save_pretrained(llm_dir)
    CLIPVisionModel(CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=2,
                                     num_attention_heads=4, image_size=TILE, patch_size=14)).save_pretrained(vision_dir)
    CLIPImageProcessor(size={"shortest_edge": TILE},
                       crop_size={"height": TILE, "width": TILE}).save_pretrained(vision_dir)
    config = VLMConfig(llm=llm_dir, vision=vision_dir, llm_mode="full", image_aspect_ratio=aspect,
                       image_grid_pinpoints=PINPOINTS if aspect == "anyres" else None)
    return VisionLanguageModel.build(config).apply_trainable_modes()


def sample_images(grid: str) -> list:
    g = torch.Generator().manual_seed(0)
    height, width = GRIDS[grid]
    return [Image.fromarray(torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8).numpy())
            for _ in range(2)]


def run(grid: str, variant: str, steps: int, vocab: int) -> dict:
    root = tmpdir()
    model = build(root, "square" if variant == "square" else "anyres", vocab)
    batch = image_batch(model, sample_images(grid))
    tokens_per_image = int((batch["input_ids"][0] == model.image_token_id).sum())
    if variant == "llava_next":
        save_checkpoint(model, os.path.join(root, "ours"))
        export(os.path.join(root, "ours"), os.path.join(root, "next"), fmt="llava")
        del model
        gc.collect()
        model = LlavaNextForConditionalGeneration.from_pretrained(os.path.join(root, "next"))
        model.model.vision_tower.requires_grad_(False)
        tiles = batch["pixel_values"].shape[0] // 2
        batch["pixel_values"] = batch["pixel_values"].view(2, tiles, *batch["pixel_values"].shape[1:])
    return {**adamw_step_stats(model, batch, steps), "tokens_per_image": tokens_per_image,
            "tiles_per_image": int(batch["pixel_values"].shape[-4] if variant == "llava_next" else
                                   batch["pixel_values"].shape[0] // 2)}


def in_process(grid: str, variant: str, steps: int, vocab: int) -> dict:
    return in_own_process(__file__, "--only", f"{grid}:{variant}", "--steps", str(steps), "--vocab", str(vocab))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--vocab", type=int, default=151936, help="LLM vocabulary (Qwen's: 151,936)")
    p.add_argument("--only", help="(internal) GRID:VARIANT in this process")
    args = p.parse_args()
    if args.only:
        grid, variant = args.only.split(":")
        emit(run(grid, variant, args.steps, args.vocab))
        return
    results = {grid: {v: in_process(grid, v, args.steps, args.vocab) for v in VARIANTS} for grid in GRIDS}
    rows = []
    for grid, r in results.items():
        sq, ours, theirs = r["square"], r["anyres"], r["llava_next"]
        speed, memory = theirs["step_ms"] / ours["step_ms"], ours["peak_rss_mb"] / theirs["peak_rss_mb"]
        rows.append([grid, f"{sq['tokens_per_image']}", f"{ours['tokens_per_image']} ({ours['tiles_per_image']} tiles)",
                     f"{sq['step_ms']:.0f} ms / {sq['peak_rss_mb']:.0f} MB",
                     f"{ours['step_ms']:.0f} ms / {ours['peak_rss_mb']:.0f} MB",
                     f"{theirs['step_ms']:.0f} ms / {theirs['peak_rss_mb']:.0f} MB",
                     f"**{speed:.2f}x** / **{memory:.2f}x**"])
    print(table(rows, ["grid", "tokens an image, square", "tokens an image, anyres", "square: step / peak RSS",
                       "anyres (ours): step / peak RSS", "LlavaNext: step / peak RSS",
                       "ours vs LlavaNext: speed / memory"]))
    emit({"benchmark": "cpu_anyres", **machine(), "vocab": args.vocab, "results": results})


if __name__ == "__main__":
    main()
