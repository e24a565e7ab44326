"""Vision encoders (CLIP, SigLIP, open_clip) behind one interface: pixel_values -> features (B, N, D)."""

from common.lazy import lazy_exports

# each name loads its submodule on first use: image loading needs PIL only, the towers torch and transformers
__getattr__, __dir__ = lazy_exports(__name__, {
    "ImageLoadError": ".images", "image_size": ".images", "load_image": ".images", "to_rgb": ".images",
    "load_vision_tower": ".loader", "FeatureSelection": ".tower", "VisionTower": ".tower"})

__all__ = ["FeatureSelection", "ImageLoadError", "VisionTower", "image_size", "load_image", "load_vision_tower",
           "to_rgb"]
