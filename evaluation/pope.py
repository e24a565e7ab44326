"""POPE (Li et al., 2023): yes/no object-existence questions on COCO val2014, three negative-sampling splits.

    DATA/coco_pope_random.json, coco_pope_popular.json, coco_pope_adversarial.json
        one JSON object per line: {"question_id": 1, "image": "COCO_val2014_000000310196.jpg",
                                   "text": "Is there a snowboard in the image?", "label": "yes"}
    IMAGES (default DATA/val2014)/COCO_val2014_*.jpg
"""

import os

from .answers import pope_yes_no
from .data import BenchmarkDataError, Question, need, read_jsonl
from .prompts import short_answer

SPLITS = ("random", "popular", "adversarial")


def parts(data: str, split: str | None = None) -> list[str]:
    """Each split is scored (and its predictions kept) on its own: their question ids overlap."""
    if split:
        if split not in SPLITS:
            raise BenchmarkDataError(f"POPE --split is one of {', '.join(SPLITS)}, not {split!r}")
        return [split]
    found = [s for s in SPLITS if os.path.exists(os.path.join(data, f"coco_pope_{s}.json"))]
    if not found:
        raise BenchmarkDataError(f"no coco_pope_{{random,popular,adversarial}}.json in {data}")
    return found


def load(data: str, split: str, images: str | None = None) -> list[Question]:
    images = images or os.path.join(data, "val2014")
    path = os.path.join(data, f"coco_pope_{split}.json")
    questions = []
    for n, row in read_jsonl(path):
        need(row, ("question_id", "image", "text", "label"), path, n)
        if row["label"] not in ("yes", "no"):
            raise BenchmarkDataError(f"{path} line {n}: label must be yes or no, not {row['label']!r}")
        questions.append(Question(str(row["question_id"]), short_answer(row["text"]),
                                  os.path.join(images, row["image"]), {"label": row["label"]}))
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


def score(questions: list[Question], answers: dict[str, str]) -> dict:
    return metrics([(pope_yes_no(answers[q.question_id]), q.truth["label"]) for q in questions])


def summary(results: dict) -> list[tuple[str, str]]:
    return [("accuracy / precision / recall / F1 / yes-ratio",
             f"{results['accuracy']:.4f} / {results['precision']:.4f} / {results['recall']:.4f} / "
             f"{results['f1']:.4f} / {results['yes_ratio']:.4f}")]
