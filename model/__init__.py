"""The VLM: vision tower -> projector -> LLM, with its processor, checkpoints and export."""

from common import IMAGE_MARKER

from .checkpoint import load_checkpoint, save_checkpoint
from .config import VLMConfig
from .model import VisionLanguageModel
from .processor import VLMProcessor
from .projector import build_projector

__all__ = ["IMAGE_MARKER", "VLMConfig", "VLMProcessor", "VisionLanguageModel", "build_projector",
           "load_checkpoint", "save_checkpoint"]
