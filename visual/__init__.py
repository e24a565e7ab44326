"""Vision encoders (CLIP, SigLIP, open_clip) behind one interface: pixel_values -> features (B, N, D)."""

from .images import ImageLoadError, image_size, load_image, to_rgb
from .loader import load_vision_tower
from .tower import FeatureSelection, VisionTower

__all__ = ["FeatureSelection", "ImageLoadError", "VisionTower", "image_size", "load_image", "load_vision_tower",
           "to_rgb"]
