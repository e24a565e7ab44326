"""The VLM: vision tower -> projector -> LLM, with its processor, checkpoints and export."""

from common import IMAGE_MARKER
from common.lazy import lazy_exports

# each name loads its submodule (and torch) on first use: `python -m model.export --help` stays light
__getattr__, __dir__ = lazy_exports(__name__, {
    "load_checkpoint": ".checkpoint", "save_checkpoint": ".checkpoint", "VLMConfig": ".config",
    "VisionLanguageModel": ".model", "VLMProcessor": ".processor", "build_projector": ".projector"})

__all__ = ["IMAGE_MARKER", "VLMConfig", "VLMProcessor", "VisionLanguageModel", "build_projector",
           "load_checkpoint", "save_checkpoint"]
