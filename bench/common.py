"""Shared pieces of the benchmarks: one VLM built twice (ours and transformers' Llava) with identical
weights, realistic text lengths, timing and memory helpers."""

import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlavaForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from common import IMAGE_MARKER
from demo.bases import byte_level_tokenizer
from model import VisionLanguageModel, VLMConfig, save_checkpoint
from model.export import export

# Text tokens per sample, LLaVA-instruct-like: short captions to long multi-turn conversations.
LENGTHS = [24, 40, 64, 96, 128, 192, 256, 384]


def write_bases(root: str, hidden: int = 512, layers: int = 4, vision_hidden: int = 384, vision_layers: int = 4,
                vocab: int = 272, llm: str = "qwen2") -> tuple[str, str]:
    """Base-model folders: a CLIP-style tower (224 px, patch 16: 196 tokens) and an LLM of the given shape,
    transformers' Qwen2 or our QWen (its embedding matrix `vocab` rows; Qwen's is 151,936)."""
    torch.manual_seed(0)
    llm_dir, vision_dir = os.path.join(root, "llm"), os.path.join(root, "vision")
    if llm == "qwen":
        from qwen import QWenConfig, QWenLMHeadModel

        config = QWenConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=8,
                            kv_channels=hidden // 8, intermediate_size=8 * hidden, seq_length=2048,
                            max_position_embeddings=2048)
        QWenLMHeadModel(config).save_pretrained(llm_dir)
    else:
        Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=8, num_key_value_heads=8, intermediate_size=4 * hidden,
                                     max_position_embeddings=2048, tie_word_embeddings=False)).save_pretrained(llm_dir)
    byte_level_tokenizer().save_pretrained(llm_dir)
    CLIPVisionModel(CLIPVisionConfig(hidden_size=vision_hidden, intermediate_size=4 * vision_hidden,
                                     num_hidden_layers=vision_layers, num_attention_heads=6, image_size=224,
                                     patch_size=16)).save_pretrained(vision_dir)
    CLIPImageProcessor().save_pretrained(vision_dir)
    return llm_dir, vision_dir


def build_pair(root: str, vocab: int = 272, **shape):
    """Our VLM and a LlavaForConditionalGeneration with the same weights (write_bases' models, Qwen2, and the
    mlp2x_gelu projector)."""
    llm_dir, vision_dir = write_bases(root, vocab=vocab, **shape)
    ours = VisionLanguageModel.build(VLMConfig(llm=llm_dir, vision=vision_dir, llm_mode="full")).apply_trainable_modes()
    save_checkpoint(ours, os.path.join(root, "ours"))
    export(os.path.join(root, "ours"), os.path.join(root, "llava"), fmt="llava")
    llava = LlavaForConditionalGeneration.from_pretrained(os.path.join(root, "llava"))
    llava.model.vision_tower.requires_grad_(False)  # frozen, as ours
    return ours, llava


def batch(model, lengths: list[int], padding_side: str = "right") -> dict:
    """One image and `length` random text tokens per sample, padded like the collator does."""
    g = torch.Generator().manual_seed(sum(lengths))
    n, width = model.config.num_image_tokens, max(lengths) + model.config.num_image_tokens
    ids = torch.full((len(lengths), width), model.tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, length in enumerate(lengths):
        row = torch.cat([torch.full((n,), model.image_token_id), torch.randint(0, 256, (length,), generator=g)])
        sl = slice(0, len(row)) if padding_side == "right" else slice(width - len(row), width)
        ids[i, sl], mask[i, sl] = row, 1
    labels = ids.masked_fill((mask == 0) | (ids == model.image_token_id), -100)
    pixels = torch.randn(len(lengths), 3, 224, 224, generator=g)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "pixel_values": pixels}


def median_time(fn, steps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def reset_peak_rss():
    """Linux: restart the process's peak-RSS counter (VmHWM), so building models does not count."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_mb() -> float:
    """Peak resident memory since the last reset_peak_rss (or since start)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
    import transformers

    return {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}


def table(rows: list[list], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    line = lambda r: "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def tmpdir() -> str:
    return tempfile.mkdtemp(prefix="vlm-bench-")


def emit(result: dict):
    print(json.dumps(result))


def in_own_process(script: str, *argv: str) -> dict:
    """Runs `python script argv...` and returns the result it emitted last: a variant measured in a process of its
    own, so its peak RSS is its own."""
    out = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def image_batch(model, images: list) -> dict:
    """One sample per image: the image and 40 text tokens asked, 24 answered (labels on the answer and the template's
    tokens, none on the image), right-padded by our processor."""
    text = model.processor.render([{"role": "user", "content": IMAGE_MARKER + "x" * 40},
                                   {"role": "assistant", "content": "y" * 24}])
    batch = model.processor([text] * len(images), [[image] for image in images], padding_side="right")
    batch["labels"] = batch["input_ids"].masked_fill(batch["input_ids"] == model.image_token_id, -100)
    return batch


def adamw_step_stats(model, batch: dict, steps: int) -> dict:
    """Median time of forward, backward and an AdamW step on `batch` (after one warm-up step), and the peak RSS
    during the steps."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step():
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    gc.collect()
    reset_peak_rss()
    seconds = median_time(step, steps, warmup=1)
    return {"step_ms": seconds * 1000, "peak_rss_mb": peak_rss_mb()}
