"""KV-cached generation on the CPU: our VLM against transformers' LlavaForConditionalGeneration with the
same weights. Time to first token and decode tokens/s, batch 1 and 8, 64 new tokens (greedy).
    python bench/cpu_generate.py [--repeats 3]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402

from bench.common import LENGTHS, batch, build_pair, emit, machine, median_time, table, tmpdir  # noqa: E402

NEW_TOKENS = 64


def timings(generate, repeats):
    """(time to first token, decode tokens/s per sequence) of a generate(max_new_tokens) callable."""
    first = median_time(lambda: generate(1), repeats, warmup=1)
    full = median_time(lambda: generate(NEW_TOKENS), repeats, warmup=1)
    return first, (NEW_TOKENS - 1) / (full - first)


def compare(ours, llava, size, repeats):
    """((ttft ours, ttft Llava), (decode tokens/s per sequence ours, Llava)) on one left-padded batch."""
    data = batch(ours, LENGTHS[:size] if size > 1 else [96], padding_side="left")
    kwargs = dict(do_sample=False, eos_token_id=None, pad_token_id=ours.tokenizer.pad_token_id)

    def gen_ours(n):
        return ours.generate(data["input_ids"], data["attention_mask"], data["pixel_values"],
                             max_new_tokens=n, min_new_tokens=n, **kwargs)

    @torch.no_grad()
    def gen_llava(n):
        return llava.generate(input_ids=data["input_ids"], attention_mask=data["attention_mask"],
                              pixel_values=data["pixel_values"], max_new_tokens=n, min_new_tokens=n, **kwargs)

    assert torch.equal(gen_ours(8), gen_llava(8)[:, data["input_ids"].shape[1]:]), "the two models disagree"
    (ttft_o, tps_o), (ttft_l, tps_l) = timings(gen_ours, repeats), timings(gen_llava, repeats)
    return (ttft_o, ttft_l), (tps_o, tps_l)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    ours, llava = build_pair(tmpdir())
    ours.eval(), llava.eval()
    rows, result = [], {"benchmark": "cpu_generate", **machine()}
    for size in (1, 8):
        ttft, tps = compare(ours, llava, size, args.repeats)
        rows += [[f"batch {size}: time to first token", f"{ttft[0] * 1000:.0f} ms", f"{ttft[1] * 1000:.0f} ms",
                  f"**{ttft[1] / ttft[0]:.2f}x**"],
                 [f"batch {size}: decode tokens/s (all sequences)", f"{tps[0] * size:.0f}", f"{tps[1] * size:.0f}",
                  f"**{tps[0] / tps[1]:.2f}x**"]]
        result[f"batch{size}"] = {"ttft_ms": [t * 1000 for t in ttft], "decode_tok_s": [t * size for t in tps],
                                  "ratio_ttft": ttft[1] / ttft[0], "ratio_decode": tps[0] / tps[1]}
    print(table(rows, ["", "ours", "Llava", "ours vs Llava"]))
    emit(result)


if __name__ == "__main__":
    main()
