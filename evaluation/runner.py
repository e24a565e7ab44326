"""Answering a benchmark's questions in batches, longest prompts first, into a predictions JSONL written as
LLaVA's model_vqa*.py scripts write it ({"question_id", "prompt", "text", "answer_id", "model_id", "metadata"},
plus MMBench's round fields), so its official scorers run on our files and ours on its. A rerun skips the
questions already answered; once all are, the file is rewritten in question order, as LLaVA's scorers expect
(POPE lines answers up with labels by position, MME's eval_tool pairs an image's two questions by line)."""

import json
import os

from common import IMAGE_MARKER, atomic_file

from .data import BenchmarkDataError, Question


def default_row_keys(row: dict) -> list:
    return [str(row["question_id"])]


def read_rows(path: str) -> list[dict]:
    """The predictions file's rows. A last line cut short by a crash is dropped (and cut from the file, so that
    appending starts on a clean line); any other bad line stops with one sentence."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    rows, good_bytes = [], 0
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                row = json.loads(line)
                if not isinstance(row, dict) or "question_id" not in row or not isinstance(row.get("text"), str):
                    raise TypeError
                rows.append(row)
            except (json.JSONDecodeError, TypeError):
                if n == len(lines):
                    with open(path, "rb+") as f:
                        f.truncate(good_bytes)
                    break
                raise BenchmarkDataError(f"{path} line {n}: not a prediction "
                                         '({"question_id": ..., "text": ...})') from None
        good_bytes += len(line.encode("utf-8"))
    return rows


def index_rows(rows: list[dict], row_keys=default_row_keys) -> dict:
    """Every key a row can be found by (its layout's, and the earlier layout's) -> that row's answer text."""
    return {key: row["text"] for row in rows for key in row_keys(row)}


def lookup(answers: dict, question: Question) -> str | None:
    if question.key in answers:
        return answers[question.key]
    return answers.get(question.alias) if question.alias is not None else None


def read_predictions(path: str, questions: list[Question], row_keys=default_row_keys) -> dict:
    """question key -> answer text, for the questions that `path` answers (in LLaVA's layout or ours)."""
    answers = index_rows(read_rows(path), row_keys)
    found = {q.key: lookup(answers, q) for q in questions}
    return {k: v for k, v in found.items() if v is not None}


def prediction_row(q: Question, text: str, model_id: str) -> dict:
    return {"question_id": q.question_id, **({"round_id": q.extra["round_id"]} if "round_id" in q.extra else {}),
            "prompt": q.recorded_prompt, "text": text, **{k: v for k, v in q.extra.items() if k != "round_id"},
            "answer_id": f"{model_id}:{q.key if isinstance(q.key, str) else '/'.join(map(str, q.key))}",
            "model_id": model_id, "metadata": {}}


def write_in_order(path: str, questions: list[Question], row_keys=default_row_keys):
    """Rewrites a complete predictions file with one line per question in question order (atomically); lines
    that answer none of these questions (another split's, say) are kept after them."""
    rows = read_rows(path)
    by_key = {}
    for row in rows:
        for key in row_keys(row):
            by_key.setdefault(key, row)
    ordered, used = [], set()
    for q in questions:
        row = by_key.get(q.key) or (by_key.get(q.alias) if q.alias is not None else None)
        if row is not None and id(row) not in used:
            ordered.append(row)
            used.add(id(row))
    ordered += [row for row in rows if id(row) not in used]
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in ordered)


def answer_questions(model, questions: list[Question], path: str, batch_size: int = 16, max_new_tokens: int = 128,
                     model_id: str = "", progress: bool = True, row_keys=default_row_keys) -> dict:
    """Answers the questions not yet in `path` (greedy), appending one line each as they come; then writes the
    file in question order. Returns question key -> answer text."""
    from tqdm import tqdm  # on use: eval.py --help needs this module's names only

    answers = read_predictions(path, questions, row_keys)
    todo = sorted((q for q in questions if q.key not in answers), key=lambda q: -len(q.prompt))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f, tqdm(total=len(questions), initial=len(questions) - len(todo),
                                                      desc="answering", unit="q", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            conversations = [[{"role": "user", "content": f"{IMAGE_MARKER}\n{q.prompt}"}] for q in chunk]
            texts = model.answer(conversations, [[q.load_image()] for q in chunk], max_new_tokens=max_new_tokens)
            for q, text in zip(chunk, texts, strict=True):
                answers[q.key] = text
                f.write(json.dumps(prediction_row(q, text, model_id), ensure_ascii=False) + "\n")
            f.flush()
            bar.update(len(chunk))
    write_in_order(path, questions, row_keys)
    return answers
