"""Caption datasets (AI Challenger, COCO captions) -> one user prompt and one assistant caption per sample.

The prompt comes from a fixed pool (Chinese for AI Challenger, English for COCO), drawn with a seed per
image, and the image marker goes before or after it. Every caption is kept: `captions: separate` (the
default) writes one sample per caption; `captions: alternatives` writes one sample per image whose
assistant turn carries all captions in `alternatives`, and the Dataset draws one per epoch.
"""

import random
from collections import defaultdict

from .records import DataError, RawSample

ZH_PROMPTS = ["描述一下这张图片。", "这幅图像描述了什么？", "请用一句话描述图中的内容。", "图片里有什么？",
              "简要描述这张图片。"]
EN_PROMPTS = ["Describe this image briefly.", "What is in this picture?", "Give a short caption for the image.",
              "Summarize the image in one sentence.", "What does this image show?"]


def caption_samples(key: str, image: str, captions: list[str], prompts: list[str], marker: str, mode: str,
                    seed: int) -> list[RawSample]:
    rng = random.Random(f"{seed}:{key}")  # str seeds are stable across runs and processes
    prompt = rng.choice(prompts)
    question = f"{marker}\n{prompt}" if rng.random() < 0.5 else f"{prompt}\n{marker}"
    user = {"role": "user", "content": question}
    if mode == "alternatives":
        reply = {"role": "assistant", "content": captions[0], "alternatives": captions}
        return [RawSample(key, [image], [user, reply])]
    return [RawSample(f"{key}#{i}", [image], [dict(user), {"role": "assistant", "content": c}])
            for i, c in enumerate(captions)]


def convert_ai_challenger(entries, file: str, marker: str, mode: str, seed: int) -> list[RawSample]:
    if not isinstance(entries, list):
        raise DataError(f"{file}: expected a JSON list of {{image_id, caption}} entries")
    samples = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "image_id" not in entry or not isinstance(entry.get("caption"), list):
            raise DataError(f"{file}: entry {i} lacks 'image_id' or a 'caption' list")
        # Chinese has no spaces between words, so stray spaces and newlines are simply removed
        captions = ["".join(str(c).split()) for c in entry["caption"]]
        captions = [c for c in captions if c]
        if captions:
            samples += caption_samples(entry["image_id"], entry["image_id"], captions, ZH_PROMPTS, marker, mode, seed)
    return samples


def convert_coco_captions(data, file: str, marker: str, mode: str, seed: int) -> list[RawSample]:
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise DataError(f"{file}: expected COCO captions with 'images' and 'annotations'")
    try:
        files = {img["id"]: img["file_name"] for img in data["images"]}
        by_image = defaultdict(list)
        for ann in data["annotations"]:
            by_image[ann["image_id"]].append((ann["id"], " ".join(str(ann["caption"]).split())))
    except (KeyError, TypeError) as e:
        raise DataError(f"{file}: an image or annotation entry lacks {e}") from None
    samples = []
    for image_id in sorted(by_image):
        if image_id not in files:
            raise DataError(f"{file}: annotation for image_id {image_id} has no entry in 'images'")
        captions = [c for _, c in sorted(by_image[image_id]) if c]
        samples += caption_samples(str(image_id), files[image_id], captions, EN_PROMPTS, marker, mode, seed)
    return samples
