"""Training data: the sample store and mixtures, the Dataset, the chat-template rendering with label masking,
packing, and the collator."""

from common.store import JsonSamples, SampleStore, build_store, stale_reason

from .collator import VLMCollator
from .conversation import IGNORE_INDEX, encode_conversation
from .dataset import BadSample, DataUnavailable, VLMDataset
from .mixture import Mixture, read_mixture
from .packing import PackedDataset, plan_rows

__all__ = ["IGNORE_INDEX", "BadSample", "DataUnavailable", "JsonSamples", "Mixture", "PackedDataset", "SampleStore",
           "VLMCollator", "VLMDataset", "build_store", "encode_conversation", "plan_rows", "read_mixture",
           "stale_reason"]
