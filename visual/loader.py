"""load_vision_tower: a vision encoder by name, whatever its family."""


import torch

from .families import OPEN_CLIP_PREFIX, is_open_clip
from .hf_tower import HFVisionTower
from .tower import FeatureSelection, VisionTower


def load_vision_tower(
    name: str,
    selection: FeatureSelection | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    trainable: bool = False,
) -> VisionTower:
    """A tower by name: a hub id or local folder of a CLIP/SigLIP checkpoint, `open_clip:ARCH[/TAG_OR_FILE]`,
    or a folder that `VisionTower.save_pretrained` wrote. Frozen unless `trainable`. device=None leaves
    the weights where loading put them (the CPU; under ZeRO-3, a transformers tower is partitioned)."""
    selection = selection or FeatureSelection()
    if is_open_clip(name):
        from .open_clip_tower import OpenCLIPVisionTower  # open_clip and timm load only for their towers

        tower = OpenCLIPVisionTower.load(name.removeprefix(OPEN_CLIP_PREFIX), selection).to(dtype=dtype)
    else:
        tower = HFVisionTower.load(name, selection, dtype)  # loaded in dtype: partitioned weights take no .to()
    if device is not None:
        tower.to(device)
    return tower.set_trainable(trainable)
