"""MMBench (Liu et al., 2023): multiple-choice questions in one TSV, images inline as base64.

    DATA = MMBench_DEV_EN.tsv: columns index, question, hint, A, B, C, D, answer, category, image, ...
           (C and D empty for questions with fewer options; hint empty or "nan" when there is none)

Circular evaluation (the benchmark's own rule): a question with n options is asked n times, its options
rotated one place each time, and counts as right only if every rotation is answered right. `--split single`
asks each question once. Free-form answers are mapped to a letter by `answers.option_letter`.
"""

import csv
import os
import sys

from .answers import option_letter
from .data import BenchmarkDataError, Question, decode_base64_image
from .prompts import OPTION_LETTERS, multiple_choice

REQUIRED = ("index", "question", "image", "A", "B")


def cell(row: dict, name: str) -> str | None:
    value = (row.get(name) or "").strip()
    return None if value in ("", "nan", "NaN", "None") else value


def load(data: str, split: str | None = None, images: str | None = None) -> list[Question]:
    if split not in (None, "circular", "single"):
        raise BenchmarkDataError(f"MMBench --split is circular (default) or single, not {split!r}")
    if not os.path.isfile(data):
        raise BenchmarkDataError(f"benchmark file not found: {data}")
    csv.field_size_limit(sys.maxsize)  # the image column holds whole base64 images
    questions = []
    with open(data, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise BenchmarkDataError(f"{data} line 1: missing column(s) {', '.join(missing)}")
        for n, row in enumerate(reader, 2):
            options = []
            for letter in OPTION_LETTERS:
                if cell(row, letter) is None:
                    break
                options.append(cell(row, letter))
            answer = cell(row, "answer")
            if answer is not None and answer not in OPTION_LETTERS[: len(options)]:
                raise BenchmarkDataError(f"{data} line {n}: answer {answer!r} is not one of the "
                                         f"{len(options)} options")
            image = decode_base64_image(row["image"], data, n)
            rounds = 1 if split == "single" else len(options)
            for r in range(rounds):
                rotated = options[r:] + options[:r]
                truth = None if answer is None else OPTION_LETTERS[(OPTION_LETTERS.index(answer) - r) % len(options)]
                questions.append(Question(
                    f"{row['index']}:{r}", multiple_choice(row["question"].strip(), rotated, cell(row, "hint")), image,
                    {"index": row["index"], "round": r, "answer": truth, "options": rotated,
                     "category": cell(row, "category") or "all"}))
    return questions


def score(questions: list[Question], answers: dict[str, str]) -> dict:
    if any(q.truth["answer"] is None for q in questions):
        return {"note": "this TSV has no answer column (a test split): submit the predictions to MMBench's server"}
    by_index = {}
    for q in questions:
        picked = option_letter(answers[q.question_id], q.truth["options"])
        by_index.setdefault(q.truth["index"], []).append((q.truth["round"], picked == q.truth["answer"],
                                                          q.truth["category"]))
    circular = {i: all(right for _, right, _ in rounds) for i, rounds in by_index.items()}
    single = {i: next(right for r, right, _ in rounds if r == 0) for i, rounds in by_index.items()}
    categories = {}
    for i, rounds in by_index.items():
        categories.setdefault(rounds[0][2], []).append(circular[i])
    return {"questions": len(by_index), "circular_accuracy": sum(circular.values()) / len(circular),
            "single_pass_accuracy": sum(single.values()) / len(single),
            "per_category": {c: sum(v) / len(v) for c, v in sorted(categories.items())}}


def summary(results: dict) -> list[tuple[str, str]]:
    if "note" in results:
        return [("note", results["note"])]
    return [("circular accuracy", f"{results['circular_accuracy']:.4f}"),
            ("single-pass accuracy", f"{results['single_pass_accuracy']:.4f}")] + [
        (f"  {c}", f"{v:.4f}") for c, v in results["per_category"].items()]
