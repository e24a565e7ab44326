"""ScienceQA-IMG (Lu et al., 2022): the multiple-choice science questions that have an image.

    DATA/problems.json: {"<pid>": {"question", "choices": [...], "answer": <index>, "hint", "image":
                          "image.png" or null, "subject", "split", ...}}
    DATA/pid_splits.json: {"test": ["<pid>", ...], ...}
    IMAGES (default DATA/<split>)/<pid>/image.png
"""

import os

from .answers import option_letter
from .data import BenchmarkDataError, Question, read_json
from .prompts import OPTION_LETTERS, multiple_choice


def load(data: str, split: str | None = None, images: str | None = None) -> list[Question]:
    split = split or "test"
    images = images or os.path.join(data, split)
    problems = read_json(os.path.join(data, "problems.json"))
    splits = read_json(os.path.join(data, "pid_splits.json"))
    if split not in splits:
        raise BenchmarkDataError(f"{os.path.join(data, 'pid_splits.json')} has no split {split!r}")
    questions = []
    for pid in splits[split]:
        p = problems.get(pid)
        if p is None:
            raise BenchmarkDataError(f"{os.path.join(data, 'problems.json')}: split {split} names problem {pid}, "
                                     "which it does not hold")
        if not p.get("image"):
            continue  # the IMG subset
        if not isinstance(p.get("choices"), list) or not isinstance(p.get("answer"), int) \
                or not 0 <= p["answer"] < len(p["choices"]):
            raise BenchmarkDataError(f"{os.path.join(data, 'problems.json')}: problem {pid} has no valid "
                                     "choices and answer index")
        hint = f"Context: {p['hint']}" if p.get("hint") else None
        questions.append(Question(pid, multiple_choice(p["question"], p["choices"], hint),
                                  os.path.join(images, pid, p["image"]),
                                  {"answer": OPTION_LETTERS[p["answer"]], "options": p["choices"],
                                   "subject": p.get("subject", "all")}))
    return questions


def score(questions: list[Question], answers: dict[str, str]) -> dict:
    right = {q.question_id: option_letter(answers[q.question_id], q.truth["options"]) == q.truth["answer"]
             for q in questions}
    subjects = {}
    for q in questions:
        subjects.setdefault(q.truth["subject"], []).append(right[q.question_id])
    return {"questions": len(right), "accuracy": sum(right.values()) / len(right),
            "per_subject": {s: sum(v) / len(v) for s, v in sorted(subjects.items())}}


def summary(results: dict) -> list[tuple[str, str]]:
    return [("IMG accuracy", f"{results['accuracy']:.4f}")] + [
        (f"  {s}", f"{v:.4f}") for s, v in results["per_subject"].items()]
