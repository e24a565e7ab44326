"""Training step on the CPU: our VLM against transformers' LlavaForConditionalGeneration with the same weights
(CLIP-style tower 224 px / patch 16 / 196 tokens, Qwen2-style LLM with Qwen's 151,936-token vocabulary,
mlp2x_gelu projector), on the same batch of 8 samples of spread text lengths. Each variant runs in a process
of its own (so that its peak RSS is its own): median step time of forward, backward and AdamW, and the peak
resident memory during those steps. Then selective activation checkpointing (ours), and with --epoch the
samples/s of a variable-length epoch with and without length grouping. --packing times one epoch of the
LLaVA-like length mix (ours) five ways in one run: random and length-grouped padded batches, and packed rows
(dataset/packing.py) at the same --max_length, token-matched (rows grouped or in random order) and at the same
batch-size flag: samples/s, tokens/s and the padding fraction of each.

    python bench/cpu_train.py [--steps 10] [--vocab 151936] [--epoch]
    python bench/cpu_train.py --packing [--epoch_samples 128] [--max_length 1024]
"""

import argparse
import gc
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
from transformers.trainer_pt_utils import LengthGroupedSampler  # noqa: E402

from bench.common import (  # noqa: E402
    LENGTHS,
    batch,
    build_pair,
    emit,
    in_own_process,
    machine,
    median_time,
    peak_rss_mb,
    reset_peak_rss,
    table,
    tmpdir,
    write_bases,
)
from dataset import VLMCollator, plan_rows  # noqa: E402
from model import VisionLanguageModel, VLMConfig  # noqa: E402

# variant -> (model, our loss path, activation checkpointing every k blocks; 0: off)
VARIANTS = {
    "llava": ("llava", None, 0),
    "ours-plain": ("ours", "plain", 0),
    "ours": ("ours", "auto", 0),
    "ours-ckpt1": ("ours", "auto", 1),
    "ours-ckpt2": ("ours", "auto", 2),
    "ours-ckpt4": ("ours", "auto", 4),
}


def trainer_step(model, data):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step():
        model(**data).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def run_variant(name: str, steps: int, vocab: int) -> dict:
    """In this process: build the pair, keep one model, time `steps` training steps, report peak RSS."""
    which, loss_impl, every = VARIANTS[name]
    torch.manual_seed(0)
    ours, llava = build_pair(tmpdir(), vocab=vocab)
    data = batch(ours, LENGTHS)
    model = ours if which == "ours" else llava
    if which == "ours":
        ours.loss_impl = loss_impl
        if every:
            ours.checkpoint_every = every
            ours.activation_checkpointing_enable()
    del ours, llava
    gc.collect()
    model.train()
    reset_peak_rss()
    seconds = median_time(trainer_step(model, data), steps, warmup=2)
    return {"step_ms": seconds * 1000, "peak_rss_mb": peak_rss_mb()}


def in_process(name: str, steps: int, vocab: int) -> dict:
    return in_own_process(__file__, "--only", name, "--steps", str(steps), "--vocab", str(vocab))


def padding_fraction(batches: list[list[int]], n_image: int) -> float:
    real = sum(sum(b) + n_image * len(b) for b in batches)
    padded = sum((max(b) + n_image) * len(b) for b in batches)
    return 1 - real / padded


def epoch_table(vocab: int, samples: int) -> list[list]:
    """samples/s of a variable-length epoch: random batches of 8 vs transformers' LengthGroupedSampler."""
    ours, llava = build_pair(tmpdir(), vocab=vocab)
    ours.train(), llava.train()
    rng = random.Random(0)
    lengths = [rng.choice(LENGTHS) + rng.randint(-8, 8) for _ in range(samples)]
    order = list(range(len(lengths)))
    rng.shuffle(order)
    random_batches = [[lengths[i] for i in order[j:j + 8]] for j in range(0, len(order), 8)]
    torch.manual_seed(0)
    grouped = list(LengthGroupedSampler(8, lengths=lengths))
    grouped_batches = [[lengths[i] for i in grouped[j:j + 8]] for j in range(0, len(grouped), 8)]

    def epoch(model, batches):
        return sum(median_time(trainer_step(model, batch(ours, b)), steps=1, warmup=0) for b in batches)

    ours_random, ours_grouped, llava_random = epoch(ours, random_batches), epoch(ours, grouped_batches), epoch(
        llava, random_batches)
    n = len(lengths)
    pad = padding_fraction(random_batches, ours.config.num_image_tokens), padding_fraction(
        grouped_batches, ours.config.num_image_tokens)
    return [[f"samples/s, {n}-sample epoch, random batches (padding {pad[0]:.1%})", f"{n / ours_random:.2f}",
             f"{n / llava_random:.2f}", f"{llava_random / ours_random:.2f}x"],
            [f"samples/s, ours length-grouped (padding {pad[1]:.1%}) vs Llava random", f"{n / ours_grouped:.2f}",
             f"{n / llava_random:.2f}", f"**{llava_random / ours_grouped:.2f}x**"]]


def synthetic_item(model, text_tokens: int, seed: int) -> dict:
    """One sample as VLMDataset gives it: an image block then `text_tokens` random tokens, all labelled."""
    g = torch.Generator().manual_seed(seed)
    n = model.config.num_image_tokens
    ids = torch.cat([torch.full((n,), model.image_token_id), torch.randint(0, 256, (text_tokens,), generator=g)])
    return {"id": str(seed), "input_ids": ids, "labels": ids.masked_fill(ids == model.image_token_id, -100),
            "pixel_values": torch.randn(1, 3, 224, 224, generator=g)}


def packing_table(vocab: int, samples: int, max_length: int, batch_size: int = 8, llm: str = "qwen"
                  ) -> tuple[list[list], dict]:
    """One epoch of the same samples, ours, in this run: padded batches of `batch_size` samples in random order and
    length-grouped (transformers' LengthGroupedSampler), and packed rows of at most max_length tokens: as many rows a
    batch as hold about the tokens of a padded batch (rows grouped by size, as train.sh does, or in random order),
    and `batch_size` rows a batch (the same flag value)."""
    llm_dir, vision_dir = write_bases(tmpdir(), vocab=vocab, llm=llm)
    ours = VisionLanguageModel.build(VLMConfig(llm=llm_dir, vision=vision_dir, llm_mode="full")).apply_trainable_modes()
    ours.train()
    rng = random.Random(0)
    text = [rng.choice(LENGTHS) + rng.randint(-8, 8) for _ in range(samples)]
    items = [synthetic_item(ours, t, i) for i, t in enumerate(text)]
    lengths = [len(it["input_ids"]) for it in items]
    collate = VLMCollator(ours.tokenizer.pad_token_id)
    order = list(range(samples))
    rng.shuffle(order)
    torch.manual_seed(0)
    grouped = list(LengthGroupedSampler(batch_size, lengths=lengths))
    rows = plan_rows(lengths, max_length, buffer=1000, seed=0)
    sizes = [sum(min(lengths[i], max_length) for i in row) for row in rows]
    per_batch = max(1, round(batch_size * sum(lengths) / samples / max_length))  # about a padded batch's tokens

    def row_batches(rows_a_batch: int, grouped_rows: bool) -> list:
        torch.manual_seed(0)
        ordered = list(LengthGroupedSampler(rows_a_batch, lengths=sizes)) if grouped_rows else \
            random.Random(1).sample(range(len(rows)), len(rows))
        return [[[items[i] for i in rows[r]] for r in ordered[j:j + rows_a_batch]]
                for j in range(0, len(rows), rows_a_batch)]

    ways = {"padded, random order": [[items[i] for i in order[j:j + batch_size]]
                                     for j in range(0, samples, batch_size)],
            "padded, length-grouped": [[items[i] for i in grouped[j:j + batch_size]]
                                       for j in range(0, samples, batch_size)],
            f"packed, {per_batch} row(s) a batch (a padded batch's tokens), rows grouped": row_batches(per_batch, True),
            f"packed, {per_batch} row(s) a batch, rows in random order": row_batches(per_batch, False),
            f"packed, {batch_size} rows a batch (the same flag), rows grouped": row_batches(batch_size, True)}
    optimizer = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-5)
    results = {}
    for name, batches in ways.items():
        collated = [collate(b) for b in batches]
        real = sum(c.pop("num_tokens") for c in collated)
        slots = sum(c["input_ids"].numel() for c in collated)
        for c in collated:
            c.pop("sample_ids"), c.pop("skipped")
        step = trainer_step_on(ours, optimizer)
        step(collated[0])  # warm-up, not counted
        start = time.perf_counter()
        for c in collated:
            step(c)
        seconds = time.perf_counter() - start
        results[name] = {"samples_per_s": samples / seconds, "tokens_per_s": real / seconds,
                         "padding": 1 - real / slots, "steps": len(collated), "seconds": seconds}
    grouped_rate = results["padded, length-grouped"]["samples_per_s"]
    table_rows = [[name, f"{r['steps']}", f"{r['padding']:.1%}", f"{r['samples_per_s']:.2f}",
                   f"{r['tokens_per_s']:.0f}", f"{r['samples_per_s'] / grouped_rate:.2f}x"]
                  for name, r in results.items()]
    return table_rows, {"samples": samples, "max_length": max_length, "batch_size": batch_size, "llm": llm,
                        "ways": results}


def trainer_step_on(model, optimizer):
    def step(inputs):
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--vocab", type=int, default=151936, help="LLM vocabulary (Qwen's: 151,936)")
    p.add_argument("--epoch", action="store_true", help="also the variable-length epoch (slow)")
    p.add_argument("--epoch_samples", type=int, default=64)
    p.add_argument("--packing", action="store_true", help="only the padded-vs-packed epoch (ours)")
    p.add_argument("--max_length", type=int, default=1024, help="--packing: tokens per row (and per sample)")
    p.add_argument("--llm", choices=["qwen", "qwen2"], default="qwen",
                   help="--packing: our QWen (attention per packed sample) or transformers' Qwen2 (its masked SDPA)")
    p.add_argument("--only", choices=sorted(VARIANTS), help="(internal) one variant in this process")
    args = p.parse_args()
    if args.only:
        emit(run_variant(args.only, args.steps, args.vocab))
        return
    if args.packing:
        rows, result = packing_table(args.vocab, args.epoch_samples, args.max_length, llm=args.llm)
        print(table(rows, ["one epoch, ours", "steps", "padding", "samples/s", "tokens/s", "vs length-grouped"]))
        emit({"benchmark": "cpu_train_packing", **machine(), "vocab": args.vocab, **result})
        return
    r = {name: in_process(name, args.steps, args.vocab) for name in VARIANTS}
    llava = r["llava"]
    rows = [[f"step time, batch 8 (median of {args.steps})", *(f"{r[v]['step_ms']:.0f} ms" for v in
                                                                ("ours", "ours-plain", "llava")),
             f"**{llava['step_ms'] / r['ours']['step_ms']:.2f}x**"],
            ["peak RSS during the steps", *(f"{r[v]['peak_rss_mb']:.0f} MB" for v in ("ours", "ours-plain", "llava")),
             f"**{r['ours']['peak_rss_mb'] / llava['peak_rss_mb']:.2f}x**"]]
    print(table(rows, ["", "ours", "ours, plain loss", "Llava", "ours vs Llava"]))
    curve = [[label, f"{r[v]['step_ms']:.0f} ms", f"{r[v]['peak_rss_mb']:.0f} MB"]
             for label, v in (("off", "ours"), ("every block", "ours-ckpt1"), ("every 2nd block", "ours-ckpt2"),
                              ("every 4th block", "ours-ckpt4"))]
    print(table(curve, ["activation checkpointing (ours)", "step time", "peak RSS"]))
    if args.epoch:
        print(table(epoch_table(args.vocab, args.epoch_samples), ["", "ours", "Llava", "ours vs Llava"]))
    emit({"benchmark": "cpu_train", **machine(), "vocab": args.vocab, "variants": r,
          "speed_ratio": llava["step_ms"] / r["ours"]["step_ms"],
          "rss_ratio": r["ours"]["peak_rss_mb"] / llava["peak_rss_mb"]})


if __name__ == "__main__":
    main()
