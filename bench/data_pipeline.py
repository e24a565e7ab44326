"""Data pipeline throughput: VLMDataset + VLMCollator + DataLoader(num_workers=2) on generated 384 px
JPEGs with SigLIP-384 preprocessing and the real Qwen tokenizer (from dashscope when installed).
    python bench/data_pipeline.py [--samples 512]
"""

import argparse
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from PIL import Image, ImageDraw  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from transformers import SiglipImageProcessor  # noqa: E402

from bench.common import emit, machine, table, tmpdir  # noqa: E402
from dataset import VLMCollator, VLMDataset  # noqa: E402
from model import IMAGE_MARKER, VLMProcessor  # noqa: E402
from visual.hf_tower import HFImageProcessor  # noqa: E402

# One H100 running Qwen-7B LoRA at the 40% MFU goal: 0.4 * 989e12 / (4 * 7.7e9) ~ 12.8k tokens/s; a
# sample is ~1024 text + 729 image tokens, so one GPU consumes ~7.3 samples/s.
NEEDED_PER_GPU = 7.3


def tokenizer():
    try:
        import importlib.resources

        from qwen import QWenTokenizer

        return QWenTokenizer(str(importlib.resources.files("dashscope") / "resources" / "qwen.tiktoken")), "Qwen-7B"
    except ImportError:
        from qwen import QWenTokenizer, write_byte_vocab

        return QWenTokenizer(write_byte_vocab(os.path.join(tmpdir(), "qwen.tiktoken"))), "256-byte"


def write_data(root: str, n: int):
    rng = random.Random(0)
    image_map, samples = {}, []
    for i in range(n):
        path = os.path.join(root, f"{i}.jpg")
        image = Image.new("RGB", (384, 384), tuple(rng.randint(0, 255) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        for _ in range(20):
            x, y = rng.randint(0, 340), rng.randint(0, 340)
            draw.ellipse((x, y, x + 40, y + 40), fill=tuple(rng.randint(0, 255) for _ in range(3)))
        image.save(path, quality=90)
        image_map[str(i)] = {"path": path}
        turns = [{"role": "user", "content": f"{IMAGE_MARKER}\nWhat is happening in this image?"}]
        for _ in range(rng.randint(1, 4)):
            turns.append({"role": "assistant", "content": " ".join(rng.choice(["a", "red", "ball", "on", "the",
                                                                                 "green", "table", "near"])
                                                                    for _ in range(rng.randint(20, 120)))})
            turns.append({"role": "user", "content": "And then?"})
        samples.append({"id": str(i), "source": "bench", "images": [str(i)], "conversations": turns[:-1]})
    json.dump(image_map, open(os.path.join(root, "image_map.json"), "w"))
    json.dump(samples, open(os.path.join(root, "captions.json"), "w"))


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    root = tmpdir()
    write_data(root, args.samples)
    tok, vocab = tokenizer()
    processor = VLMProcessor(tok, HFImageProcessor(SiglipImageProcessor(size={"height": 384, "width": 384})),
                             IMAGE_MARKER, 729)
    dataset = VLMDataset(os.path.join(root, "image_map.json"), os.path.join(root, "captions.json"), processor,
                         max_length=4096)
    loader = DataLoader(dataset, batch_size=8, num_workers=args.workers, collate_fn=VLMCollator(tok.pad_token_id),
                        shuffle=True)
    iterator = iter(loader)
    next(iterator)  # workers started
    start, count = time.perf_counter(), 0
    for b in iterator:
        count += b["input_ids"].shape[0]
    rate = count / (time.perf_counter() - start)
    print(table([[f"samples/s, 384 px JPEG + SigLIP-384 + {vocab} tokenizer, {args.workers} workers",
                  f"{rate:.0f}", f"{NEEDED_PER_GPU} per H100", f"**{rate / NEEDED_PER_GPU:.1f}x**"]],
                ["", "measured", "needed", "headroom"]))
    emit({"benchmark": "data_pipeline", **machine(), "samples_per_s": rate, "needed_per_gpu": NEEDED_PER_GPU,
          "workers": args.workers})


if __name__ == "__main__":
    main()
