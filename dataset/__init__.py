"""Training data: the Dataset, the chat-template rendering with label masking, and the collator."""

from .collator import VLMCollator
from .conversation import IGNORE_INDEX, encode_conversation
from .dataset import BadSample, DataUnavailable, VLMDataset
from .packing import PackedDataset, plan_rows

__all__ = ["IGNORE_INDEX", "BadSample", "DataUnavailable", "PackedDataset", "VLMCollator", "VLMDataset",
           "encode_conversation", "plan_rows"]
