"""TextVQA (Singh et al., 2019): questions about text in images, 10 human answers each.

    DATA = TextVQA_0.5.1_val.json: {"data": [{"question_id": 34602, "question": "what is the brand of this
           camera?", "image_id": "003a8ae2ef43b901", "answers": [10 strings], ...}, ...]}
    IMAGES (default: train_images/ beside DATA)/<image_id>.jpg
    --ocr_tokens TextVQA_Rosetta_OCR_v0.2_val.json (optional): {"data": [{"image_id", "ocr_tokens": [...]}]};
           each question then carries LLaVA-1.5's "Reference OCR token: a, b, ..." line, as its published
           TextVQA numbers do (llava_textvqa_val_v051_ocr.jsonl). An entry's own "ocr_tokens" are used likewise.

Predictions are written as LLaVA writes them (question_id = the image id, prompt = the question as asked) and
found again by image id and question text, as LLaVA's eval_textvqa.py finds them; this project's earlier
files (keyed by TextVQA's question id) are read too. Scored by the VQA accuracy with EvalAI's answer
normalisation (answers.vqa_accuracy), as m4c_evaluator.py does.
"""

import os

from .answers import vqa_accuracy
from .data import BenchmarkDataError, Question, read_json
from .prompts import short_answer, with_ocr_tokens

RULE = "VQA accuracy over the 10 leave-one-out subsets, EvalAI's answer normalisation (m4c_evaluator.py)"


def question_in(prompt: str) -> str | None:
    """The question inside a recorded prompt, lower-cased, by the rule of LLaVA's eval_textvqa.py."""
    lines = prompt.split("\n")
    if "Reference OCR token: " in prompt and len(lines) == 3:
        return (lines[1] if prompt.startswith("Reference OCR token:") else lines[0]).lower()
    return lines[0].lower() if len(lines) == 2 else None


def row_keys(row: dict) -> list:
    keys = [str(row["question_id"])]
    question = question_in(row.get("prompt") or "")
    return keys + ([(str(row["question_id"]), question)] if question is not None else [])


def ocr_by_image(path: str) -> dict[str, list[str]]:
    raw = read_json(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
        raise BenchmarkDataError(f"{path}: not a TextVQA OCR file (a JSON object with a \"data\" list)")
    tokens = {}
    for k, row in enumerate(raw["data"]):
        if not isinstance(row, dict) or "image_id" not in row or not isinstance(row.get("ocr_tokens"), list):
            raise BenchmarkDataError(f"{path}: data[{k}] lacks image_id or an ocr_tokens list")
        tokens[row["image_id"]] = row["ocr_tokens"]
    return tokens


def load(data: str, split: str | None = None, images: str | None = None, ocr_tokens: str | None = None,
         **_) -> list[Question]:
    images = images or os.path.join(os.path.dirname(os.path.abspath(data)), "train_images")
    raw = read_json(data)
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
        raise BenchmarkDataError(f"{data}: not a TextVQA file (a JSON object with a \"data\" list)")
    ocr = ocr_by_image(ocr_tokens) if ocr_tokens else {}
    questions = []
    for k, row in enumerate(raw["data"]):
        missing = [key for key in ("question_id", "question", "image_id", "answers") if key not in row]
        if missing or not isinstance(row["answers"], list) or not row["answers"]:
            raise BenchmarkDataError(f"{data}: data[{k}] lacks {', '.join(missing) or 'answers'}")
        if ocr_tokens and row["image_id"] not in ocr:
            raise BenchmarkDataError(f"{ocr_tokens} has no OCR tokens for image {row['image_id']} "
                                     f"(data[{k}] of {data})")
        prompt = short_answer(with_ocr_tokens(row["question"], ocr.get(row["image_id"], row.get("ocr_tokens"))))
        questions.append(Question(row["image_id"], prompt, os.path.join(images, f"{row['image_id']}.jpg"),
                                  {"answers": row["answers"]}, key=(row["image_id"], row["question"].lower()),
                                  alias=str(row["question_id"])))
    return questions


def score(questions: list[Question], answers: dict, **_) -> dict:
    scores = [vqa_accuracy(answers[q.key], q.truth["answers"]) for q in questions]
    return {"rule": RULE, "questions": len(scores), "accuracy": sum(scores) / len(scores)}


def summary(results: dict) -> list[tuple[str, str]]:
    return [("VQA accuracy", f"{results['accuracy']:.4f}")]
