"""What every benchmark reader produces, and the one error its readers raise."""

import base64
import io
import json
from dataclasses import dataclass, field

import common
import visual


class BenchmarkDataError(ValueError):
    """A benchmark file does not have the layout its authors publish; the message names file and line."""


@dataclass
class Question:
    """One question as asked, and how its line in a predictions file is written and found again.

    The line is written as LLaVA's model_vqa*.py scripts write it: `question_id` and `prompt` hold LLaVA's
    values (its scorers key some benchmarks by them: TextVQA by image id + question text, MME by image path +
    question), `extra` any further fields LLaVA writes (MMBench's round_id and options). `key` finds the line
    again; `alias` is the key of this project's earlier layout, still read."""

    question_id: str | int  # the predictions file's question_id (LLaVA's value; not always unique)
    prompt: str  # the text after the image, as the model is asked
    image: str | bytes  # a file path, or the image's encoded bytes (MMBench ships base64 in its TSV)
    truth: dict = field(default_factory=dict)  # what the scorer needs: the answer(s), category, ...
    key: tuple | str | None = None  # unique within the run; default: str(question_id)
    alias: tuple | str | None = None
    recorded_prompt: str | None = None  # the file's "prompt" where LLaVA writes other than `prompt`
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.key is None:
            self.key = str(self.question_id)
        if self.recorded_prompt is None:
            self.recorded_prompt = self.prompt

    def load_image(self):
        """The question's image as an RGB PIL image."""
        if isinstance(self.image, bytes):
            return visual.load_image(io.BytesIO(self.image))
        return visual.load_image(self.image)


def read_json(path: str):
    return common.read_json(path, BenchmarkDataError, "benchmark file")


def read_jsonl(path: str) -> list[tuple[int, dict]]:
    """(line number, object) per non-empty line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = list(enumerate(f, 1))
    except FileNotFoundError:
        raise BenchmarkDataError(f"benchmark file not found: {path}") from None
    rows = []
    for n, line in lines:
        if line.strip():
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise BenchmarkDataError(f"{path} line {n}: not valid JSON ({e.msg})") from None
    return rows


def need(row: dict, keys: tuple[str, ...], path: str, n: int):
    missing = [k for k in keys if k not in row or row[k] is None]
    if missing:
        raise BenchmarkDataError(f"{path} line {n}: missing {', '.join(missing)}")


def decode_base64_image(text: str, path: str, n: int) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise BenchmarkDataError(f"{path} line {n}: the image column is not base64") from None
