"""MME (Fu et al., 2023): 14 categories of yes/no questions, two per image (one yes, one no).

The release's layout, per category folder under DATA:
    DATA/<category>/images/<name>.jpg + DATA/<category>/questions_answers_YN/<name>.txt   (artwork, celebrity,
                                                                                      landmark, posters, scene)
    DATA/<category>/<name>.png + DATA/<category>/<name>.txt                             (the others)
each .txt holding one `question<TAB>Yes|No` line per question. Asked as LLaVA-1.5 asks (llava_mme.jsonl):
the question without its " Please answer yes or no.", then the short-answer instruction. Predictions are
written as LLaVA writes them, question_id = the image's path in DATA (both questions of an image share it),
and found again by (category, image, question), as LLaVA's convert_answer_to_mme.py finds them. Scores as
MME's eval_tool: per category, acc (questions right) + acc+ (images with both questions right), x 100;
perception and cognition totals.
"""

import os

from .answers import mme_yes_no
from .data import BenchmarkDataError, Question
from .prompts import SHORT_ANSWER, short_answer

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
YES_OR_NO = "Please answer yes or no."
RULE = ("MME's eval_tool (calculation.py): yes/no by the whole answer or its first four characters; "
        "score = (acc + acc+) x 100")


def bare_question(text: str) -> str:
    """The question without the instruction LLaVA adds or the one MME's files end with."""
    return text.replace(SHORT_ANSWER, "").replace(YES_OR_NO, "").strip()


def row_keys(row: dict) -> list:
    """LLaVA's layout: (category, image stem, question); this project's earlier one: "category/image/k"."""
    qid = str(row["question_id"])
    parts = qid.split("/")
    keys = [qid]
    if len(parts) >= 2 and row.get("prompt"):
        keys.append((parts[0], os.path.splitext(parts[-1])[0], bare_question(row["prompt"])))
    return keys


def category_files(folder: str) -> list[tuple[str, str]]:
    """(question file, image file) pairs of one category folder, in either of the release's layouts."""
    qa_dir = os.path.join(folder, "questions_answers_YN")
    image_dir = os.path.join(folder, "images") if os.path.isdir(qa_dir) else folder
    qa_dir = qa_dir if os.path.isdir(qa_dir) else folder
    images = {os.path.splitext(f)[0]: os.path.join(image_dir, f) for f in os.listdir(image_dir)
              if f.lower().endswith(IMAGE_SUFFIXES)}
    pairs = []
    for name in sorted(f for f in os.listdir(qa_dir) if f.endswith(".txt")):
        stem = os.path.splitext(name)[0]
        if stem not in images:
            raise BenchmarkDataError(f"{os.path.join(qa_dir, name)}: no image {stem}.jpg/.png in {image_dir}")
        pairs.append((os.path.join(qa_dir, name), images[stem]))
    return pairs


def load(data: str, split: str | None = None, images: str | None = None, **_) -> list[Question]:
    if not os.path.isdir(data):
        raise BenchmarkDataError(f"MME folder not found: {data}")
    categories = [split] if split else sorted(d for d in os.listdir(data) if os.path.isdir(os.path.join(data, d)))
    questions = []
    for category in categories:
        for qa_path, image in category_files(os.path.join(data, category)):
            with open(qa_path, encoding="utf-8") as f:
                lines = [(n, line.rstrip("\n")) for n, line in enumerate(f, 1) if line.strip()]
            for k, (n, line) in enumerate(lines):
                fields = line.split("\t")
                if len(fields) != 2 or fields[1].strip().lower() not in ("yes", "no"):
                    raise BenchmarkDataError(f"{qa_path} line {n}: not `question<TAB>Yes|No`")
                key = f"{category}/{os.path.basename(image)}"
                question = bare_question(fields[0])
                questions.append(Question(
                    os.path.relpath(image, data).replace(os.sep, "/"), short_answer(question), image,
                    {"category": category, "image_key": key, "answer": fields[1].strip().lower()},
                    key=(category, os.path.splitext(os.path.basename(image))[0], question), alias=f"{key}/{k}"))
    if not questions:
        raise BenchmarkDataError(f"no MME category folders with questions in {data}")
    return questions


def score(questions: list[Question], answers: dict, **_) -> dict:
    per_category = {}
    for q in questions:
        right = mme_yes_no(answers[q.key]) == q.truth["answer"]
        images = per_category.setdefault(q.truth["category"], {})
        images.setdefault(q.truth["image_key"], []).append(right)
    results = {"rule": RULE, "categories": {}}
    for category, images in sorted(per_category.items()):
        flat = [r for rights in images.values() for r in rights]
        acc, acc_plus = sum(flat) / len(flat), sum(all(r) for r in images.values()) / len(images)
        results["categories"][category] = {"questions": len(flat), "images": len(images), "acc": acc,
                                           "acc_plus": acc_plus, "score": 100 * (acc + acc_plus)}
    cats = results["categories"]
    results["perception"] = sum(cats[c]["score"] for c in PERCEPTION if c in cats)
    results["cognition"] = sum(cats[c]["score"] for c in COGNITION if c in cats)
    return results


def summary(results: dict) -> list[tuple[str, str]]:
    rows = [(f"{c} acc / acc+ / score", f"{r['acc']:.4f} / {r['acc_plus']:.4f} / {r['score']:.2f}")
            for c, r in results["categories"].items()]
    return rows + [("perception", f"{results['perception']:.2f}"), ("cognition", f"{results['cognition']:.2f}")]
