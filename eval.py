"""Score a checkpoint on held-out conversations:

    python eval.py --model_weights DIR --image_map FILE --captions_file FILE [--max_new_tokens N] [--batch_size B]

Each sample's last user turn is answered (given the earlier turns) and compared with its reference
assistant turn: exact match after stripping whitespace, and BLEU-4, CIDEr-D and ROUGE-L (pycocoevalcap,
Chinese split into characters), overall and per source. Writes eval_results.json and
eval_predictions.jsonl next to the checkpoint; the last stdout line is the results as one JSON object.
"""

import argparse
import importlib.util
import json
import os
import re
import sys
from collections import defaultdict

from tqdm import tqdm

from common import atomic_file, exits_on
from model import load_checkpoint
from model.device import add_device_arguments, pick_device, pick_dtype
from visual import load_image

# CJK characters one by one; words and numbers whole; other symbols one by one
TOKEN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[A-Za-z0-9]+|[^\sA-Za-z0-9\u3400-\u9fff\uf900-\ufaff]")


def tokenize(text: str) -> str:
    return " ".join(TOKEN.findall(text.lower()))


def caption_scores(predictions: list[str], references: list[str]) -> dict:
    """Corpus BLEU-4, CIDEr-D and ROUGE-L of predictions against one reference each; none without
    pycocoevalcap (a 100 MB wheel, optional: exact match is scored either way)."""
    if importlib.util.find_spec("pycocoevalcap") is None:
        return {}
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    # the scorers reject empty strings; a lone placeholder scores zero against any reference
    res = {i: [tokenize(p) or "<empty>"] for i, p in enumerate(predictions)}
    gts = {i: [tokenize(r) or "<empty>"] for i, r in enumerate(references)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    rouge, _ = Rouge().compute_score(gts, res)
    return {"bleu4": float(bleu[3]), "cider": float(cider), "rouge_l": float(rouge)}


def score(predictions: list[str], references: list[str], sources: list[str]) -> dict:
    def block(idx):
        preds, refs = [predictions[i] for i in idx], [references[i] for i in idx]
        exact = sum(p.strip() == r.strip() for p, r in zip(preds, refs, strict=True)) / len(idx)
        return {"n": len(idx), "exact_match": exact, **caption_scores(preds, refs)}

    by_source = defaultdict(list)
    for i, source in enumerate(sources):
        by_source[source].append(i)
    overall = block(list(range(len(predictions))))
    return {**overall, "per_source": {s: block(idx) for s, idx in sorted(by_source.items())}}


def eval_items(image_map: str, captions: str) -> list[dict]:
    """(history up to the last user turn, reference reply, image paths, source) per sample."""
    for path in (image_map, captions):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"data file not found: {path}")
    with open(image_map, encoding="utf-8") as f:
        paths = {k: v["path"] for k, v in json.load(f).items()}
    with open(captions, encoding="utf-8") as f:
        samples = json.load(f)
    items = []
    for s in samples:
        turns = s["conversations"]
        if len(turns) < 2 or turns[-1]["role"] != "assistant":
            continue
        items.append({"id": s["id"], "source": s["source"], "messages": turns[:-1],
                      "reference": turns[-1]["content"], "images": [paths[k] for k in s["images"]]})
    if not items:
        raise ValueError(f"{captions} holds no sample that ends with an assistant reply")
    return items


@exits_on(FileNotFoundError, ValueError, OSError)
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_weights", required=True)
    p.add_argument("--image_map", required=True)
    p.add_argument("--captions_file", required=True)
    p.add_argument("--max_new_tokens", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--limit", type=int, help="score only the first N samples")
    p.add_argument("--base_language_model", help="override the checkpoint's base LLM")
    p.add_argument("--base_vision_model", "--base_value_model", dest="base_vision_model")
    p.add_argument("--no_progress", action="store_true")
    add_device_arguments(p)
    args = p.parse_args(argv)
    device = pick_device(args.device)
    items = eval_items(args.image_map, args.captions_file)[: args.limit]
    model = load_checkpoint(args.model_weights, llm=args.base_language_model, vision=args.base_vision_model,
                            device=device, dtype=pick_dtype(args.dtype, device))
    predictions = []
    for start in tqdm(range(0, len(items), args.batch_size), desc="evaluating", disable=args.no_progress):
        chunk = items[start:start + args.batch_size]
        images = [[load_image(path) for path in item["images"]] for item in chunk]
        predictions += model.answer([item["messages"] for item in chunk], images,
                                    max_new_tokens=args.max_new_tokens)
    results = score(predictions, [i["reference"] for i in items], [i["source"] for i in items])
    if "bleu4" not in results:
        print("note: pycocoevalcap is not installed; only exact match is scored", file=sys.stderr)
    rows = [{"id": i["id"], "source": i["source"], "images": i["images"], "question": i["messages"][-1]["content"],
             "reference": i["reference"], "prediction": pred} for i, pred in zip(items, predictions, strict=True)]
    outputs = {"eval_predictions.jsonl": "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
               "eval_results.json": json.dumps(results, indent=2)}
    for name, text in outputs.items():
        with atomic_file(os.path.join(args.model_weights, name)) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    print(json.dumps(results, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
