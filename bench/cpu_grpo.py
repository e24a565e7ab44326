"""A GRPO step on the CPU: the rollouts of our sampler (static KV cache, temperature 1) against transformers'
`generate` on the Llava export of the same weights (the same prompts, the same G), and the step's split between
generation, the reference pass, the policy's forward and backward, and the optimizer; peak RSS.

    python bench/cpu_grpo.py [--prompts 2] [--generations 8] [--new_tokens 64] [--repeats 3]
"""

import argparse
import copy
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from common.quiet import quiet_libraries  # noqa: E402

quiet_libraries()  # before torch and transformers load
import torch  # noqa: E402

from bench.common import (  # noqa: E402
    batch,
    build_pair,
    emit,
    machine,
    median_time,
    peak_rss_mb,
    reset_peak_rss,
    table,
    tmpdir,  # noqa: E402
)
from bench.posttrain_steps import grpo_step  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    ours, llava = build_pair(tmpdir())
    ours.eval(), llava.eval()
    G, n = args.generations, args.new_tokens
    prompts = batch(ours, [40, 96][: args.prompts] + [64] * max(0, args.prompts - 2), padding_side="left")
    rows = {k: v.repeat_interleave(G, dim=0) for k, v in prompts.items() if k != "labels"}  # each prompt G times
    sampling = dict(do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=n, min_new_tokens=n, eos_token_id=None,
                    pad_token_id=ours.tokenizer.pad_token_id)
    tokens = rows["input_ids"].shape[0] * n

    def ours_rollout():
        torch.manual_seed(0)
        ours.generate(rows["input_ids"], rows["attention_mask"], rows["pixel_values"], **sampling)

    @torch.no_grad()
    def llava_rollout():
        torch.manual_seed(0)
        llava.generate(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"],
                       pixel_values=rows["pixel_values"], **sampling)

    ours.set_decoding("static")
    t_ours = median_time(ours_rollout, args.repeats, warmup=1)
    t_llava = median_time(llava_rollout, args.repeats, warmup=1)
    result = {"benchmark": "cpu_grpo", **machine(), "rows": rows["input_ids"].shape[0], "new_tokens": n,
              "ours_rollout_tok_s": tokens / t_ours, "llava_rollout_tok_s": tokens / t_llava}
    print(table([["rollout tokens/s", f"{tokens / t_ours:.0f}", f"{tokens / t_llava:.0f}",
                  f"**{t_llava / t_ours:.2f}x**"]],
                [f"{args.prompts} prompts x {G} completions x {n} tokens", "ours (static cache)", "Llava generate",
                 "ours / Llava"]))

    reference = copy.deepcopy(ours).eval().requires_grad_(False)  # full tuning: a frozen copy, as train.py keeps
    optimizer = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-6)
    step_rows = {k: v for k, v in rows.items()}
    grpo_step(ours, step_rows, G, n, optimizer, reference)  # warm-up
    reset_peak_rss()
    totals = {}
    for _ in range(args.repeats):
        parts, _ = grpo_step(ours, step_rows, G, n, optimizer, reference)
        for k, v in parts.items():
            totals[k] = totals.get(k, 0.0) + v / args.repeats
    step = sum(totals.values())
    result.update(step_seconds=totals, peak_rss_mb=peak_rss_mb())
    print(table([[k, f"{v:.2f} s", f"{v / step:.0%}"] for k, v in totals.items()] +
                [["whole step", f"{step:.2f} s", "100%"], ["peak RSS", f"{result['peak_rss_mb']:.0f} MB", ""]],
                ["GRPO step (full tuning, beta 0.04)", "seconds", "share"]))
    emit(result)


if __name__ == "__main__":
    main()
