"""The two sides of scripts/check_vllm.sh, each run in its own virtual environment, and their comparison.

    python scripts/check_vllm.py ours CHECKPOINT OUT.json --images A.jpg B.jpg --prompt Q    # this project's venv
    python scripts/check_vllm.py vllm EXPORT OUT.json --images A.jpg B.jpg --prompt Q        # the vLLM venv
    python scripts/check_vllm.py compare OURS.json VLLM.json                                 # either

Both sides put the image before the question (our training format's `<|extra_0|>question`; for vLLM, an
OpenAI-style message with an image part then a text part), decode greedily, and record the prompt's token
ids and the new tokens. The vLLM side imports nothing of this project: the two venvs pin different
torch and transformers versions.
"""

import argparse
import json
import sys


def ours(args):
    import torch

    from common import IMAGE_MARKER
    from model import load_checkpoint
    from visual import load_image

    model = load_checkpoint(args.model)
    rows = []
    for path in args.images:
        messages = [{"role": "user", "content": IMAGE_MARKER + args.prompt}]
        batch = model.processor([model.processor.render(messages, add_generation_prompt=True)], [[load_image(path)]])
        with torch.no_grad():
            new = model.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                 image_sizes=batch["image_sizes"], max_new_tokens=args.max_new_tokens)[0].tolist()
        rows.append({"image": path, "prompt_ids": batch["input_ids"][0].tolist(), "tokens": new,
                     "text": model.tokenizer.decode(new, skip_special_tokens=True)})
    return rows, model.stop_token_ids


def vllm(args):
    from PIL import Image
    from vllm import LLM, SamplingParams

    llm = LLM(model=args.model, dtype="float32", enforce_eager=True, limit_mm_per_prompt={"image": 1}, seed=0)
    conversations = [[{"role": "user", "content": [{"type": "image_pil", "image_pil": Image.open(p).convert("RGB")},
                                                   {"type": "text", "text": args.prompt}]}] for p in args.images]
    outputs = llm.chat(conversations, SamplingParams(temperature=0, max_tokens=args.max_new_tokens))
    stop = llm.llm_engine.get_tokenizer().convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    return [{"image": p, "prompt_ids": list(o.prompt_token_ids), "tokens": list(o.outputs[0].token_ids),
             "text": o.outputs[0].text} for p, o in zip(args.images, outputs, strict=True)], stop


def strip_stop(tokens: list[int], stop: list[int]) -> list[int]:
    """The answer up to its first stop token: one side may include the stop token, the other not."""
    for i, t in enumerate(tokens):
        if t in stop:
            return tokens[:i]
    return tokens


def compare(args) -> int:
    with open(args.ours) as f:
        a = json.load(f)
    with open(args.theirs) as f:
        b = json.load(f)
    stop = a["stop"]
    print("| image | prompt ids (ours = vLLM) | new tokens ours | new tokens vLLM | same tokens | answer (ours) |")
    print("| --- | --- | --- | --- | --- | --- |")
    same = True
    for x, y in zip(a["rows"], b["rows"], strict=True):
        ids_equal = x["prompt_ids"] == y["prompt_ids"]
        tx, ty = strip_stop(x["tokens"], stop), strip_stop(y["tokens"], stop)
        same &= ids_equal and tx == ty
        print(f"| {x['image']} | {len(x['prompt_ids'])} = {len(y['prompt_ids'])}: {'yes' if ids_equal else 'NO'} | "
              f"{len(tx)} | {len(ty)} | {'yes' if tx == ty else 'NO'} | {x['text']!r} |")
    print("vLLM's greedy tokens and prompt ids equal ours" if same else "vLLM DIFFERS from ours")
    return 0 if same else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="side", required=True)
    for side in ("ours", "vllm"):
        s = sub.add_parser(side)
        s.add_argument("model", help="our checkpoint folder (ours) or the --format llava export (vllm)")
        s.add_argument("out", help="JSON file to write")
        s.add_argument("--images", nargs="+", required=True)
        s.add_argument("--prompt", default="What shapes are in the image?")
        s.add_argument("--max_new_tokens", type=int, default=24)
    c = sub.add_parser("compare")
    c.add_argument("ours")
    c.add_argument("theirs")
    args = p.parse_args(argv)
    if args.side == "compare":
        return compare(args)
    rows, stop = (ours if args.side == "ours" else vllm)(args)
    with open(args.out, "w") as f:
        json.dump({"rows": rows, "stop": stop}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
