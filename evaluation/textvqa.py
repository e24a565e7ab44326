"""TextVQA (Singh et al., 2019): questions about text in images, 10 human answers each.

    DATA = TextVQA_0.5.1_val.json: {"data": [{"question_id": 34602, "question": "what is the brand of this
           camera?", "image_id": "003a8ae2ef43b901", "answers": [10 strings], ...}, ...]}
           (an entry's optional "ocr_tokens" list is given to the model as LLaVA-1.5 does)
    IMAGES (default: train_images/ beside DATA)/<image_id>.jpg

Scored by the VQA accuracy with EvalAI's answer normalisation (answers.vqa_accuracy).
"""

import os

from .answers import vqa_accuracy
from .data import BenchmarkDataError, Question, read_json
from .prompts import short_answer, with_ocr_tokens


def load(data: str, split: str | None = None, images: str | None = None) -> list[Question]:
    images = images or os.path.join(os.path.dirname(os.path.abspath(data)), "train_images")
    raw = read_json(data)
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
        raise BenchmarkDataError(f"{data}: not a TextVQA file (a JSON object with a \"data\" list)")
    questions = []
    for k, row in enumerate(raw["data"]):
        missing = [key for key in ("question_id", "question", "image_id", "answers") if key not in row]
        if missing or not isinstance(row["answers"], list) or not row["answers"]:
            raise BenchmarkDataError(f"{data}: data[{k}] lacks {', '.join(missing) or 'answers'}")
        question = with_ocr_tokens(row["question"], row.get("ocr_tokens"))
        questions.append(Question(str(row["question_id"]), short_answer(question),
                                  os.path.join(images, f"{row['image_id']}.jpg"), {"answers": row["answers"]}))
    return questions


def score(questions: list[Question], answers: dict[str, str]) -> dict:
    scores = [vqa_accuracy(answers[q.question_id], q.truth["answers"]) for q in questions]
    return {"questions": len(scores), "accuracy": sum(scores) / len(scores)}


def summary(results: dict) -> list[tuple[str, str]]:
    return [("VQA accuracy", f"{results['accuracy']:.4f}")]
