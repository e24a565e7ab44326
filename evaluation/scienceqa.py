"""ScienceQA-IMG (Lu et al., 2022): the multiple-choice science questions that have an image.

    DATA/problems.json: {"<pid>": {"question", "choices": [...], "answer": <index>, "hint", "image":
                          "image.png" or null, "subject", "split", ...}}
    DATA/pid_splits.json: {"test": ["<pid>", ...], ...}
    IMAGES (default DATA/images/<split>, the published and LLaVA's layout)/<pid>/image.png

Answers are read by LLaVA's eval_science_qa.py rule (`answers.scienceqa_letter`: a bare letter, "B. ...", or
exactly one "The answer is X."), the rule of the published ScienceQA-IMG numbers; `--answer_rule lenient`
reads free-form answers too (`answers.option_letter`). Predictions are written as LLaVA's
model_vqa_science.py writes them: question_id = the problem id, prompt = "<image>\\n" + the question as asked
(its scorer picks the image subset by that `<image>`).
"""

import os

from .answers import letter_reader, scienceqa_letter
from .data import BenchmarkDataError, Question, read_json
from .prompts import OPTION_LETTERS, multiple_choice

DEFAULT_SPLIT = "test"
RULES = {"official": "LLaVA's eval_science_qa.py: a bare letter, 'X. ...', or one 'The answer is X.'",
         "lenient": "lenient: a leading letter, else one lone letter, else one option's text"}


def load(data: str, split: str | None = None, images: str | None = None, **_) -> list[Question]:
    split = split or DEFAULT_SPLIT
    images = images or os.path.join(data, "images", split)
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
        prompt = multiple_choice(p["question"], p["choices"], hint)
        questions.append(Question(pid, prompt, os.path.join(images, pid, p["image"]),
                                  {"answer": OPTION_LETTERS[p["answer"]], "options": p["choices"],
                                   "subject": p.get("subject", "all")}, recorded_prompt=f"<image>\n{prompt}"))
    return questions


def score(questions: list[Question], answers: dict, rule: str = "official", **_) -> dict:
    read = letter_reader(scienceqa_letter, rule)
    right = {q.key: read(answers[q.key], q.truth["options"]) == q.truth["answer"] for q in questions}
    subjects = {}
    for q in questions:
        subjects.setdefault(q.truth["subject"], []).append(right[q.key])
    return {"rule": RULES[rule], "questions": len(right), "accuracy": sum(right.values()) / len(right),
            "per_subject": {s: sum(v) / len(v) for s, v in sorted(subjects.items())}}


def summary(results: dict) -> list[tuple[str, str]]:
    return [("IMG accuracy", f"{results['accuracy']:.4f}")] + [
        (f"  {s}", f"{v:.4f}") for s, v in results["per_subject"].items()]
