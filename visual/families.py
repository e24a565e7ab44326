"""Which family a vision tower is, from its name alone, without loading it (no torch: export refuses early by it)."""

import os

OPEN_CLIP_PREFIX = "open_clip:"
OPEN_CLIP_CONFIG = "open_clip_vision_config.json"  # what marks a folder as a saved open_clip tower
OPEN_CLIP_WEIGHTS = "open_clip_vision.safetensors"


def is_open_clip(name: str) -> bool:
    """`open_clip:ARCH[/TAG]`, or a folder an open_clip tower was saved to; else a transformers CLIP/SigLIP."""
    return name.startswith(OPEN_CLIP_PREFIX) or os.path.isfile(os.path.join(name, OPEN_CLIP_CONFIG))
