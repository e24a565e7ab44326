"""VLMDataset: image_map.json + captions.json (through their sample store, common/store.py) or a mixture of such
sources (dataset/mixture.py) -> tokenised, label-masked samples with pixel values.

Images are decoded in __getitem__, i.e. in the DataLoader workers, never all up front. A sample that
cannot be used (its image went missing or is corrupt, or it does not fit max_length) is replaced by the
next usable one, deterministically, and named in the item's `skipped` list: the trainer counts those,
and a resumed run skips the same samples again.
"""

import logging
import random

import torch
from torch.utils.data import Dataset

from common.images import MarkerMismatch
from common.store import open_samples
from visual import ImageLoadError, image_size, load_image
from visual.video import is_video, load_video, sample_indices, video_info

from .conversation import IGNORE_INDEX, encode_conversation

logger = logging.getLogger(__name__)
REPLACEMENT_TRIES = 16  # unusable samples in a row before the data is declared unavailable
REPLACEMENT_WINDOW = 64  # packing: how far after a bad sample to look for one that fits its row


class BadSample(ValueError):
    """This sample cannot be trained on; the message says why."""


class DataUnavailable(RuntimeError):
    """REPLACEMENT_TRIES samples in a row were unusable: the image folder is likely gone."""


class VLMDataset(Dataset):
    def __init__(self, image_map: str | None = None, captions: str | None = None, processor=None,
                 max_length: int = 2048, seed: int = 0, cache_images: bool = False, store: bool = True,
                 samples=None, progress: bool = True):
        """The samples of image_map + captions (through their sample store, built when missing or stale, unless
        store=False), or those of `samples` (a Mixture, or any of common/store.py's sources)."""
        self.samples = samples if samples is not None else open_samples(image_map, captions, store, progress)
        self.processor = processor
        self.max_length = max_length
        # cache_images: each image's processed pixels and size, kept by the process that first loads it (each
        # DataLoader worker has its own; persistent workers keep theirs across epochs), for data that fits in RAM
        self.cache = {} if cache_images else None
        self.seed = seed
        self.epoch = 0
        self.progress = progress
        self._lengths = None

    @property
    def lengths(self):
        """Each sample's exact token count (token_length), computed once per store and processor and cached there:
        what packing plans with and length grouping batches by."""
        if self._lengths is None:
            self._lengths = self.samples.lengths(self.processor.fingerprint(), self.record_length, self.progress)
        return self._lengths

    def __len__(self):
        return len(self.samples)

    def set_epoch(self, epoch: int):
        """Caption alternatives are drawn anew each epoch."""
        self.epoch = epoch

    def messages(self, index: int, sample: dict | None = None) -> list[dict]:
        """Sample `index`'s conversation, each caption alternative drawn for this epoch; `sample`: its record, when
        the caller has read it already."""
        sample = sample if sample is not None else self.samples[index]
        return self.pick(sample["conversations"], random.Random(f"{self.seed}:{self.epoch}:{index}"))

    def pick(self, conversations: list[dict], rng: random.Random, longest: bool = False) -> list[dict]:
        """The conversation, each caption alternative drawn by `rng`, or the longest, for a length bound."""
        def one(m):
            if not m.get("alternatives"):
                return m["content"]
            if longest:
                tokens = self.processor.tokenizer.encode
                return max(m["alternatives"], key=lambda a: len(tokens(a, add_special_tokens=False)))
            return rng.choice(m["alternatives"])

        return [{"role": m["role"], "content": one(m)} for m in conversations]

    def sizes_matter(self, paths: list[str] = ()) -> bool:
        """Whether the token counts of these visuals depend on their sizes (anyres, native) or frame counts (videos)."""
        return self.processor.images.variable or any(is_video(path) for path in paths)

    def video_sampling(self, path: str):
        """The model's frame sampling (model/video.py's VideoInputs) for video `path`; ImageLoadError (a bad sample)
        when the model takes no videos."""
        videos = self.processor.images.videos
        if videos is None:
            raise ImageLoadError(f"{path} is a video, and this model was built without videos")
        return videos

    def shape(self, path: str) -> tuple:
        """(height, width) of an image, (height, width, frames sampled) of a video, from the file's header."""
        if not is_video(path):
            return image_size(path)
        info, videos = video_info(path), self.video_sampling(path)
        return info.height, info.width, len(sample_indices(info.frames, videos.frames, videos.fps, info.fps))

    def token_length(self, index: int) -> int:
        """The sample's exact token count, image tokens included, before truncation (with caption alternatives,
        that of the longest)."""
        return self.record_length(self.samples[index], self.samples.paths(index))

    def record_length(self, sample: dict, paths: list[str]) -> int:
        """token_length of a sample record. With anyres the images' sizes are read from their headers; a file that
        cannot be read counts as no image here, and as a bad sample when it is loaded."""
        sizes = None
        if self.sizes_matter(paths):
            sizes = []
            for path in paths:
                try:
                    sizes.append(self.shape(path))
                except ImageLoadError:
                    sizes.append((1, 1, 1) if is_video(path) else (1, 1))
            sizes = self.processor.images.rows(sizes)
        messages = self.pick(sample["conversations"], random.Random(0), longest=True)
        return len(encode_conversation(self.processor, messages, sizes)[0])

    def encode(self, index: int) -> dict:
        """One sample as tensors; BadSample when it cannot be used."""
        sample = self.samples[index]
        pixels, sizes = self.images_of(index)
        try:
            input_ids, labels = encode_conversation(self.processor, self.messages(index, sample), sizes)
        except MarkerMismatch as e:
            raise BadSample(str(e)) from None
        if len(input_ids) > self.max_length:
            if set(input_ids[self.max_length:]) & self.processor.visual_token_ids:
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

    def images_of(self, index: int) -> tuple[torch.Tensor | None, list[tuple[int, int]]]:
        """Sample `index`'s pixels and image sizes (see pixels); BadSample when an image cannot be used."""
        try:
            return self.pixels(self.samples.paths(index))
        except ImageLoadError as e:
            raise BadSample(str(e)) from None

    def load(self, path: str):
        """An image (PIL) or a video's sampled frames (visual/video.py), by the path."""
        if not is_video(path):
            return load_image(path)
        videos = self.video_sampling(path)
        return load_video(path, videos.frames, videos.fps)

    def pixels(self, paths: list[str]) -> tuple[torch.Tensor | None, list[tuple]]:
        """The visuals' pixels (views, 3, H, W), one after the other, and their rows (ImageInputs: (height, width),
        or (height, width, frames) for a video)."""
        if not paths:
            return None, []
        if self.cache is None or len(paths) > 1 and self.processor.images.max_tiles is not None:
            return self.processor.images([self.load(path) for path in paths])  # anyres_max: the rows of the sample
        for path in paths:
            if path not in self.cache:
                self.cache[path] = self.processor.images([self.load(path)])
        return torch.cat([self.cache[path][0] for path in paths]), [self.cache[path][1][0] for path in paths]

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
