"""Vision encoders (CLIP, SigLIP, open_clip) behind one interface: pixel_values -> features (B, N, D)."""

from .images import ImageLoadError, load_image, to_rgb
from .tower import FeatureSelection, VisionTower, load_vision_tower

__all__ = ["FeatureSelection", "ImageLoadError", "VisionTower", "load_image", "load_vision_tower", "to_rgb"]
