"""VLMDataset: image_map.json + captions.json -> tokenised, label-masked samples with pixel values.

Images are decoded in __getitem__, i.e. in the DataLoader workers, never all up front. A sample that
cannot be used (its image went missing or is corrupt, or it does not fit max_length) is replaced by the
next usable one, deterministically, and named in the item's `skipped` list: the trainer counts those,
and a resumed run skips the same samples again.
"""

import json
import logging
import random

import torch
from torch.utils.data import Dataset

from visual import ImageLoadError, image_size, load_image

from .conversation import IGNORE_INDEX, encode_conversation

logger = logging.getLogger(__name__)
REPLACEMENT_TRIES = 16  # unusable samples in a row before the data is declared unavailable
REPLACEMENT_WINDOW = 64  # packing: how far after a bad sample to look for one that fits its row


class BadSample(ValueError):
    """This sample cannot be trained on; the message says why."""


class DataUnavailable(RuntimeError):
    """REPLACEMENT_TRIES samples in a row were unusable: the image folder is likely gone."""


class VLMDataset(Dataset):
    def __init__(self, image_map: str, captions: str, processor, max_length: int = 2048, seed: int = 0,
                 cache_images: bool = False):
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
        # cache_images: each image's processed pixels and size, kept by the process that first loads it (each
        # DataLoader worker has its own; persistent workers keep theirs across epochs), for data that fits in RAM
        self.cache = {} if cache_images else None
        self.seed = seed
        self.epoch = 0
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

    def messages(self, index: int, longest: bool = False) -> list[dict]:
        """The conversation, each caption alternative drawn for this epoch (or the longest, for a length bound)."""
        rng = random.Random(f"{self.seed}:{self.epoch}:{index}")

        def pick(m):
            if not m.get("alternatives"):
                return m["content"]
            if longest:
                tokens = self.processor.tokenizer.encode
                return max(m["alternatives"], key=lambda a: len(tokens(a, add_special_tokens=False)))
            return rng.choice(m["alternatives"])

        return [{"role": m["role"], "content": pick(m)} for m in self.samples[index]["conversations"]]

    def sizes_matter(self) -> bool:
        """Whether an image's token count depends on its size (anyres)."""
        return self.processor.images.aspect == "anyres"

    def token_length(self, index: int) -> int:
        """The sample's exact token count, image tokens included, before truncation (with caption alternatives,
        that of the longest): what packing plans with. With anyres the images' sizes are read from their headers;
        a file that cannot be read counts as no image here, and as a bad sample when it is loaded."""
        sizes = None
        if self.sizes_matter():
            sizes = []
            for key in self.samples[index]["images"]:
                try:
                    sizes.append(image_size(self.paths[key]))
                except ImageLoadError:
                    sizes.append((1, 1))
        return len(encode_conversation(self.processor, self.messages(index, longest=True), sizes)[0])

    def encode(self, index: int) -> dict:
        """One sample as tensors; BadSample when it cannot be used."""
        sample = self.samples[index]
        try:
            pixels, sizes = self.pixels(sample["images"])
        except ImageLoadError as e:
            raise BadSample(str(e)) from None
        input_ids, labels = encode_conversation(self.processor, self.messages(index), sizes)
        if len(input_ids) > self.max_length:
            if self.processor.image_token_id in input_ids[self.max_length:]:
                raise BadSample(f"an image block does not fit within max_length {self.max_length}")
            input_ids, labels = input_ids[: self.max_length], labels[: self.max_length]
        if all(label == IGNORE_INDEX for label in labels):
            raise BadSample(f"no reply token is left within max_length {self.max_length}")
        return {
            "id": sample["id"],
            "input_ids": torch.tensor(input_ids),
            "labels": torch.tensor(labels),
            "pixel_values": pixels,  # (tiles, 3, H, W): one a image, or anyres's base view and tiles
            "image_sizes": sizes,
        }

    def pixels(self, keys: list[str]) -> tuple[torch.Tensor | None, list[tuple[int, int]]]:
        """The images' pixels (tiles, 3, H, W), one after the other, and their (height, width)."""
        if not keys:
            return None, []
        if self.cache is None:
            images = [load_image(self.paths[key]) for key in keys]
            return self.processor.images(images)[0], [(image.height, image.width) for image in images]
        for key in keys:
            if key not in self.cache:
                image = load_image(self.paths[key])
                self.cache[key] = (self.processor.images([image])[0], (image.height, image.width))
        return torch.cat([self.cache[key][0] for key in keys]), [self.cache[key][1] for key in keys]

    def __getitem__(self, index: int) -> dict:
        """Sample `index`, or the next usable one after it; `skipped` holds (id, why) of those passed over."""
        return self.usable(index)

    def usable(self, index: int, fits=None) -> dict:
        """Sample `index`, else the next usable one after it for which `fits(i)` holds (packing: one that fits the
        row's room; only `skipped` when none of the next REPLACEMENT_WINDOW does). `skipped` holds (id, why) of the
        bad ones.
        REPLACEMENT_TRIES bad samples in a row mean the data is gone: DataUnavailable."""
        skipped = []
        for k in range(REPLACEMENT_WINDOW if fits else REPLACEMENT_TRIES):
            i = (index + k) % len(self.samples)
            if k and fits is not None and not fits(i):
                continue
            try:
                return {**self.encode(i), "skipped": skipped}
            except BadSample as e:
                logger.warning("skipping sample %s: %s", self.samples[i]["id"], e)
                skipped.append((self.samples[i]["id"], str(e)))
            if len(skipped) == REPLACEMENT_TRIES:
                raise DataUnavailable(f"{REPLACEMENT_TRIES} samples in a row could not be used (from {skipped[0][0]}: "
                                      f"{skipped[0][1]}); is the image folder there?")
        return {"skipped": skipped}  # packing: nothing within reach fits the row
