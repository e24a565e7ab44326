"""What every benchmark reader produces, and the one error its readers raise."""

import base64
import io
import json
from dataclasses import dataclass, field

from PIL import Image

import common
from visual import load_image


class BenchmarkDataError(ValueError):
    """A benchmark file does not have the layout its authors publish; the message names file and line."""


@dataclass
class Question:
    question_id: str  # unique within the run; the key of the predictions file
    prompt: str  # the text after the image, as the model is asked
    image: str | bytes  # a file path, or the image's encoded bytes (MMBench ships base64 in its TSV)
    truth: dict = field(default_factory=dict)  # what the scorer needs: the answer(s), category, ...

    def load_image(self) -> Image.Image:
        if isinstance(self.image, bytes):
            return load_image(io.BytesIO(self.image))
        return load_image(self.image)


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
