"""Held-out conversations in our schema: the items to answer (each sample's last user turn, given the earlier turns),
answering them in batches of similar prompt length, and scoring the answers against the reference replies: exact match
after stripping whitespace, and BLEU-4, CIDEr-D and ROUGE-L (pycocoevalcap, Chinese split into characters), overall and
per source. eval.py scores a checkpoint this way; train.py does during training (--eval_generate)."""

import importlib.util
import os
import re
from collections import defaultdict

from tqdm import tqdm

from common import read_json
from common.images import image_ref
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
    """(history up to the last user turn, reference reply, image paths, source) per sample. A missing or malformed
    file, or a sample that names an image the map lacks, raises one sentence naming the file (and the sample)."""
    for path in (image_map, captions):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"data file not found: {path}")
    try:
        paths = {k: image_ref(v) for k, v in read_json(image_map).items()}
    except (AttributeError, KeyError, TypeError):
        raise ValueError(f"{image_map} is not an image map ({{key: {{\"path\": ...}}}})") from None
    samples = read_json(captions)
    items = []
    for n, s in enumerate(samples if isinstance(samples, list) else [None]):
        try:
            turns, images, sample_id = s["conversations"], s["images"], s["id"]
            if len(turns) < 2 or turns[-1]["role"] != "assistant":
                continue
            unknown = [k for k in images if k not in paths]
            if unknown:
                raise ValueError(f"sample {sample_id} in {captions} uses image {unknown[0]!r}, which {image_map} "
                                 "does not list")
            items.append({"id": sample_id, "source": s.get("source", ""), "messages": turns[:-1],
                          "reference": turns[-1]["content"], "images": [paths[k] for k in images]})
        except (KeyError, TypeError, IndexError):
            raise ValueError(f"{captions}: sample {n} is not a conversation in our schema (id, images, conversations "
                             "of role/content turns)") from None
    if not items:
        raise ValueError(f"{captions} holds no sample that ends with an assistant reply")
    return items


def answer_sorted(model, items: list[dict], batch_size: int, max_new_tokens: int, progress: bool,
                  **generate_kwargs) -> list[str]:
    """Answers in batches of similar prompt length (less padding), longest first; returns them in item order."""
    order = sorted(range(len(items)), key=lambda i: -sum(len(m["content"]) for m in items[i]["messages"]))
    answers = [None] * len(items)
    for start in tqdm(range(0, len(order), batch_size), desc="evaluating", disable=not progress):
        chunk = order[start:start + batch_size]
        images = [[load_image(path) for path in items[i]["images"]] for i in chunk]
        texts = model.answer([items[i]["messages"] for i in chunk], images, max_new_tokens=max_new_tokens,
                             **generate_kwargs)
        for i, text in zip(chunk, texts, strict=True):
            answers[i] = text
    return answers
