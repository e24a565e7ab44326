"""The one interface every vision encoder offers the VLM: pixel_values (B, 3, H, W) -> features (B, N, D)."""

from dataclasses import dataclass

import torch
from torch import nn

SELECT_FEATURES = ("patch", "cls_patch", "all_but_first")


@dataclass
class FeatureSelection:
    """Which hidden state, and which of its tokens, become image features.

    select_layer counts like transformers' `hidden_states`: 0 is the embeddings, -1 the last block, -2
    the penultimate block (LLaVA-1.5's choice). post_layernorm applies the encoder's final norm to that
    state (with select_layer=-1 this is SigLIP's `last_hidden_state`). select_feature: `patch` drops the
    CLS token where the family has one; `cls_patch` keeps every token; `all_but_first` drops the first
    token whatever it is, as the original project did on SigLIP (728 features at 384 px)."""

    select_layer: int = -2
    select_feature: str = "patch"
    post_layernorm: bool = False

    def __post_init__(self):
        if self.select_feature not in SELECT_FEATURES:
            raise ValueError(f"select_feature must be one of {SELECT_FEATURES}, got {self.select_feature!r}")

    def num_tokens(self, grid_tokens: int, prefix_tokens: int) -> int:
        return grid_tokens + {"patch": 0, "cls_patch": prefix_tokens, "all_but_first": prefix_tokens - 1}[
            self.select_feature
        ]

    def take(self, tokens: torch.Tensor, prefix_tokens: int) -> torch.Tensor:
        # tokens (B, prefix + grid, D)
        start = {"patch": prefix_tokens, "cls_patch": 0, "all_but_first": 1}[self.select_feature]
        return tokens[:, start:]


class VisionTower(nn.Module):
    """Base class. Subclasses set hidden_size, image_size, num_patches and image_processor, and implement
    `tokens(pixel_values) -> (B, prefix + grid, D)` at the selected layer."""

    hidden_size: int
    image_size: int
    num_patches: int
    prefix_tokens: int
    image_processor = None  # callable: list of PIL RGB images -> pixel_values (B, 3, H, W); picklable

    def __init__(self, selection: FeatureSelection):
        super().__init__()
        self.selection = selection

    @property
    def frozen(self) -> bool:
        return not any(p.requires_grad for p in self.parameters())

    def set_trainable(self, trainable: bool):
        self.requires_grad_(trainable)
        self.train(trainable)
        return self

    def lora_targets(self) -> list[str]:
        """The Linear layers LoRA adapts in the tower (--vision_mode lora): every one but a pooling head's."""
        return [name for name, m in self.named_modules() if isinstance(m, nn.Linear) and "head" not in name.split(".")]

    def add_lora(self, config) -> "VisionTower":
        """LoRA adapters (peft, `config` a LoraConfig without targets) in place on lora_targets(); only they train.
        The module keeps its class and forward, so nothing else changes."""
        from dataclasses import replace

        from peft import inject_adapter_in_model

        self.requires_grad_(False)
        inject_adapter_in_model(replace(config, target_modules=self.lora_targets()), self)
        for name, p in self.named_parameters():
            if "lora_" in name:  # trained weights stay fp32 under a half-precision tower, as the LLM's LoRA does
                p.data = p.data.float()
        self.train(True)
        return self

    def lora_state_dict(self) -> dict:
        return {k: v for k, v in self.state_dict().items() if "lora_" in k}

    def merge_lora(self) -> "VisionTower":
        """Folds the adapters into the weights they adapt and restores plain Linear layers (export, a new stage)."""
        from peft.tuners.lora import LoraLayer

        for name, module in list(self.named_modules()):
            if isinstance(module, LoraLayer):
                module.merge()
                owner, _, leaf = name.rpartition(".")
                setattr(self.get_submodule(owner), leaf, module.get_base_layer())
        return self

    def activation_checkpointing_enable(self, kwargs: dict):
        """Recomputes the tower's blocks in the backward pass, where its family supports it (transformers towers)."""
        model = getattr(self, "vision_model", None)
        if model is None or not getattr(model, "supports_gradient_checkpointing", False):
            return False
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:  # transformers before the rename
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        return True

    def train(self, mode: bool = True):
        # A frozen encoder stays in eval mode (no dropout) even when the VLM around it trains.
        return super().train(mode and not self.frozen)

    @property
    def dtype(self):
        return next(self.parameters()).dtype

    native = False  # True for towers that take variable patch counts (SigLIP2 NaFlex: --image_aspect_ratio native)

    def forward(self, pixel_values: torch.Tensor, spatial_shapes: torch.Tensor | None = None) -> torch.Tensor:
        """spatial_shapes: each image's patch grid (rows, columns), for a native tower (model/native.py)."""
        kwargs = {} if spatial_shapes is None else {"spatial_shapes": spatial_shapes}
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            tokens = self.tokens(pixel_values.to(self.dtype), **kwargs)  # (B, prefix + grid, D)
            return self.selection.take(tokens, self.prefix_tokens)  # (B, N, D)

    def tokens(self, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
        raise NotImplementedError

    def save_pretrained(self, folder: str, state_dict: dict | None = None):
        """Writes the tower as a folder `load_vision_tower` reads; `state_dict` (names as in this module, without
        its own prefix) replaces the module's tensors, e.g. with the whole weights gathered from FSDP shards."""
        raise NotImplementedError
