"""POPE (Li et al., 2023): yes/no object-existence questions on COCO val2014, three negative-sampling splits.

    DATA/coco_pope_random.json, coco_pope_popular.json, coco_pope_adversarial.json (or DATA/coco/, as in
        LLaVA's playground), one JSON object per line: {"question_id": 1, "image": "COCO_val2014_000000310196.jpg",
                                                        "text": "Is there a snowboard in the image?", "label": "yes"}
    DATA/llava_pope_test.jsonl (optional: LLaVA's question file; its ids and categories are then used)
    IMAGES (default DATA/val2014)/COCO_val2014_*.jpg

`--split all` (the default) asks the three splits in one pass into one predictions file, as LLaVA does, and
scores each split apart. LLaVA's eval_pope.py lines answers up with a split's labels by position; here each
answer is found by its question id, which gives the same figures on a file in question order. Without
LLaVA's question file the ids are `<split>_<id>`, and `pope_questions.jsonl`, written with the results
in that file's layout (written in every `all` run), lets LLaVA's eval_pope.py score them as they are.
"""

import json
import os

from common import atomic_file

from .answers import pope_yes_no
from .data import BenchmarkDataError, Question, need, read_jsonl
from .prompts import SHORT_ANSWER, short_answer

SPLITS = ("random", "popular", "adversarial")
DEFAULT_SPLIT = "all"
LLAVA_QUESTIONS = "llava_pope_test.jsonl"
QUESTIONS_FILE = "pope_questions.jsonl"  # written with the results: LLaVA's question-file layout
RULE = "LLaVA's eval_pope.py: the first sentence, commas dropped; No / not / no in it = no, else yes"


def label_folder(data: str) -> str:
    """DATA itself, or DATA/coco in LLaVA's playground layout."""
    if any(os.path.exists(os.path.join(data, f"coco_pope_{s}.json")) for s in SPLITS):
        return data
    nested = os.path.join(data, "coco")
    if any(os.path.exists(os.path.join(nested, f"coco_pope_{s}.json")) for s in SPLITS):
        return nested
    raise BenchmarkDataError(f"no coco_pope_{{random,popular,adversarial}}.json in {data} or {nested}")


def read_split(folder: str, split: str, images: str) -> list[dict]:
    path = os.path.join(folder, f"coco_pope_{split}.json")
    rows = []
    for n, row in read_jsonl(path):
        need(row, ("question_id", "image", "text", "label"), path, n)
        if row["label"] not in ("yes", "no"):
            raise BenchmarkDataError(f"{path} line {n}: label must be yes or no, not {row['label']!r}")
        rows.append({**row, "line": n, "path": path, "split": split, "image_path": os.path.join(images, row["image"])})
    return rows


def llava_questions(data: str, folder: str) -> str | None:
    for candidate in (os.path.join(data, LLAVA_QUESTIONS), os.path.join(os.path.dirname(folder), LLAVA_QUESTIONS)):
        if os.path.isfile(candidate):
            return candidate
    return None


def load(data: str, split: str | None = None, images: str | None = None, **_) -> list[Question]:
    split = split or DEFAULT_SPLIT
    if split not in (DEFAULT_SPLIT, *SPLITS):
        raise BenchmarkDataError(f"POPE --split is all or one of {', '.join(SPLITS)}, not {split!r}")
    folder = label_folder(data)
    images = images or os.path.join(data, "val2014")
    splits = [s for s in SPLITS if os.path.exists(os.path.join(folder, f"coco_pope_{s}.json"))]
    if split != DEFAULT_SPLIT:
        return [Question(str(r["question_id"]), short_answer(r["text"]), r["image_path"],
                         {"label": r["label"], "split": r["split"]}) for r in read_split(folder, split, images)]
    labels = {s: read_split(folder, s, images) for s in splits}
    questions_file = llava_questions(data, folder)
    if questions_file is None:
        return [Question(f"{s}_{r['question_id']}", short_answer(r["text"]), r["image_path"],
                         {"label": r["label"], "split": s}) for s in splits for r in labels[s]]
    return from_llava_questions(questions_file, labels)


def from_llava_questions(path: str, labels: dict[str, list[dict]]) -> list[Question]:
    """LLaVA's question file: the k-th question of a category goes with the k-th line of its label file."""
    seen = {s: 0 for s in labels}
    questions = []
    for n, row in read_jsonl(path):
        need(row, ("question_id", "image", "text", "category"), path, n)
        split = row["category"]
        if split not in labels:
            raise BenchmarkDataError(f"{path} line {n}: category {split!r} has no coco_pope_{split}.json")
        if seen[split] >= len(labels[split]):
            raise BenchmarkDataError(f"{path} line {n}: more {split} questions than coco_pope_{split}.json holds")
        label = labels[split][seen[split]]
        seen[split] += 1
        if label["image"] != row["image"]:
            raise BenchmarkDataError(f"{path} line {n} ({row['image']}) does not line up with {label['path']} line "
                                     f"{label['line']} ({label['image']})")
        text = row["text"] if row["text"].endswith(SHORT_ANSWER) else short_answer(row["text"])
        questions.append(Question(row["question_id"], text, label["image_path"], {"label": label["label"],
                                                                                 "split": split}))
    return questions


def metrics(pairs: list[tuple[str, str]]) -> dict:
    """(prediction, label) yes/no pairs -> LLaVA's eval_pope.py figures, 'yes' being the positive class."""
    tp = sum(p == "yes" and t == "yes" for p, t in pairs)
    fp = sum(p == "yes" and t == "no" for p, t in pairs)
    tn = sum(p == "no" and t == "no" for p, t in pairs)
    fn = sum(p == "no" and t == "yes" for p, t in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"n": len(pairs), "accuracy": (tp + tn) / len(pairs), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": (tp + fp) / len(pairs), "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def score(questions: list[Question], answers: dict, **_) -> dict:
    by_split = {}
    for q in questions:
        by_split.setdefault(q.truth["split"], []).append((pope_yes_no(answers[q.key]), q.truth["label"]))
    return {"rule": RULE, "splits": {s: metrics(pairs) for s, pairs in by_split.items()}}


def summary(results: dict) -> list[tuple[str, str]]:
    return [(f"{split}: accuracy / precision / recall / F1 / yes-ratio",
             f"{r['accuracy']:.4f} / {r['precision']:.4f} / {r['recall']:.4f} / {r['f1']:.4f} / {r['yes_ratio']:.4f}")
            for split, r in results["splits"].items()]


def write_companions(questions: list[Question], answers: dict, folder: str, split: str | None, data: str):
    """With all splits in one file: the question file LLaVA's eval_pope.py takes (--question-file) beside it."""
    if (split or DEFAULT_SPLIT) != DEFAULT_SPLIT:
        return
    path = os.path.join(folder, QUESTIONS_FILE)
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for q in questions:
            f.write(json.dumps({"question_id": q.question_id, "image": os.path.basename(q.image), "text": q.prompt,
                                "category": q.truth["split"]}) + "\n")
