"""MMBench (Liu et al., 2023): multiple-choice questions in one TSV, images inline as base64.

    DATA = MMBench_DEV_EN.tsv: columns index, question, hint, A, B, C, D, answer, category, image, ...
           (C and D empty for questions with fewer options; hint empty or "nan" when there is none)

Circular evaluation (the benchmark's own rule): a question with n options is asked n times, its options
rotated one place each time, and counts as right only if every rotation is answered right. `--split single`
asks each question once. Answers are read as MMBench reads them (`answers.mmbench_letter`: VLMEvalKit's
rule-based matching) or, with `--answer_rule lenient`, by `answers.option_letter`.

Predictions are written as LLaVA's model_vqa_mmbench.py writes them (question_id = the TSV's index, round_id,
options, option_char), and `mmbench_submission.xlsx` beside them is the sheet MMBench's server takes for the
test split, as LLaVA's convert_mmbench_for_submission.py makes it: the TSV's columns but hint, category,
source, image, comment and l2-category, with a `prediction` column (the unrotated round's answer) after D.
"""

import csv
import os
import sys

from common import atomic_file

from .answers import letter_reader, mmbench_letter
from .data import BenchmarkDataError, Question, decode_base64_image
from .prompts import MULTIPLE_CHOICE, OPTION_LETTERS, multiple_choice

REQUIRED = ("index", "question", "image", "A", "B")
DEFAULT_SPLIT = "circular"
SUBMISSION = "mmbench_submission.xlsx"
NOT_SUBMITTED = ("hint", "category", "source", "image", "comment", "l2-category")
RULES = {"official": "VLMEvalKit's rule-based matching (can_infer_option, then can_infer_text)",
         "lenient": "lenient: a leading letter, else one lone letter, else one option's text"}


def row_keys(row: dict) -> list:
    """LLaVA's layout: (index, round_id); this project's earlier one: "index:round"."""
    return [str(row["question_id"]), (str(row["question_id"]), int(row.get("round_id") or 0))]


def cell(row: dict, name: str) -> str | None:
    value = (row.get(name) or "").strip()
    return None if value in ("", "nan", "NaN", "None") else value


def read_tsv(data: str) -> tuple[list[str], list[dict]]:
    if not os.path.isfile(data):
        raise BenchmarkDataError(f"benchmark file not found: {data}")
    csv.field_size_limit(sys.maxsize)  # the image column holds whole base64 images
    with open(data, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        return list(reader.fieldnames or []), list(reader)


def load(data: str, split: str | None = None, images: str | None = None, **_) -> list[Question]:
    if split not in (None, "circular", "single"):
        raise BenchmarkDataError(f"MMBench --split is circular (default) or single, not {split!r}")
    columns, rows = read_tsv(data)
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise BenchmarkDataError(f"{data} line 1: missing column(s) {', '.join(missing)}")
    questions = []
    for n, row in enumerate(rows, 2):
        options = []
        for letter in OPTION_LETTERS:
            if cell(row, letter) is None:
                break
            options.append(cell(row, letter))
        answer = cell(row, "answer")
        if answer is not None and answer not in OPTION_LETTERS[: len(options)]:
            raise BenchmarkDataError(f"{data} line {n}: answer {answer!r} is not one of the {len(options)} options")
        image = decode_base64_image(row["image"], data, n)
        rounds = 1 if split == "single" else len(options)
        letters = list(OPTION_LETTERS[: len(options)])
        for r in range(rounds):
            rotated = options[r:] + options[:r]
            truth = None if answer is None else OPTION_LETTERS[(OPTION_LETTERS.index(answer) - r) % len(options)]
            prompt = multiple_choice(row["question"].strip(), rotated, cell(row, "hint"))
            index = int(row["index"]) if row["index"].strip().isdigit() else row["index"]
            questions.append(Question(
                index, prompt, image, {"index": row["index"], "round": r, "answer": truth, "options": rotated,
                                       "category": cell(row, "category") or "all"},
                key=(str(index), r), alias=f"{row['index']}:{r}", recorded_prompt=prompt.removesuffix(
                    "\n" + MULTIPLE_CHOICE),  # LLaVA records the question without the instruction
                extra={"round_id": r, "options": rotated, "option_char": letters[r:] + letters[:r]}))
    return questions


def score(questions: list[Question], answers: dict, rule: str = "official", **_) -> dict:
    read = letter_reader(mmbench_letter, rule)
    if any(q.truth["answer"] is None for q in questions):
        return {"note": f"this TSV has no answer column (a test split): submit {SUBMISSION} to MMBench's server"}
    by_index = {}
    for q in questions:
        picked = read(answers[q.key], q.truth["options"])
        by_index.setdefault(q.truth["index"], []).append((q.truth["round"], picked == q.truth["answer"],
                                                          q.truth["category"]))
    circular = {i: all(right for _, right, _ in rounds) for i, rounds in by_index.items()}
    single = {i: next(right for r, right, _ in rounds if r == 0) for i, rounds in by_index.items()}
    categories = {}
    for i, rounds in by_index.items():
        categories.setdefault(rounds[0][2], []).append(circular[i])
    return {"rule": RULES[rule], "questions": len(by_index),
            "circular_accuracy": sum(circular.values()) / len(circular),
            "single_pass_accuracy": sum(single.values()) / len(single),
            "per_category": {c: sum(v) / len(v) for c, v in sorted(categories.items())}}


def summary(results: dict) -> list[tuple[str, str]]:
    if "note" in results:
        return [("note", results["note"])]
    return [("circular accuracy", f"{results['circular_accuracy']:.4f}"),
            ("single-pass accuracy", f"{results['single_pass_accuracy']:.4f}")] + [
        (f"  {c}", f"{v:.4f}") for c, v in results["per_category"].items()]


def write_companions(questions: list[Question], answers: dict, folder: str, split: str | None, data: str):
    """The submission sheet, as LLaVA's convert_mmbench_for_submission.py writes it (openpyxl)."""
    from openpyxl import Workbook

    columns, rows = read_tsv(data)
    kept = [c for c in columns if c not in NOT_SUBMITTED]
    kept.insert(min(6, len(kept)), "prediction")
    first_round = {q.truth["index"]: answers.get(q.key) for q in questions if q.truth["round"] == 0}
    book = Workbook()
    sheet = book.active
    sheet.append(kept)
    for row in rows:
        values = {**row, "prediction": first_round.get(row["index"])}
        sheet.append([int(values[c]) if c == "index" and values[c].strip().isdigit() else values[c] for c in kept])
    path = os.path.join(folder, SUBMISSION)
    with atomic_file(path) as tmp:
        book.save(tmp)
