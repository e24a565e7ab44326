"""process_image.py: converters, merge, validation, report, determinism, malformed input."""

import json

import pytest
import yaml
from PIL import Image

import process_image
from common import IMAGE_MARKER
from dataprocess.pipeline import load_config, process
from dataprocess.records import DataError


def write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False))
    return str(path)


@pytest.fixture
def datasets(tmp_path):
    """Tiny files in each public format, with the awkward cases the real ones have."""
    coco, ai = tmp_path / "coco" / "train2017", tmp_path / "ai" / "images"
    coco.mkdir(parents=True)
    ai.mkdir(parents=True)
    for i, color in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200)], start=1):
        Image.new("RGB", (64, 48), color).save(coco / f"{i:012d}.jpg")
        Image.new("RGB", (64, 48), color).save(ai / f"hash{i}.jpg")
    (coco / "000000000009.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")  # corrupt
    (ai / "hash9.jpg").write_bytes(b"")  # corrupt (empty)
    detail = [
        {"id": "000000000001", "image": "000000000001.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat do you see happening in this image?"},
            {"from": "gpt", "value": "A red field."}]},
        {"id": "000000000002", "image": "000000000002.jpg", "conversations": [
            {"from": "human", "value": "What colour dominates?\n<image>"},
            {"from": "gpt", "value": "Green."},
            {"from": "human", "value": "Anything else?"},
            {"from": "gpt", "value": "No."}]},
        {"id": "missing", "image": "000000000404.jpg", "conversations": [
            {"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "?"}]},
        {"id": "text-only", "conversations": [
            {"from": "human", "value": "What is 2+2?"}, {"from": "gpt", "value": "4"}]},
    ]
    complex_ = [
        {"id": "000000000001", "image": "000000000001.jpg", "conversations": [
            {"from": "human", "value": "Why is it red?\n<image>"}, {"from": "gpt", "value": "Paint."}]},
        {"id": "corrupt", "image": "000000000009.jpg", "conversations": [
            {"from": "human", "value": "<image>\nHm?"}, {"from": "gpt", "value": "Hm."}]},
    ]
    ai_captions = [
        {"url": "http://x/1", "image_id": "hash1.jpg", "caption": [f"一个红色的\n场景 {i}" for i in range(5)]},
        {"url": "http://x/2", "image_id": "hash2.jpg", "caption": [f"绿色 {i}" for i in range(5)]},
        {"url": "http://x/9", "image_id": "hash9.jpg", "caption": ["坏图"] * 5},
    ]
    coco_captions = {
        "images": [{"id": 3, "file_name": "000000000003.jpg"}, {"id": 1, "file_name": "000000000001.jpg"}],
        "annotations": [{"image_id": 3, "id": 100 + i, "caption": f" A blue  picture {i}.\n"} for i in range(5)]
        + [{"image_id": 1, "id": 200 + i, "caption": f"Red {i}."} for i in range(5)],
    }
    sources = [
        {"type": "llava", "annotations": write_json(tmp_path / "llava" / "detail_23k.json", detail),
         "image_dir": str(coco)},
        {"type": "llava", "annotations": write_json(tmp_path / "llava" / "complex_reasoning_77k.json", complex_),
         "image_dir": str(coco)},
        {"type": "ai_challenger", "annotations": write_json(tmp_path / "ai" / "caption.json", ai_captions),
         "image_dir": str(ai)},
        {"type": "coco_captions", "annotations": write_json(tmp_path / "coco" / "captions.json", coco_captions),
         "image_dir": str(coco)},
    ]
    config = {"output_dir": str(tmp_path / "out"), "sources": sources, "workers": 2}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def outputs(config_path):
    out = load_config(str(config_path)).output_dir
    return tuple(json.load(open(f"{out}/{name}.json")) for name in ("image_map", "captions", "process_report"))


def test_counts_schema_and_report(datasets):
    assert process_image.main(["--config", str(datasets), "--no_progress"]) == 0
    image_map, captions, report = outputs(datasets)
    assert report["llava:detail_23k"] | {"examples": None, "annotations": None} == {
        "samples_read": 4, "samples_written": 3, "samples_dropped": 1, "images_missing": 1, "images_corrupt": 0,
        "examples": None, "annotations": None}
    assert report["llava:detail_23k"]["examples"]["dropped"] == ["llava:detail_23k/missing"]
    assert report["llava:detail_23k"]["examples"]["missing"][0].endswith("000000000404.jpg")
    assert report["llava:complex_reasoning_77k"]["images_corrupt"] == 1
    assert report["ai_challenger:caption"]["samples_written"] == 10  # 5 captions x 2 good images
    assert report["ai_challenger:caption"]["images_corrupt"] == 1
    assert report["coco_captions:captions"]["samples_written"] == 10
    assert len(captions) == 3 + 1 + 10 + 10

    for sample in captions:
        assert set(sample) == {"id", "source", "images", "conversations"}
        assert all(set(t) == {"role", "content"} and t["role"] in ("user", "assistant", "system")
                   for t in sample["conversations"])
        assert sum(t["content"].count(IMAGE_MARKER) for t in sample["conversations"]) == len(sample["images"])
        assert all(key in image_map for key in sample["images"])
    assert len({s["id"] for s in captions}) == len(captions)
    # the COCO image used by both LLaVA files and by COCO captions is one entry, and every sample survives
    shared = [s for s in captions if s["images"] == ["train2017/000000000001.jpg"]]
    assert len(shared) == 2 + 5
    assert sum(1 for v in image_map.values() if v["path"].endswith("000000000001.jpg")) == 1

    by_id = {s["id"]: s for s in captions}
    multi = by_id["llava:detail_23k/000000000002"]["conversations"]
    assert [t["role"] for t in multi] == ["user", "assistant", "user", "assistant"]
    assert multi[0]["content"] == f"What colour dominates?\n{IMAGE_MARKER}"  # marker kept at the end
    assert by_id["llava:detail_23k/000000000001"]["conversations"][0]["content"].startswith(IMAGE_MARKER)
    assert by_id["llava:detail_23k/text-only"]["images"] == []
    ai = [s for s in captions if s["source"] == "ai_challenger:caption" and s["images"][0].endswith("hash1.jpg")]
    assert sorted(s["conversations"][1]["content"] for s in ai) == [f"一个红色的场景{i}" for i in range(5)]
    coco = [s["conversations"][1]["content"] for s in captions if s["source"] == "coco_captions:captions"]
    assert "A blue picture 0." in coco


def test_caption_alternatives_mode(datasets):
    config = yaml.safe_load(datasets.read_text())
    for source in config["sources"]:
        source["captions"] = "alternatives"
    datasets.write_text(yaml.safe_dump(config))
    process(load_config(str(datasets)), progress=False)
    _, captions, _ = outputs(datasets)
    coco = [s for s in captions if s["source"] == "coco_captions:captions"]
    assert len(coco) == 2
    reply = coco[0]["conversations"][1]
    assert len(reply["alternatives"]) == 5 and reply["content"] == reply["alternatives"][0]


def test_runs_are_deterministic_and_atomic(datasets, tmp_path):
    process(load_config(str(datasets)), progress=False)
    out = tmp_path / "out"
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    process(load_config(str(datasets)), progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    assert sorted(first) == ["captions.json", "image_map.json", "process_report.json"]  # no temporary files


def test_malformed_annotations_stop_with_a_sentence(datasets, tmp_path, capsys):
    config = yaml.safe_load(datasets.read_text())
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("[{oops")
    config["sources"][0]["annotations"] = str(bad_json)
    datasets.write_text(yaml.safe_dump(config))
    assert process_image.main(["--config", str(datasets)]) == 2
    assert "bad.json line 1: not valid JSON" in capsys.readouterr().err

    config["sources"][0]["annotations"] = write_json(tmp_path / "nokey.json", [{"id": "x1", "image": "a.jpg"}])
    datasets.write_text(yaml.safe_dump(config))
    with pytest.raises(DataError, match=r"nokey.json: entry 0 \(id x1\) lacks 'id' or 'conversations'"):
        process(load_config(str(datasets)), progress=False)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_bad_config(tmp_path):
    with pytest.raises(DataError, match="config file not found"):
        load_config(str(tmp_path / "none.yaml"))
    (tmp_path / "c.yaml").write_text(
        "output_dir: x\nsources:\n  - type: flickr\n    annotations: a\n    image_dir: b\n")
    with pytest.raises(DataError, match="source type 'flickr'"):
        load_config(str(tmp_path / "c.yaml"))


def test_shipped_config_is_valid_and_has_no_home_directory():
    text = open("dataprocess/config.yaml").read()
    assert "/home/" not in text and "~" not in text
    config = load_config("dataprocess/config.yaml")
    assert [s.type for s in config.sources] == ["ai_challenger", "llava", "llava", "coco_captions"]


def test_image_check_pool_is_sized_to_the_work():
    """A 16-process pool took 26 s for 220 images on a GPU machine: small sets are checked in-process."""
    from dataprocess.pipeline import pool_size

    assert pool_size(220, 16) == 1 and pool_size(220, None) == 1
    assert pool_size(5000, 16) == 3 and pool_size(118_000, 16) == 16 and pool_size(118_000, 2) == 2
    assert pool_size(0, None) == 1


def test_interleaved_llava_entries_keep_every_image_in_order():
    """LLaVA-Interleave / OneVision entries: "image" is a list, one <image> per image, anywhere in any turn."""
    from dataprocess.llava import convert_llava

    entry = {"id": "x", "image": ["a.jpg", "b.jpg", "c.jpg"], "conversations": [
        {"from": "human", "value": "Compare <image> and <image>."}, {"from": "gpt", "value": "The first is red."},
        {"from": "human", "value": "And this one? <image>"}, {"from": "gpt", "value": "Blue."}]}
    (sample,) = convert_llava([entry], "interleave.json", IMAGE_MARKER)
    assert sample.images == ["a.jpg", "b.jpg", "c.jpg"]
    text = "".join(t["content"] for t in sample.conversations)
    assert text.count(IMAGE_MARKER) == 3 and sample.conversations[2]["content"] == f"And this one? {IMAGE_MARKER}"
    with pytest.raises(DataError, match="has 2 <image> tokens for 3 images"):
        convert_llava([{**entry, "conversations": entry["conversations"][:2]}], "interleave.json", IMAGE_MARKER)
