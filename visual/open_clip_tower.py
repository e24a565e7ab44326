"""open_clip vision towers: open_clip's own ViTs, timm ViT trunks (SigLIP ones included) and open_clip's
ResNets (CLIP's ModifiedResNet: RN50, ... or a tiny one like the demo's).

Token features come from `forward_intermediates`, which all expose. A ResNet's tokens are the cells of one
stage's feature map, row by row: select_layer -1 is its last stage (layer4), -2 the one before, and so on.
ConvNeXt and other trunks are refused with a clear error.
"""

import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file

from .families import OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS
from .tower import FeatureSelection, VisionTower

# timm, under open_clip, imports wandb when it is installed, for a logging helper of its own that we never call:
# seconds at every start. wandb is hidden while open_clip loads; the Trainer's W&B reporting imports it as usual.
_HIDE_WANDB = "wandb" not in sys.modules
if _HIDE_WANDB:
    sys.modules["wandb"] = None
try:
    import open_clip
    from open_clip.model import _build_vision_tower
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.transform import PreprocessCfg, image_transform_v2
finally:
    if _HIDE_WANDB:
        del sys.modules["wandb"]


class OpenCLIPImageProcessor:
    """open_clip's evaluation transform, applied per image and stacked."""

    def __init__(self, preprocess_cfg: dict):
        self.preprocess_cfg = preprocess_cfg  # size, mean, std, interpolation: what pad and anyres reuse
        self.transform = image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=False)

    def __call__(self, images) -> torch.Tensor:
        return torch.stack([self.transform(image) for image in images])


class OpenCLIPVisionTower(VisionTower):
    def __init__(self, visual, model_cfg: dict, preprocess_cfg: dict, selection: FeatureSelection):
        super().__init__(selection)
        if hasattr(visual, "grid_size") and hasattr(visual, "transformer"):  # open_clip's ViT: always a CLS
            grid, self.prefix_tokens, self.hidden_size = visual.grid_size, 1, visual.transformer.width
            self.num_blocks = len(visual.transformer.resblocks)
        elif hasattr(getattr(visual, "trunk", None), "patch_embed"):  # timm ViT
            trunk = visual.trunk
            grid, self.prefix_tokens, self.hidden_size = trunk.patch_embed.grid_size, trunk.num_prefix_tokens, (
                trunk.embed_dim
            )
            self.num_blocks = len(trunk.blocks)
        elif isinstance(visual, ModifiedResNet):  # stages: stem (/4, width), layer1..4 (/1, /2, /2, /2; x4 wide)
            if selection.select_layer >= 0 or selection.select_layer < -4 or selection.post_layernorm:
                raise ValueError(f"a ResNet tower takes select_layer -1 (last stage) to -4 and no post_layernorm, "
                                 f"not {selection.select_layer}")
            stage = 5 + selection.select_layer  # 4: layer4, ..., 1: layer1
            width = visual.layer1[0].conv1.in_channels
            side = visual.image_size // (4 * 2 ** (stage - 1))
            grid, self.prefix_tokens, self.hidden_size = (side, side), 0, width * 4 * 2 ** (stage - 1)
            self.num_blocks = 4
        else:
            raise ValueError(f"open_clip tower {type(visual).__name__} has no token sequence; use a ViT or a "
                             "ResNet model")
        self.visual = visual
        self.model_cfg = model_cfg
        self.preprocess_cfg = preprocess_cfg
        self.image_processor = OpenCLIPImageProcessor(preprocess_cfg)
        size = preprocess_cfg["size"]
        self.image_size = size if isinstance(size, int) else size[0]
        self.num_patches = selection.num_tokens(grid[0] * grid[1], self.prefix_tokens)
        if selection.select_layer == 0 or abs(selection.select_layer) > self.num_blocks:
            raise ValueError(f"select_layer {selection.select_layer} is outside the {self.num_blocks} blocks")

    @classmethod
    def load(cls, spec: str, selection: FeatureSelection):
        """spec is a folder written by save_pretrained, or ARCH[/TAG_OR_FILE] (no pretrained part: random)."""
        if os.path.isfile(os.path.join(spec, OPEN_CLIP_CONFIG)):
            with open(os.path.join(spec, OPEN_CLIP_CONFIG)) as f:
                saved = json.load(f)
            model_cfg = saved["model_cfg"]
            visual = _build_vision_tower(
                model_cfg["embed_dim"], model_cfg["vision_cfg"], quick_gelu=model_cfg.get("quick_gelu", False)
            )
            visual.load_state_dict(load_file(os.path.join(spec, OPEN_CLIP_WEIGHTS)))
            return cls(visual, model_cfg, saved["preprocess_cfg"], selection)
        arch, _, pretrained = spec.partition("/")
        model_cfg = open_clip.get_model_config(arch)
        if model_cfg is None:
            raise ValueError(f"unknown open_clip architecture {arch!r}; see open_clip.list_models()")
        model = open_clip.create_model(arch, pretrained=pretrained or None, weights_only=True)
        preprocess_cfg = open_clip.get_model_preprocess_cfg(model)
        return cls(model.visual, model_cfg, preprocess_cfg, selection)  # the text tower is dropped here

    def tokens(self, pixel_values, **kwargs):
        layer = self.selection.select_layer
        if isinstance(self.visual, ModifiedResNet):
            out = self.visual.forward_intermediates(pixel_values, indices=[5 + layer], stop_early=True,
                                                    intermediates_only=True)
            return out["image_intermediates"][0].flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H * W, C)
        block = layer if layer < 0 else layer - 1  # hidden_states[k] is the output of block k - 1
        out = self.visual.forward_intermediates(
            pixel_values, indices=[block], stop_early=True, intermediates_only=True, output_fmt="NLC",
            normalize_intermediates=self.selection.post_layernorm, output_extra_tokens=self.prefix_tokens > 0,
        )
        grid = out["image_intermediates"][0]  # (B, grid, D)
        if self.prefix_tokens == 0:
            return grid
        return torch.cat([out["image_intermediates_prefix"][0], grid], dim=1)  # (B, prefix + grid, D)

    def save_pretrained(self, folder: str, state_dict: dict | None = None):
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, OPEN_CLIP_CONFIG), "w") as f:
            json.dump({"model_cfg": self.model_cfg, "preprocess_cfg": self.preprocess_cfg}, f, indent=2)
        if state_dict is not None:
            state_dict = {k.removeprefix("visual."): v for k, v in state_dict.items()}
        state = {k: v.contiguous() for k, v in (state_dict or self.visual.state_dict()).items()}
        save_file(state, os.path.join(folder, OPEN_CLIP_WEIGHTS))
