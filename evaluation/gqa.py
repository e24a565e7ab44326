"""GQA (Hudson & Manning, 2019): compositional questions on scene images, one short answer each.

    DATA = testdev_balanced_questions.json: {"<qid>": {"imageId": "n161313", "question": "...",
                                             "answer": "no", ...}}
    IMAGES (default: images/ beside DATA)/<imageId>.jpg

Scored as LLaVA-1.5 prepares it for GQA's eval script: exact match after a trailing period is dropped
and both sides are lower-cased. The predictions file is LLaVA's layout, which its convert_gqa_for_eval.py
turns into GQA's testdev_balanced_predictions.json as it is.
"""

import os

from .data import BenchmarkDataError, Question, read_json
from .prompts import short_answer

RULE = "LLaVA's convert_gqa_for_eval.py (trailing period dropped, lower-cased), then GQA's exact match"


def normalize(text: str) -> str:
    return text.strip().rstrip(".").lower()


def load(data: str, split: str | None = None, images: str | None = None, **_) -> list[Question]:
    images = images or os.path.join(os.path.dirname(os.path.abspath(data)), "images")
    raw = read_json(data)
    if not isinstance(raw, dict):
        raise BenchmarkDataError(f"{data}: not a GQA questions file (a JSON object keyed by question id)")
    questions = []
    for qid, row in raw.items():
        missing = [k for k in ("imageId", "question", "answer") if k not in row]
        if missing:
            raise BenchmarkDataError(f"{data}: question {qid} lacks {', '.join(missing)}")
        image = os.path.join(images, f"{row['imageId']}.jpg")
        questions.append(Question(str(qid), short_answer(row["question"]), image, {"answer": row["answer"]}))
    return questions


def score(questions: list[Question], answers: dict, **_) -> dict:
    right = [normalize(answers[q.key]) == normalize(q.truth["answer"]) for q in questions]
    return {"rule": RULE, "questions": len(right), "accuracy": sum(right) / len(right)}


def summary(results: dict) -> list[tuple[str, str]]:
    return [("accuracy", f"{results['accuracy']:.4f}")]
