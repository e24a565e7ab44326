"""VLMProcessor: chat template, image-token expansion and pixel values, shared by training and inference."""

import hashlib
import json
import re
from functools import cached_property

import torch

from common import IMAGE_MARKER, VIDEO_MARKER
from common.images import MarkerMismatch, size_rows
from qwen.tokenization_qwen import CHATML_TEMPLATE

from .anyres import ImageInputs

MARKERS = re.compile(f"({re.escape(IMAGE_MARKER)}|{re.escape(VIDEO_MARKER)})")


class VLMProcessor:
    """Each IMAGE_MARKER in a text becomes as many copies of the model's image token as that image gives features
    (N, or with anyres a count that depends on the image's size: anyres.py), so the model can write one feature
    vector per position and labels, masks and positions never shift."""

    def __init__(self, tokenizer, image_processor, image_token: str, num_image_tokens: int,
                 chat_template: str | None = None, system_prompt: str | None = None,
                 image_inputs: ImageInputs | None = None, video_token: str | None = None):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_token = image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.video_token = video_token  # None: the model takes no videos
        self.video_token_id = None if video_token is None else tokenizer.convert_tokens_to_ids(video_token)
        self.visual_token_ids = {self.image_token_id} | ({self.video_token_id} if video_token else set())
        self.num_image_tokens = num_image_tokens
        self.chat_template = chat_template or tokenizer.chat_template or CHATML_TEMPLATE
        self.system_prompt = system_prompt
        self.images = image_inputs or ImageInputs(image_processor, "square", num_image_tokens)

    def markers(self, text: str) -> str:
        """The text with the model's own spellings of the image and video tokens turned into our markers."""
        if self.image_token != IMAGE_MARKER:
            text = text.replace(self.image_token, IMAGE_MARKER)
        if self.video_token and self.video_token != VIDEO_MARKER:
            text = text.replace(self.video_token, VIDEO_MARKER)
        return text

    def count_markers(self, text: str) -> int:
        """Image and video markers (ours or the model's spellings) in a text."""
        text = self.markers(text)
        return text.count(IMAGE_MARKER) + text.count(VIDEO_MARKER)

    def expand(self, text: str, image_sizes: list | None = None) -> str:
        """Each marker (ours or the model's own spelling) -> its image's or video's tokens; the rows of the text's
        visuals, in order (ImageInputs: (height, width), or (height, width, frames) for a video), are needed where the
        count depends on them."""
        pieces = MARKERS.split(self.markers(text))
        if len(pieces) == 1:
            return text
        counts = self.image_counts(pieces[1::2], image_sizes)
        tokens = {IMAGE_MARKER: self.image_token, VIDEO_MARKER: self.video_token}
        return pieces[0] + "".join(tokens[marker] * n + piece
                                   for marker, n, piece in zip(pieces[1::2], counts, pieces[2::2], strict=True))

    def image_counts(self, markers: list[str], image_sizes: list | None = None) -> list[int]:
        """The tokens of each of a text's visuals, given its markers in order."""
        if VIDEO_MARKER in markers and self.video_token is None:
            raise ValueError("the text holds a video marker, but this model was built without videos (train it on "
                             "data that holds videos)")
        if not self.images.variable and VIDEO_MARKER not in markers:
            return [self.num_image_tokens] * len(markers)
        if image_sizes is None or len(image_sizes) != len(markers):
            given = 0 if image_sizes is None else len(image_sizes)
            raise ValueError(f"the text holds {len(markers)} image and video markers but {given} image and video sizes")
        for k, (marker, row) in enumerate(zip(markers, image_sizes, strict=True)):
            if (marker == VIDEO_MARKER) != (self.images.frames(row) > 0):
                what = "a video" if marker == VIDEO_MARKER else "an image"
                raise MarkerMismatch(f"marker {k + 1} asks for {what}, but that file is "
                                 f"{'an image' if marker == VIDEO_MARKER else 'a video'}")
        return [self.images.tokens(tuple(row)) for row in image_sizes]

    def encode(self, text: str, image_sizes: list | None = None) -> list[int]:
        """The ids of expand(text), found by tokenising the text with one image (video) token per image (video) and
        repeating that id: the same ids (special tokens split the text alike, one copy or hundreds), without
        tokenising hundreds of image tokens per image, which is most of the time a long conversation's encoding takes
        otherwise."""
        text = self.markers(text)
        markers = MARKERS.findall(text)
        if not markers:
            return self.tokenizer.encode(text, add_special_tokens=False)
        counts = iter(self.image_counts(markers, image_sizes))
        text = text.replace(IMAGE_MARKER, self.image_token)
        if self.video_token:
            text = text.replace(VIDEO_MARKER, self.video_token)
        ids = []
        for i in self.tokenizer.encode(text, add_special_tokens=False):
            ids += [i] * next(counts) if i in self.visual_token_ids else [i]
        return ids

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """The conversation as text, with the configured system prompt unless it brings its own."""
        if self.system_prompt is not None and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def __call__(self, texts: list[str], images: list[list] | None = None, padding_side: str = "left") -> dict:
        """texts: rendered prompts holding image and video markers; images: per text, its PIL images and videos
        (visual/video.py's Video), in the order of its markers."""
        images = images or [[] for _ in texts]
        for i, (text, imgs) in enumerate(zip(texts, images, strict=True)):
            n_markers = self.count_markers(text)
            if n_markers != len(imgs):
                raise ValueError(f"text {i} has {n_markers} image tokens but {len(imgs)} images (and videos)")
        pixels, rows = [], []
        for imgs in images:
            views, text_rows = self.images(imgs) if imgs else (None, [])
            pixels += [] if views is None else [views]
            rows.append(text_rows)
        batch = self.tokenizer(
            [self.expand(t, r) for t, r in zip(texts, rows, strict=True)], add_special_tokens=False, padding=True,
            padding_side=padding_side, return_tensors="pt",
        )
        batch["pixel_values"], batch["image_sizes"] = None, None
        if pixels:
            rows = size_rows([row for text_rows in rows for row in text_rows])
            batch["pixel_values"], batch["image_sizes"] = torch.cat(pixels), torch.tensor(rows)
        return dict(batch)

    def fingerprint(self) -> str:
        """A short key for everything a sample's token count depends on: the tokenizer's vocabulary and special
        tokens, the chat template and system prompt, the image token and the image-token counts (anyres: the grid).
        Exact lengths are cached under it (common/store.py)."""
        vocab = sorted(self.tokenizer.get_vocab().items(), key=lambda item: item[1])  # str or bytes pieces, by id
        vocab = hashlib.sha256(json.dumps(vocab, ensure_ascii=False, default=repr).encode())
        parts = [type(self.tokenizer).__name__, vocab.hexdigest(), self.chat_template, self.system_prompt,
                 self.image_token, self.num_image_tokens, self.images.aspect, getattr(self.images, "pinpoints", None),
                 getattr(self.images, "tile", None)]
        if self.video_token:  # only then, so a checkpoint without videos keeps its cached lengths
            videos = self.images.videos
            parts += [self.video_token, videos.pooling, videos.frames, videos.fps]
        return hashlib.sha256(json.dumps(parts, ensure_ascii=False, default=str).encode()).hexdigest()[:16]

    @cached_property
    def end_of_turn_id(self) -> int | None:
        """The token the template puts right after an assistant reply (<|im_end|> in ChatML): generation
        stops there, and labels keep it so the model learns to stop."""
        sentinel = "\x1fANSWER\x1f"
        text = self.render([{"role": "user", "content": "?"}, {"role": "assistant", "content": sentinel}])
        ids = self.tokenizer.encode(text.split(sentinel, 1)[1], add_special_tokens=False)
        return ids[0] if ids else None
