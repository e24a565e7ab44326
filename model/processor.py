"""VLMProcessor: chat template, image-token expansion and pixel values, shared by training and inference."""

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
        if self.images.aspect == "anyres":
            if image_sizes is None or len(image_sizes) != len(pieces) - 1:
                given = 0 if image_sizes is None else len(image_sizes)
                raise ValueError(f"the text holds {len(pieces) - 1} image markers but {given} image sizes")
            counts = [self.images.tokens(size) for size in image_sizes]
        else:
            counts = [self.num_image_tokens] * (len(pieces) - 1)
        return pieces[0] + "".join(self.image_token * n + piece for n, piece in zip(counts, pieces[1:], strict=True))

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

    @cached_property
    def end_of_turn_id(self) -> int | None:
        """The token the template puts right after an assistant reply (<|im_end|> in ChatML): generation
        stops there, and labels keep it so the model learns to stop."""
        sentinel = "\x1fANSWER\x1f"
        text = self.render([{"role": "user", "content": "?"}, {"role": "assistant", "content": sentinel}])
        ids = self.tokenizer.encode(text.split(sentinel, 1)[1], add_special_tokens=False)
        return ids[0] if ids else None
