"""KV-cached generation on the CPU: our VLM, decoding eagerly (transformers' generate), with the static cache
and with the compiled static step, against transformers' LlavaForConditionalGeneration with the same weights.
Time to first token and decode tokens/s, batch 1 and 8, 64 new tokens (greedy); every side must produce the
same tokens. python bench/cpu_generate.py [--repeats 3] [--modes eager,static,compiled]
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


def compare(ours, llava, size, repeats, modes):
    """{side: (time to first token, decode tokens/s per sequence)} on one left-padded batch."""
    data = batch(ours, LENGTHS[:size] if size > 1 else [96], padding_side="left")
    kwargs = dict(do_sample=False, eos_token_id=None, pad_token_id=ours.tokenizer.pad_token_id)

    def gen_ours(n):
        return ours.generate(data["input_ids"], data["attention_mask"], data["pixel_values"],
                             max_new_tokens=n, min_new_tokens=n, **kwargs)

    @torch.no_grad()
    def gen_llava(n):
        return llava.generate(input_ids=data["input_ids"], attention_mask=data["attention_mask"],
                              pixel_values=data["pixel_values"], max_new_tokens=n, min_new_tokens=n, **kwargs)

    reference = gen_llava(NEW_TOKENS)[:, data["input_ids"].shape[1]:]
    results = {"Llava": timings(gen_llava, repeats)}
    for mode in modes:
        ours.set_decoding(mode)
        assert torch.equal(gen_ours(NEW_TOKENS), reference), f"ours ({mode}) and Llava disagree"
        results[mode] = timings(gen_ours, repeats)
        if ours.decoder is not None and ours.decoder.compile_seconds is not None:
            results[mode + " compile s"] = ours.decoder.compile_seconds
    ours.set_decoding("eager")
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--modes", default="eager,static,compiled", help="our decoding modes to time")
    args = p.parse_args()
    modes = args.modes.split(",")
    ours, llava = build_pair(tmpdir())
    ours.eval(), llava.eval()
    rows, result = [], {"benchmark": "cpu_generate", **machine()}
    for size in (1, 8):
        r = compare(ours, llava, size, args.repeats, modes)
        ttft_l, tps_l = r["Llava"]
        rows.append([f"batch {size}: time to first token", *(f"{r[m][0] * 1000:.0f} ms" for m in modes),
                     f"{ttft_l * 1000:.0f} ms"])
        rows.append([f"batch {size}: decode tokens/s (all sequences)", *(f"{r[m][1] * size:.0f}" for m in modes),
                     f"{tps_l * size:.0f}"])
        rows.append([f"batch {size}: decode vs Llava", *(f"**{r[m][1] / tps_l:.2f}x**" for m in modes), "1.00x"])
        result[f"batch{size}"] = {m: {"ttft_ms": r[m][0] * 1000, "decode_tok_s": r[m][1] * size}
                                  for m in [*modes, "Llava"]}
        result[f"batch{size}"]["compile_s"] = {m: r[m + " compile s"] for m in modes if m + " compile s" in r}
    print(table(rows, ["", *(f"ours, {m}" for m in modes), "Llava"]))
    emit(result)


if __name__ == "__main__":
    main()
