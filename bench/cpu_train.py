"""Training step on the CPU: our VLM against transformers' LlavaForConditionalGeneration with the same
weights (CLIP-style tower 224 px / patch 16 / 196 tokens, Qwen2-style LLM, mlp2x_gelu projector), on
the same batch of 8 samples of spread text lengths; then samples/s over a variable-length epoch with
and without length grouping.   python bench/cpu_train.py [--steps 20] [--epoch_samples 128]
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


def trainer_step(model, data):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step():
        model(**data).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def padding_fraction(batches: list[list[int]], n_image: int) -> float:
    real = sum(sum(b) + n_image * len(b) for b in batches)
    padded = sum((max(b) + n_image) * len(b) for b in batches)
    return 1 - real / padded


def epoch(model, batches, step_time_of):
    return sum(step_time_of(model, b) for b in batches)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--epoch_samples", type=int, default=128)
    p.add_argument("--only", choices=["ours", "llava"], help="(internal) one model, report its peak RSS")
    p.add_argument("--rss_only", action="store_true", help="only the peak-RSS comparison")
    args = p.parse_args()
    torch.manual_seed(0)
    ours, llava = build_pair(tmpdir())
    ours.train(), llava.train()
    data = batch(ours, LENGTHS)
    if args.only:  # a process of its own, the other model freed: peak RSS of 20 training steps
        model = ours if args.only == "ours" else llava
        del ours, llava
        gc.collect()
        reset_peak_rss()
        median_time(trainer_step(model, data), args.steps)
        emit({"peak_rss_mb": peak_rss_mb()})
        return

    rss = {}
    for impl in ("ours", "llava"):
        out = subprocess.run([sys.executable, __file__, "--only", impl, "--steps", str(args.steps)],
                             capture_output=True, text=True, check=True).stdout
        rss[impl] = json.loads(out.strip().splitlines()[-1])["peak_rss_mb"]
    if args.rss_only:
        print(table([["peak RSS, 20 training steps", f"{rss['ours']:.0f} MB", f"{rss['llava']:.0f} MB",
                      f"{rss['llava'] / rss['ours']:.2f}x"]], ["", "ours", "Llava", "Llava / ours"]))
        emit({"benchmark": "cpu_train_rss", **machine(), "peak_rss_mb": rss})
        return
    t_ours = median_time(trainer_step(ours, data), args.steps)
    t_llava = median_time(trainer_step(llava, data), args.steps)

    # a variable-length epoch: random batches of 8 vs transformers' LengthGroupedSampler
    rng = random.Random(0)
    lengths = [rng.choice(LENGTHS) + rng.randint(-8, 8) for _ in range(args.epoch_samples)]
    order = list(range(len(lengths)))
    rng.shuffle(order)
    random_batches = [[lengths[i] for i in order[j:j + 8]] for j in range(0, len(order), 8)]
    torch.manual_seed(0)
    grouped = list(LengthGroupedSampler(8, lengths=lengths))
    grouped_batches = [[lengths[i] for i in grouped[j:j + 8]] for j in range(0, len(grouped), 8)]
    n_image = ours.config.num_image_tokens

    def step_time(model, lens):
        return median_time(trainer_step(model, batch(ours, lens)), steps=1, warmup=0)

    epoch_ours_random = epoch(ours, random_batches, step_time)
    epoch_ours_grouped = epoch(ours, grouped_batches, step_time)
    epoch_llava_random = epoch(llava, random_batches, step_time)
    n = len(lengths)
    rows = [
        [f"step time, batch 8 (median of {args.steps})", f"{t_ours * 1000:.0f} ms", f"{t_llava * 1000:.0f} ms",
         f"**{t_llava / t_ours:.2f}x**"],
        ["peak RSS", f"{rss['ours']:.0f} MB", f"{rss['llava']:.0f} MB", f"{rss['llava'] / rss['ours']:.2f}x"],
        [f"samples/s, {n}-sample epoch, random batches", f"{n / epoch_ours_random:.1f}",
         f"{n / epoch_llava_random:.1f}", f"{epoch_llava_random / epoch_ours_random:.2f}x"],
        ["samples/s, ours length-grouped vs Llava random", f"{n / epoch_ours_grouped:.1f}",
         f"{n / epoch_llava_random:.1f}", f"**{epoch_llava_random / epoch_ours_grouped:.2f}x**"],
    ]
    print(table(rows, ["", "ours", "Llava", "ours vs Llava"]))
    pad_random, pad_grouped = padding_fraction(random_batches, n_image), padding_fraction(grouped_batches, n_image)
    print(f"padding fraction: random batches {pad_random:.1%}, length-grouped {pad_grouped:.1%}")
    emit({"benchmark": "cpu_train", **machine(), "step_ms_ours": t_ours * 1000, "step_ms_llava": t_llava * 1000,
          "speed_ratio": t_llava / t_ours, "peak_rss_mb": rss, "samples_per_s": {
              "ours_random": n / epoch_ours_random, "ours_grouped": n / epoch_ours_grouped,
              "llava_random": n / epoch_llava_random},
          "grouped_vs_llava": epoch_llava_random / epoch_ours_grouped,
          "padding_fraction": {"random": pad_random, "grouped": pad_grouped}})


if __name__ == "__main__":
    main()
