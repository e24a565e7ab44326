"""dataset/: exact label masking, truncation, collation, per-epoch caption draws, DataLoader workers."""

import json

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from transformers import CLIPImageProcessor

from dataset import IGNORE_INDEX, VLMCollator, VLMDataset, encode_conversation
from demo.bases import byte_level_tokenizer
from model import IMAGE_MARKER, VLMProcessor
from visual.hf_tower import HFImageProcessor

N = 16  # image tokens per image
CONVERSATION = [
    {"role": "user", "content": f"{IMAGE_MARKER}\n图中出现了哪些颜色？"},
    {"role": "assistant", "content": "红色和蓝色"},
    {"role": "user", "content": "What shapes are in the image?"},
    {"role": "assistant", "content": "a red circle and a blue square"},
]
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def image_processor():
    return HFImageProcessor(CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}))


def qwen_processor(qwen_tokenizer, system_prompt="你是一位图像理解助手。"):
    return VLMProcessor(qwen_tokenizer, image_processor(), IMAGE_MARKER, N, system_prompt=system_prompt)


def hf_processor(template=None):
    tokenizer = byte_level_tokenizer()
    tokenizer.add_tokens(["<image>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<s>"],
                         special_tokens=True)
    tokenizer.bos_token = "<s>"
    if template:
        tokenizer.chat_template = template
    return VLMProcessor(tokenizer, image_processor(), "<image>", N)


def supervised_text(processor, input_ids, labels):
    kept = [i for i, label in zip(input_ids, labels, strict=True) if label != IGNORE_INDEX]
    return processor.tokenizer.decode(kept)


@pytest.mark.parametrize("make", ["qwen", "hf_chatml", "hf_llama3"])
def test_labels_are_exactly_the_replies_and_their_end_token(qwen_tokenizer, make):
    processor = {"qwen": lambda: qwen_processor(qwen_tokenizer), "hf_chatml": hf_processor,
                 "hf_llama3": lambda: hf_processor(LLAMA3_TEMPLATE)}[make]()
    input_ids, labels = encode_conversation(processor, CONVERSATION)
    assert len(input_ids) == len(labels)
    assert input_ids == processor.tokenizer.encode(processor.expand(processor.render(CONVERSATION)),
                                                   add_special_tokens=False)
    end = "<|eot_id|>" if make == "hf_llama3" else "<|im_end|>"
    assert supervised_text(processor, input_ids, labels) == f"红色和蓝色{end}a red circle and a blue square{end}"
    assert input_ids.count(processor.image_token_id) == N
    assert all(label == IGNORE_INDEX for i, label in zip(input_ids, labels, strict=True)
               if i == processor.image_token_id)
    # nothing of the system prompt, user turns or role headers is learned: every supervised run starts
    # right after an assistant header
    rendered_prefix = processor.render(CONVERSATION[:1], add_generation_prompt=True)
    first = labels.index(next(label for label in labels if label != IGNORE_INDEX))
    assert first == len(processor.tokenizer.encode(processor.expand(rendered_prefix), add_special_tokens=False))


def test_qwen_system_prompt_is_configurable_and_masked(qwen_tokenizer):
    processor = qwen_processor(qwen_tokenizer, system_prompt="你是一位图像理解助手。")
    input_ids, labels = encode_conversation(processor, CONVERSATION)
    text = qwen_tokenizer.decode(input_ids)
    assert text.startswith("<|im_start|>system\n你是一位图像理解助手。<|im_end|>\n<|im_start|>user\n")
    default = qwen_processor(qwen_tokenizer, system_prompt=None)
    assert "You are a helpful assistant." in qwen_tokenizer.decode(encode_conversation(default, CONVERSATION)[0])


@pytest.fixture
def data_files(tmp_path):
    paths = {}
    for color in ["red", "blue", "green"]:
        Image.new("RGB", (50, 40), color).save(tmp_path / f"{color}.png")
        paths[color] = {"path": str(tmp_path / f"{color}.png")}
    samples = [
        {"id": "a", "source": "s", "images": ["red"], "conversations": CONVERSATION[:2]},
        {"id": "b", "source": "s", "images": ["blue", "green"], "conversations": [
            {"role": "user", "content": f"{IMAGE_MARKER} vs {IMAGE_MARKER}?"}, {"role": "assistant", "content": "x"}]},
        {"id": "c", "source": "s", "images": [], "conversations": [
            {"role": "user", "content": "text only"}, {"role": "assistant", "content": "yes"}]},
        {"id": "d", "source": "t", "images": ["red"], "conversations": [
            {"role": "user", "content": f"{IMAGE_MARKER}caption?"},
            {"role": "assistant", "content": "one", "alternatives": ["one", "two", "three", "four", "five"]}]},
    ]
    (tmp_path / "image_map.json").write_text(json.dumps(paths))
    (tmp_path / "captions.json").write_text(json.dumps(samples, ensure_ascii=False))
    return str(tmp_path / "image_map.json"), str(tmp_path / "captions.json")


def test_collator_shapes(qwen_tokenizer, data_files):
    dataset = VLMDataset(*data_files, qwen_processor(qwen_tokenizer), max_length=512)
    collate = VLMCollator(qwen_tokenizer.pad_token_id)
    batch = collate([dataset[0], dataset[1], dataset[2]])
    lengths = [len(dataset[i]["input_ids"]) for i in range(3)]
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["pixel_values"].shape == (3, 3, 32, 32)  # 1 + 2 + 0 images, in order
    assert (batch["input_ids"] == qwen_processor(qwen_tokenizer).image_token_id).sum() == 3 * N
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    assert collate([dataset[2]])["pixel_values"] is None
    left = VLMCollator(qwen_tokenizer.pad_token_id, padding_side="left")([dataset[0], dataset[2]])
    assert left["attention_mask"][1, -1] == 1 and left["attention_mask"][1, 0] == 0


def test_truncation_never_splits_an_image_block(qwen_tokenizer, data_files, caplog):
    processor = qwen_processor(qwen_tokenizer)
    full = VLMDataset(*data_files, processor, max_length=4096)[0]
    image_end = max(i for i, t in enumerate(full["input_ids"].tolist()) if t == processor.image_token_id) + 1
    reply_start = int((full["labels"] != IGNORE_INDEX).nonzero()[0])
    cut = VLMDataset(*data_files, processor, max_length=reply_start + 2)  # the image and part of the reply
    item = cut[0]
    assert len(item["input_ids"]) == reply_start + 2
    assert torch.equal(item["input_ids"], full["input_ids"][: reply_start + 2])
    assert torch.equal(item["labels"], full["labels"][: reply_start + 2])

    inside = VLMDataset(*data_files, processor, max_length=image_end - 5)  # the block would be split
    item = inside[0]  # a and b hold images that do not fit: replaced by the next usable sample, c
    assert item["id"] == "c" and torch.equal(item["input_ids"], inside.encode(2)["input_ids"])
    assert [sample_id for sample_id, _ in item["skipped"]] == ["a", "b"]
    assert "an image block does not fit within max_length" in item["skipped"][0][1]
    assert "skipping sample a: an image block does not fit" in caplog.text
    batch = VLMCollator(0)([inside[0], inside[2]])
    assert batch["sample_ids"] == ["c", "c"] and len(batch["skipped"]) == 2


def test_caption_alternatives_are_drawn_per_epoch(qwen_tokenizer, data_files):
    dataset = VLMDataset(*data_files, qwen_processor(qwen_tokenizer))
    drawn = set()
    for epoch in range(12):
        dataset.set_epoch(epoch)
        drawn.add(dataset.messages(3)[1]["content"])
    assert len(drawn) >= 3 and drawn <= {"one", "two", "three", "four", "five"}
    dataset.set_epoch(4)
    assert dataset.messages(3) == dataset.messages(3)  # deterministic within an epoch


def test_images_decode_in_dataloader_workers(qwen_tokenizer, data_files):
    dataset = VLMDataset(*data_files, qwen_processor(qwen_tokenizer))
    loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=VLMCollator(qwen_tokenizer.pad_token_id))
    batches = list(loader)
    assert sum(b["input_ids"].shape[0] for b in batches) == 4
    assert sum(0 if b["pixel_values"] is None else b["pixel_values"].shape[0] for b in batches) == 4


def test_bad_data_files(qwen_tokenizer, data_files, tmp_path):
    image_map, captions = data_files
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(ValueError, match="holds no samples"):
        VLMDataset(image_map, str(tmp_path / "empty.json"), qwen_processor(qwen_tokenizer))
    (tmp_path / "other.json").write_text(json.dumps({"red": {"path": "x"}}))
    with pytest.raises(ValueError, match="uses image 'blue'"):
        VLMDataset(str(tmp_path / "other.json"), captions, qwen_processor(qwen_tokenizer))
