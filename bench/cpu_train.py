"""Training step on the CPU: our VLM against transformers' LlavaForConditionalGeneration with the same weights
(CLIP-style tower 224 px / patch 16 / 196 tokens, Qwen2-style LLM with Qwen's 151,936-token vocabulary,
mlp2x_gelu projector), on the same batch of 8 samples of spread text lengths. Each variant runs in a process
of its own (so that its peak RSS is its own): median step time of forward, backward and AdamW, and the peak
resident memory during those steps. Then selective activation checkpointing (ours), and with --epoch the
samples/s of a variable-length epoch with and without length grouping.

    python bench/cpu_train.py [--steps 10] [--vocab 151936] [--epoch]
"""

import argparse
import gc
import json
import os
import random
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
from transformers.trainer_pt_utils import LengthGroupedSampler  # noqa: E402

from bench.common import (  # noqa: E402
    LENGTHS,
    batch,
    build_pair,
    emit,
    machine,
    median_time,
    peak_rss_mb,
    reset_peak_rss,
    table,
    tmpdir,
)

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
    out = subprocess.run([sys.executable, __file__, "--only", name, "--steps", str(steps), "--vocab", str(vocab)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--vocab", type=int, default=151936, help="LLM vocabulary (Qwen's: 151,936)")
    p.add_argument("--epoch", action="store_true", help="also the variable-length epoch (slow)")
    p.add_argument("--epoch_samples", type=int, default=64)
    p.add_argument("--only", choices=sorted(VARIANTS), help="(internal) one variant in this process")
    args = p.parse_args()
    if args.only:
        emit(run_variant(args.only, args.steps, args.vocab))
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
