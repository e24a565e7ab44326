"""VLMDataset: image_map.json + captions.json -> tokenised, label-masked samples with pixel values.

Images are decoded in __getitem__, i.e. in the DataLoader workers, never all up front.
"""

import json
import logging
import random

import torch
from torch.utils.data import Dataset

from visual import load_image

from .conversation import IGNORE_INDEX, encode_conversation

logger = logging.getLogger(__name__)


class VLMDataset(Dataset):
    def __init__(self, image_map: str, captions: str, processor, max_length: int = 2048, seed: int = 0):
        with open(image_map, encoding="utf-8") as f:
            self.paths = {key: entry["path"] for key, entry in json.load(f).items()}
        with open(captions, encoding="utf-8") as f:
            self.samples = json.load(f)
        if not self.samples:
            raise ValueError(f"{captions} holds no samples")
        for sample in self.samples:
            unknown = [k for k in sample["images"] if k not in self.paths]
            if unknown:
                raise ValueError(f"sample {sample['id']} in {captions} uses image {unknown[0]!r}, "
                                 f"which {image_map} does not list")
        self.processor = processor
        self.max_length = max_length
        self.seed = seed
        self.epoch = 0
        self.dropped = 0  # in this process; each DataLoader worker counts its own
        # token counts estimated without tokenising everything at start-up (about 4 UTF-8 bytes a token):
        # good enough to group similar lengths into batches
        self.lengths = [
            sum(len(m["content"].encode()) for m in s["conversations"]) // 4
            + len(s["images"]) * processor.num_image_tokens + 8 * len(s["conversations"])
            for s in self.samples
        ]

    def __len__(self):
        return len(self.samples)

    def set_epoch(self, epoch: int):
        """Caption alternatives are drawn anew each epoch."""
        self.epoch = epoch

    def messages(self, index: int) -> list[dict]:
        rng = random.Random(f"{self.seed}:{self.epoch}:{index}")
        return [{"role": m["role"], "content": rng.choice(m["alternatives"]) if m.get("alternatives") else m["content"]}
                for m in self.samples[index]["conversations"]]

    def __getitem__(self, index: int) -> dict | None:
        sample = self.samples[index]
        input_ids, labels = encode_conversation(self.processor, self.messages(index))
        if len(input_ids) > self.max_length:
            if self.processor.image_token_id in input_ids[self.max_length:]:
                return self._drop(sample, "an image block does not fit")
            input_ids, labels = input_ids[: self.max_length], labels[: self.max_length]
        if all(label == IGNORE_INDEX for label in labels):
            return self._drop(sample, "no reply token is left")
        images = [load_image(self.paths[key]) for key in sample["images"]]
        return {
            "input_ids": torch.tensor(input_ids),
            "labels": torch.tensor(labels),
            "pixel_values": self.processor.image_processor(images) if images else None,
        }

    def _drop(self, sample, why: str):
        self.dropped += 1
        logger.warning("dropping sample %s: %s within max_length %d (%d dropped so far in this process)",
                       sample["id"], why, self.max_length, self.dropped)
        return None
