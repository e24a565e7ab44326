"""CLIP and SigLIP vision towers from transformers; the text tower of a full checkpoint is never built."""

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    SiglipVisionModel,
)

from .tower import FeatureSelection, VisionTower

# model_type of a full or a vision-only checkpoint -> the vision model class
FAMILIES = {
    "clip": CLIPVisionModel,
    "clip_vision_model": CLIPVisionModel,
    "siglip": SiglipVisionModel,
    "siglip_vision_model": SiglipVisionModel,
}


class HFImageProcessor:
    """The checkpoint's own image processor (resize, crop, mean/std), returning a float32 batch."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, images) -> torch.Tensor:
        return self.processor(images=list(images), return_tensors="pt")["pixel_values"].float()


class HFVisionTower(VisionTower):
    def __init__(self, vision_model, image_processor, selection: FeatureSelection):
        super().__init__(selection)
        self.vision_model = vision_model
        self.image_processor = HFImageProcessor(image_processor)
        config = vision_model.config
        self.prefix_tokens = 1 if isinstance(config, CLIPVisionConfig) else 0  # CLIP's CLS; SigLIP has none
        self.hidden_size = config.hidden_size
        self.image_size = config.image_size
        self.num_patches = selection.num_tokens((config.image_size // config.patch_size) ** 2, self.prefix_tokens)

    @classmethod
    def load(cls, name: str, selection: FeatureSelection, dtype: torch.dtype = torch.float32):
        config = AutoConfig.from_pretrained(name)  # no trust_remote_code: only built-in families load
        if config.model_type not in FAMILIES:
            raise ValueError(
                f"{name}: vision encoder type {config.model_type!r} is not supported; use a CLIP or SigLIP "
                "checkpoint, or an open_clip model as open_clip:ARCH/TAG"
            )
        model_class = FAMILIES[config.model_type]
        vision_config = getattr(config, "vision_config", config)
        vision_model = model_class.from_pretrained(name, config=vision_config, dtype=dtype)
        return cls(vision_model, AutoImageProcessor.from_pretrained(name), selection)

    def tokens(self, pixel_values):
        out = self.vision_model(pixel_values=pixel_values, output_hidden_states=True)
        hidden = out.hidden_states[self.selection.select_layer]  # (B, prefix + grid, D)
        if self.selection.post_layernorm:
            inner = getattr(self.vision_model, "vision_model", self.vision_model)  # nested in older transformers
            hidden = inner.post_layernorm(hidden)
        return hidden

    def save_pretrained(self, folder: str, state_dict: dict | None = None):
        if state_dict is not None:
            state_dict = {k.removeprefix("vision_model."): v for k, v in state_dict.items()}
        self.vision_model.save_pretrained(folder, state_dict=state_dict)
        self.image_processor.processor.save_pretrained(folder)

