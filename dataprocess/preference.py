"""Post-training sets -> samples in our schema (dataset/preference.py, dataset/prompts.py):

- rlaif_v: RLAIF-V (openbmb/RLAIF-V-Dataset) and sets of its layout: {"image", "question", "chosen", "rejected"} per
  row, in JSON, JSON Lines or the published Parquet files. `image` is a path relative to image_dir, or (Parquet) the
  image itself ({"bytes": ...}), which is written once into image_dir/<file stem>/ as PNG.
- llamafactory_preference: LLaMA-Factory's multimodal preference layout, sharegpt style ({"conversations": [{"from":
  "human", "value": "<image>..."}], "chosen": {"from": "gpt", "value": ...}, "rejected": {...}, "images": [...]})
  or alpaca style ({"instruction", "input", "chosen", "rejected", "images"}).
- r1v: R1-V / VLM-R1 prompts with a gold answer: {"image", "problem", "solution"}.

A pair becomes the conversation with the chosen answer as its last assistant turn and `rejected` beside it; a
prompt, the conversation with the gold answer as its last assistant turn. A pair whose two answers are the same is
refused, naming it.
"""

import io
import json
import os

from .llava import LLAVA_IMAGE, ROLES
from .records import DataError, RawSample


def read_rows(path: str, image_dir: str) -> list[dict]:
    """The rows of a JSON list, a JSON Lines file or a Parquet file (its embedded images written to image_dir)."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        folder = os.path.join(image_dir, os.path.splitext(os.path.basename(path))[0])
        for i, row in enumerate(rows):
            image = row.get("image")
            if isinstance(image, dict) and image.get("bytes"):
                from PIL import Image

                name = os.path.join(os.path.basename(folder), f"{row.get('idx', i)}.png")
                target = os.path.join(image_dir, name)
                if not os.path.exists(target):
                    os.makedirs(folder, exist_ok=True)
                    Image.open(io.BytesIO(image["bytes"])).convert("RGB").save(target + ".partial.png")
                    os.replace(target + ".partial.png", target)
                row["image"] = name
        return rows
    try:
        with open(path, encoding="utf-8") as f:
            if path.endswith(".jsonl"):
                return [json.loads(line) for line in f if line.strip()]
            rows = json.load(f)
    except FileNotFoundError:
        raise DataError(f"annotation file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path} line {e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of rows")
    return rows


def image_path(image) -> str | None:
    return image.get("path") if isinstance(image, dict) else image


def checked_pair(where: str, chosen, rejected) -> tuple[str, str]:
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise DataError(f"{where}: 'chosen' and 'rejected' must both be text")
    if chosen.strip() == rejected.strip():
        raise DataError(f"{where}: its chosen and rejected answers are the same")
    return chosen, rejected


def convert_rlaif_v(path: str, image_dir: str, marker: str) -> list[RawSample]:
    samples = []
    for i, row in enumerate(read_rows(path, image_dir)):
        where = f"{path}: row {i}"
        if not isinstance(row, dict) or not {"image", "question", "chosen", "rejected"} <= set(row):
            raise DataError(f"{where} lacks 'image', 'question', 'chosen' or 'rejected'")
        chosen, rejected = checked_pair(where, row["chosen"], row["rejected"])
        question = row["question"].replace(LLAVA_IMAGE, "")
        samples.append(RawSample(str(row.get("idx", row.get("id", i))), [image_path(row["image"])], [
            {"role": "user", "content": f"{marker}\n{question}"},
            {"role": "assistant", "content": chosen, "rejected": rejected}]))
    return samples


def convert_llamafactory_preference(path: str, image_dir: str, marker: str) -> list[RawSample]:
    samples = []
    for i, row in enumerate(read_rows(path, image_dir)):
        where = f"{path}: row {i}"
        if not isinstance(row, dict) or not {"chosen", "rejected"} <= set(row):
            raise DataError(f"{where} lacks 'chosen' or 'rejected'")
        if "conversations" in row:  # sharegpt
            turns = [{"role": ROLES.get(t.get("from"), t.get("from")), "content": t.get("value", "")}
                     for t in row["conversations"]]
            pick = lambda x: x.get("value") if isinstance(x, dict) else x  # noqa: E731
            chosen, rejected = pick(row["chosen"]), pick(row["rejected"])
        else:  # alpaca
            prompt = "\n".join(p for p in (row.get("instruction", ""), row.get("input", "")) if p)
            turns, chosen, rejected = [{"role": "user", "content": prompt}], row["chosen"], row["rejected"]
        if not turns or any(t["role"] not in ("user", "assistant", "system") for t in turns) or \
                turns[-1]["role"] != "user":
            raise DataError(f"{where}: its turns must be human/gpt/system, ending with the human's")
        chosen, rejected = checked_pair(where, chosen, rejected)
        images = [image_path(x) for x in row.get("images", [])]
        for turn in turns:
            turn["content"] = turn["content"].replace(LLAVA_IMAGE, marker)
        n_markers = sum(t["content"].count(marker) for t in turns)
        if n_markers == 0 and len(images) == 1:
            turns[0]["content"] = f"{marker}\n{turns[0]['content']}"
        elif n_markers != len(images):
            raise DataError(f"{where} has {n_markers} <image> tokens for {len(images)} images")
        samples.append(RawSample(str(row.get("id", i)), images, [
            *turns, {"role": "assistant", "content": chosen, "rejected": rejected}]))
    return samples


def convert_r1v(path: str, image_dir: str, marker: str) -> list[RawSample]:
    samples = []
    for i, row in enumerate(read_rows(path, image_dir)):
        where = f"{path}: row {i}"
        if not isinstance(row, dict) or not {"image", "problem", "solution"} <= set(row):
            raise DataError(f"{where} lacks 'image', 'problem' or 'solution'")
        if not str(row["solution"]).strip():
            raise DataError(f"{where} has no gold answer (an empty 'solution')")
        samples.append(RawSample(str(row.get("id", i)), [image_path(row["image"])], [
            {"role": "user", "content": f"{marker}\n{row['problem'].replace(LLAVA_IMAGE, '')}"},
            {"role": "assistant", "content": str(row["solution"])}]))
    return samples
