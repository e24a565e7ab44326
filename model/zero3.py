"""DeepSpeed ZeRO-3 partitions every weight across the processes. These helpers see partitioned weights
whole for a moment, and place what ZeRO-3 does not place itself."""

import contextlib

import torch
from torch import nn
from transformers.integrations import is_deepspeed_zero3_enabled


def gathered(params, modifier_rank: int | None = None):
    """The full tensors of `params` inside the block (all processes must enter it). modifier_rank=0: what
    rank 0 writes to them is partitioned back to every process on exit. Without ZeRO-3, a no-op."""
    if not is_deepspeed_zero3_enabled():
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(params), modifier_rank=modifier_rank)


def place_buffers(module: nn.Module, device: torch.device):
    """ZeRO-3 places the partitioned parameters on each process's device, but not the buffers: a CLIP
    tower's `position_ids` would stay on the CPU and fail the first forward on a GPU."""
    for sub in module.modules():
        for name, buffer in sub.named_buffers(recurse=False):
            if buffer.device != device:
                setattr(sub, name, buffer.to(device))
