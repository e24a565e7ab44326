"""VLMProcessor: chat template, image-token expansion and pixel values, shared by training and inference."""

import hashlib
import json
from functools import cached_property

import torch

from common import IMAGE_MARKER
from qwen.tokenization_qwen import CHATML_TEMPLATE

from .anyres import ImageInputs


class VLMProcessor:
    """Each IMAGE_MARKER in a text becomes as many copies of the model's image token as that image gives features
    (N, or with anyres a count that depends on the image's size: anyres.py), so the model can write one feature
    vector per position and labels, masks and positions never shift."""

    def __init__(self, tokenizer, image_processor, image_token: str, num_image_tokens: int,
                 chat_template: str | None = None, system_prompt: str | None = None,
                 image_inputs: ImageInputs | None = None):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_token = image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.num_image_tokens = num_image_tokens
        self.chat_template = chat_template or tokenizer.chat_template or CHATML_TEMPLATE
        self.system_prompt = system_prompt
        self.images = image_inputs or ImageInputs(image_processor, "square", num_image_tokens)

    def count_markers(self, text: str) -> int:
        return text.count(IMAGE_MARKER) + (text.count(self.image_token) if self.image_token != IMAGE_MARKER else 0)

    def expand(self, text: str, image_sizes: list | None = None) -> str:
        """Each marker (ours or the model's own spelling) -> its image's tokens; the sizes (height, width) of the
        text's images, in order, are needed where the count depends on them (anyres)."""
        if self.image_token != IMAGE_MARKER:  # accept the model's own spelling too
            text = text.replace(self.image_token, IMAGE_MARKER)
        pieces = text.split(IMAGE_MARKER)
        if len(pieces) == 1:
            return text
        counts = self.image_counts(len(pieces) - 1, image_sizes)
        return pieces[0] + "".join(self.image_token * n + piece for n, piece in zip(counts, pieces[1:], strict=True))

    def image_counts(self, n_images: int, image_sizes: list | None = None) -> list[int]:
        """The image tokens of each of a text's n_images images."""
        if not self.images.variable:
            return [self.num_image_tokens] * n_images
        if image_sizes is None or len(image_sizes) != n_images:
            given = 0 if image_sizes is None else len(image_sizes)
            raise ValueError(f"the text holds {n_images} image markers but {given} image sizes")
        return [self.images.tokens(size) for size in image_sizes]

    def encode(self, text: str, image_sizes: list | None = None) -> list[int]:
        """The ids of expand(text), found by tokenising the text with one image token per image and repeating that
        id: the same ids (special tokens split the text alike, one copy or hundreds), without tokenising hundreds of
        image tokens per image, which is most of the time a long conversation's encoding takes otherwise."""
        n_images = self.count_markers(text)
        if n_images == 0:
            return self.tokenizer.encode(text, add_special_tokens=False)
        counts = iter(self.image_counts(n_images, image_sizes))
        if self.image_token != IMAGE_MARKER:
            text = text.replace(IMAGE_MARKER, self.image_token)
        ids = []
        for i in self.tokenizer.encode(text, add_special_tokens=False):
            ids += [i] * next(counts) if i == self.image_token_id else [i]
        return ids

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """The conversation as text, with the configured system prompt unless it brings its own."""
        if self.system_prompt is not None and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def __call__(self, texts: list[str], images: list[list] | None = None, padding_side: str = "left") -> dict:
        """texts: rendered prompts holding IMAGE_MARKERs; images: per text, its PIL images in order."""
        images = images or [[] for _ in texts]
        for i, (text, imgs) in enumerate(zip(texts, images, strict=True)):
            n_markers = self.count_markers(text)
            if n_markers != len(imgs):
                raise ValueError(f"text {i} has {n_markers} image tokens but {len(imgs)} images")
        sizes = [[(img.height, img.width) for img in imgs] for imgs in images]
        batch = self.tokenizer(
            [self.expand(t, s) for t, s in zip(texts, sizes, strict=True)], add_special_tokens=False, padding=True,
            padding_side=padding_side, return_tensors="pt",
        )
        flat = [img for imgs in images for img in imgs]
        batch["pixel_values"], batch["image_sizes"] = None, None
        if flat:
            pixels, flat_sizes = self.images(flat)
            batch["pixel_values"], batch["image_sizes"] = pixels, torch.tensor(flat_sizes)
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
        return hashlib.sha256(json.dumps(parts, ensure_ascii=False, default=str).encode()).hexdigest()[:16]

    @cached_property
    def end_of_turn_id(self) -> int | None:
        """The token the template puts right after an assistant reply (<|im_end|> in ChatML): generation
        stops there, and labels keep it so the model learns to stop."""
        sentinel = "\x1fANSWER\x1f"
        text = self.render([{"role": "user", "content": "?"}, {"role": "assistant", "content": sentinel}])
        ids = self.tokenizer.encode(text.split(sentinel, 1)[1], add_special_tokens=False)
        return ids[0] if ids else None
