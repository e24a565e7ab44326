"""Vision towers from transformers: CLIP, SigLIP (SigLIP2's fixed-resolution checkpoints are SigLIP models), DINOv2
(with or without registers), DINOv3 ViT and AIMv2. The text tower of a full checkpoint is never built.

Prefix tokens, which `--select_feature patch` drops: CLIP and DINOv2 have a CLS token, DINOv2-with-registers and
DINOv3 a CLS token and register tokens, SigLIP and AIMv2 none.
"""

import math

import torch
from torch import nn
from transformers import (
    Aimv2VisionModel,
    AutoConfig,
    AutoImageProcessor,
    CLIPVisionModel,
    Dinov2Model,
    Dinov2WithRegistersModel,
    DINOv3ViTModel,
    Siglip2VisionModel,
    SiglipVisionModel,
)

from .tower import FeatureSelection, VisionTower

# model_type of a full or a vision-only checkpoint -> the vision model class
FAMILIES = {
    "clip": CLIPVisionModel,
    "clip_vision_model": CLIPVisionModel,
    "siglip": SiglipVisionModel,
    "siglip_vision_model": SiglipVisionModel,
    "dinov2": Dinov2Model,
    "dinov2_with_registers": Dinov2WithRegistersModel,
    "dinov3_vit": DINOv3ViTModel,
    "siglip2": Siglip2VisionModel,  # NaFlex: variable patch counts (--image_aspect_ratio native)
    "siglip2_vision_model": Siglip2VisionModel,
    "aimv2": Aimv2VisionModel,
    "aimv2_vision_model": Aimv2VisionModel,
}
FINAL_NORMS = ("post_layernorm", "layernorm", "norm", "rms_norm")  # the encoder's final norm, as each family names it


def prefix_tokens(config) -> int:
    """Tokens before the patch grid in the hidden states: CLS and register tokens."""
    if config.model_type in ("siglip_vision_model", "siglip2_vision_model", "aimv2_vision_model"):
        return 0
    return 1 + getattr(config, "num_register_tokens", 0)


def processed_size(processor, config) -> int:
    """The side, in pixels, of the images the tower sees: its processor's crop (or resize) size. DINOv2's 518 px
    position grid is interpolated to the 224 px crop its processor makes, so the config's image_size is not it."""
    if processor is None:
        return config.image_size
    crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    size = crop or processor.size
    side = size.get("height") or size.get("shortest_edge")
    return side or config.image_size


def patch_mask(spatial_shapes: torch.Tensor, max_patches: int) -> torch.Tensor:
    """(images, max_patches): 1 on each image's own patches (rows x columns of spatial_shapes), which come first, 0 on
    the padding after them: Siglip2VisionModel's pixel_attention_mask, as its processor makes it."""
    return (torch.arange(max_patches, device=spatial_shapes.device)[None] < spatial_shapes.prod(-1)[:, None]).long()


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
        self.prefix_tokens = prefix_tokens(config)
        self.hidden_size = config.hidden_size
        self.native = config.model_type == "siglip2_vision_model"
        if self.native:  # the most patches an image takes, by default its processor's (model/native.py)
            self.num_patches = getattr(image_processor, "max_num_patches", None) or config.num_patches
            self.image_size = config.patch_size * math.isqrt(self.num_patches)  # a square image's side
            return
        self.image_size = processed_size(image_processor, config)
        self.num_patches = selection.num_tokens((self.image_size // config.patch_size) ** 2, self.prefix_tokens)

    @classmethod
    def load(cls, name: str, selection: FeatureSelection, dtype: torch.dtype = torch.float32):
        config = AutoConfig.from_pretrained(name)  # no trust_remote_code: only built-in families load
        if config.model_type not in FAMILIES:
            raise ValueError(
                f"{name}: vision encoder type {config.model_type!r} is not supported; use a CLIP, SigLIP, DINOv2, "
                "DINOv3 or AIMv2 checkpoint, or an open_clip model as open_clip:ARCH/TAG"
            )
        model_class = FAMILIES[config.model_type]
        vision_config = getattr(config, "vision_config", config)
        vision_model = model_class.from_pretrained(name, config=vision_config, dtype=dtype)
        return cls(vision_model, AutoImageProcessor.from_pretrained(name), selection)

    def tokens(self, pixel_values, spatial_shapes=None):
        native = {}
        if self.native:  # (images, max patches, 3 * patch²), each image's patches first, then padding
            spatial_shapes = spatial_shapes.to(pixel_values.device)
            native = {"spatial_shapes": spatial_shapes,
                      "pixel_attention_mask": patch_mask(spatial_shapes, pixel_values.shape[1])}
        out = self.vision_model(pixel_values=pixel_values, output_hidden_states=True, **native)
        hidden = out.hidden_states[self.selection.select_layer]  # (B, prefix + grid, D)
        if self.selection.post_layernorm:
            inner = getattr(self.vision_model, "vision_model", self.vision_model)  # nested in older transformers
            norm = next((getattr(inner, n) for n in FINAL_NORMS if isinstance(getattr(inner, n, None), nn.Module)),
                        None)
            if norm is None:
                raise ValueError(f"{type(inner).__name__} has no final norm for --post_layernorm")
            hidden = norm(hidden)
        return hidden

    def save_pretrained(self, folder: str, state_dict: dict | None = None):
        if state_dict is not None:
            state_dict = {k.removeprefix("vision_model."): v for k, v in state_dict.items()}
        self.vision_model.save_pretrained(folder, state_dict=state_dict)
        self.image_processor.processor.save_pretrained(folder)

