"""Decode speed on one GPU: a Qwen-7B-shaped VLM (bf16, random weights, SigLIP-so400m-384-shaped tower: 729
image tokens + 32 prompt tokens) decoding with transformers' generate (eager), with the static KV cache, and
with the compiled static step (torch.compile, CUDA graphs), beside transformers'
LlavaForConditionalGeneration.generate on the same weights (its LLM converted to Qwen2, weights shared).
Batch 1 and 8, 256 new tokens (greedy, forced length): time to first token, decode tokens/s, compile time,
and how many greedy tokens each side shares with our eager path (bf16 kernels may break near-ties apart).

    python bench/gpu_generate.py            # a few minutes on one H100
    python bench/gpu_generate.py --tiny     # the same code on the CPU in seconds
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402

from bench.common import emit, machine, table  # noqa: E402
from bench.gpu_train import SHAPES, build, inputs, sync  # noqa: E402
from model.export import to_llava_model  # noqa: E402

PROMPT = 32


def shared_prefix(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean fraction of each row's tokens that agree before the first difference."""
    same = (a == b).int().cumprod(-1).sum(-1).float()
    return float((same / a.shape[-1]).mean())


def timed(generate, new_tokens, device):
    """(seconds to first token, decode tokens/s per sequence, tokens) of generate(n)."""
    sync(device)
    start = time.perf_counter()
    generate(1)
    sync(device)
    first = time.perf_counter() - start
    start = time.perf_counter()
    tokens = generate(new_tokens)
    sync(device)
    return first, (new_tokens - 1) / (time.perf_counter() - start - first), tokens


def run_batch(model, llava, batch: int, new: int, device) -> dict:
    """{side: (seconds to first token, decode tokens/s per sequence, tokens, warm-up seconds)} for one batch."""
    ids, pixels = inputs(model, batch, PROMPT, device)
    mask = torch.ones_like(ids)
    forced = dict(min_new_tokens=0, eos_token_id=None, pad_token_id=0, do_sample=False)

    def ours(n):
        return model.generate(ids, mask, pixels, max_new_tokens=n, **forced)

    @torch.no_grad()
    def theirs(n):
        return llava.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=n,
                              **forced)[:, ids.shape[1]:]

    sides = {}
    for mode in ("eager", "static", "compiled"):
        model.set_decoding(mode)
        start = time.perf_counter()
        ours(8)  # warm-up: compiles the compiled step for this shape
        warm = time.perf_counter() - start
        sides[mode] = (*timed(ours, new, device), warm)
    model.set_decoding("eager")
    sides["Llava"] = (*timed(theirs, new, device), None)
    return sides


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--batches", default="1,8")
    args = p.parse_args()
    shape = SHAPES["tiny" if args.tiny else "full"]
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build(shape, device, dtype)
    model.config.llm_mode = "frozen"
    model.llm = model.llm.merge_and_unload()  # inference: no adapter
    model.eval()
    llava, _ = to_llava_model(model)
    llava.eval()
    rows, result = [], {"benchmark": "gpu_generate", **machine(), "device": str(device),
                        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None}
    for batch in map(int, args.batches.split(",")):
        sides = run_batch(model, llava, batch, shape["new_tokens"], device)
        reference = sides["eager"][2]
        for name, (first, tps, tokens, warm) in sides.items():
            rows.append([f"batch {batch}: {name}", f"{first * 1000:.0f} ms", f"{tps * batch:.1f}",
                         f"{warm:.1f} s" if warm is not None else "", f"{shared_prefix(tokens, reference):.0%}"])
            result[f"b{batch}_{name}"] = {"ttft_ms": first * 1000, "decode_tokens_per_s": tps * batch,
                                          "per_sequence_tokens_per_s": tps, "warmup_s": warm,
                                          "agreement_with_eager": shared_prefix(tokens, reference)}
    print(table(rows, ["decoding", "time to first token", "decode tokens/s", "warm-up (compile)",
                       "greedy tokens = eager"]))
    emit(result)


if __name__ == "__main__":
    main()
