"""process_image.py's post-training converters (RLAIF-V with embedded images in Parquet, LLaMA-Factory's preference
layout, R1-V) -> captions.json that DPO's and GRPO's datasets read; bad pairs refused with one sentence."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from common import IMAGE_MARKER
from dataprocess.pipeline import ProcessConfig, SourceConfig, process
from dataprocess.records import DataError
from dataset.preference import check_pairs
from dataset.prompts import check_prompts


def png(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_converters_write_pairs_and_prompts(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (16, 16), "red").save(images / "red.png")
    pq.write_table(pa.Table.from_pylist([
        {"idx": 7, "image": {"bytes": png("blue"), "path": None}, "question": "What colour?", "chosen": "blue",
         "rejected": "red"}]), tmp_path / "rlaif.parquet")
    (tmp_path / "lf.json").write_text(json.dumps([
        {"conversations": [{"from": "human", "value": "<image>Which colour?"}], "chosen": {"from": "gpt",
         "value": "red"}, "rejected": {"from": "gpt", "value": "green"}, "images": ["red.png"]},
        {"instruction": "Name the colour.", "input": "", "chosen": "red", "rejected": "a cat", "images": ["red.png"]}]))
    (tmp_path / "r1v.jsonl").write_text(json.dumps({"image": "red.png", "problem": "How many squares?",
                                                    "solution": "<answer> 1 </answer>"}) + "\n")
    out = tmp_path / "out"
    sources = [SourceConfig("rlaif_v", str(tmp_path / "rlaif.parquet"), str(images), name="rlaif"),
               SourceConfig("llamafactory_preference", str(tmp_path / "lf.json"), str(images), name="lf"),
               SourceConfig("r1v", str(tmp_path / "r1v.jsonl"), str(images), name="r1v")]
    report = process(ProcessConfig(str(out), sources, workers=1), progress=False)
    assert all(r["samples_dropped"] == 0 for r in report.values())
    samples = json.load(open(out / "captions.json"))
    by_source = {s["source"]: [x for x in samples if x["source"] == s["source"]] for s in samples}
    pairs = by_source["rlaif"] + by_source["lf"]
    assert [s["conversations"][-1]["rejected"] for s in pairs] == ["red", "green", "a cat"]
    assert pairs[0]["conversations"][0]["content"] == f"{IMAGE_MARKER}\nWhat colour?"
    assert (images / "rlaif" / "7.png").exists()  # the Parquet's image, written once beside the others
    assert by_source["lf"][1]["conversations"][0]["content"] == f"{IMAGE_MARKER}\nName the colour."
    check_pairs(pairs, "captions.json")
    check_prompts(by_source["r1v"], "captions.json")
    with pytest.raises(ValueError, match="is not a preference pair"):
        check_pairs(by_source["r1v"], "captions.json")


def test_a_pair_with_one_answer_twice_is_refused(tmp_path):
    (tmp_path / "same.json").write_text(json.dumps([{"image": "x.png", "question": "q", "chosen": "A ",
                                                     "rejected": "A"}]))
    config = ProcessConfig(str(tmp_path / "out"), [SourceConfig("rlaif_v", str(tmp_path / "same.json"),
                                                                str(tmp_path))], workers=1)
    with pytest.raises(DataError, match="row 0: its chosen and rejected answers are the same"):
        process(config, progress=False)
    assert not (tmp_path / "out").exists()  # nothing written
