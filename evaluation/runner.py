"""Answering a benchmark's questions in batches, longest prompts first, into a predictions JSONL in the
layout LLaVA's eval scripts write ({"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}),
so its official scorers run on our outputs and ours on its. A rerun skips the ids already answered."""

import json
import os

from tqdm import tqdm

from common import IMAGE_MARKER

from .data import BenchmarkDataError, Question


def read_predictions(path: str) -> dict[str, str]:
    """question_id -> answer text. A last line cut short by a crash is dropped (and cut from the file, so
    that appending starts on a clean line); any other bad line stops with one sentence."""
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    answers, good_bytes = {}, 0
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                row = json.loads(line)
                answers[str(row["question_id"])] = row["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                if n == len(lines):
                    with open(path, "rb+") as f:
                        f.truncate(good_bytes)
                    break
                raise BenchmarkDataError(f"{path} line {n}: not a prediction "
                                         '({"question_id": ..., "text": ...})') from None
        good_bytes += len(line.encode("utf-8"))
    return answers


def answer_questions(model, questions: list[Question], path: str, batch_size: int = 16, max_new_tokens: int = 128,
                     model_id: str = "", progress: bool = True) -> dict[str, str]:
    """Answers the questions not yet in `path` (greedy), appending one line each; returns every answer."""
    answers = read_predictions(path)
    todo = sorted((q for q in questions if q.question_id not in answers), key=lambda q: -len(q.prompt))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f, tqdm(total=len(questions), initial=len(questions) - len(todo),
                                                      desc="answering", unit="q", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            conversations = [[{"role": "user", "content": f"{IMAGE_MARKER}\n{q.prompt}"}] for q in chunk]
            texts = model.answer(conversations, [[q.load_image()] for q in chunk], max_new_tokens=max_new_tokens)
            for q, text in zip(chunk, texts, strict=True):
                answers[q.question_id] = text
                f.write(json.dumps({"question_id": q.question_id, "prompt": q.prompt, "text": text,
                                    "answer_id": f"{model_id}:{q.question_id}", "model_id": model_id,
                                    "metadata": {}}, ensure_ascii=False) + "\n")
            f.flush()
            bar.update(len(chunk))
    return answers
