"""VLMConfig: everything needed to rebuild a trained VLM from its checkpoint folder alone."""

import json
import math
import os
from dataclasses import asdict, dataclass, fields

from .layouts import check_aspect, is_anyres, parse_pinpoints

CONFIG_NAME = "vlm_config.json"
MODES = {
    "vision_mode": ("frozen", "lora", "full"),  # lora: LoRA on the tower's Linear layers, the LLM's rank and alpha
    "projector_mode": ("train", "frozen"),
    "llm_mode": ("frozen", "lora", "qlora", "full"),
}
LORA_MODES = ("lora", "qlora")  # qlora: LoRA on the LLM loaded in 4-bit NF4 (quantization.py)


@dataclass
class VLMConfig:
    llm: str  # hub id or local folder of the base causal LM
    vision: str  # vision tower name, see visual.load_vision_tower
    select_layer: int = -2
    select_feature: str = "patch"
    post_layernorm: bool = False
    projector_type: str = "mlp2x_gelu"
    pixel_shuffle: int = 1  # pixel_shuffle_mlp: factor² fewer image tokens (pixel_shuffle.py)
    # square (the tower's own resize and crop) | pad (LLaVA-1.5) | anyres (LLaVA-NeXT) | anyres_max_N (LLaVA-OneVision)
    # | native (NaFlex): see anyres.py
    image_aspect_ratio: str = "square"
    image_grid_pinpoints: list | str | None = None  # anyres: [[height, width], ...] or "HxW,..."; default LLaVA-NeXT's
    max_image_tokens: int | None = None  # anyres: grids whose image tokens could exceed this are left out
    # Used only when the LLM's vocabulary lacks IMAGE_MARKER: added as a special token.
    image_token: str = "<image>"
    system_prompt: str | None = None  # None: the chat template's own default
    # Videos (video.py): set when the training data holds videos; the video token is then added as the image token
    # is, and a newline vector follows each video. Frames: video_frames spread uniformly, or video_fps a second.
    videos: bool = False
    video_token: str = "<video>"
    video_frames: int = 8
    video_fps: float | None = None
    video_pooling: int = 2  # frame features pooled bilinearly by this stride (LLaVA-OneVision's 2)
    vision_mode: str = "frozen"
    projector_mode: str = "train"
    llm_mode: str = "lora"
    lora_rank: int = 128
    lora_alpha: int | None = None  # None: 2 x lora_rank (the original hard-coded 32)
    lora_dropout: float = 0.05
    target_modules: str = "auto"  # "|"-separated module names, "all-linear", or "auto" (lora_targets.py)
    # Filled in when the model is built; recorded so a checkpoint can be checked against its base.
    num_image_tokens: int | None = None
    vision_hidden_size: int | None = None
    llm_hidden_size: int | None = None
    chat_template: str | None = None
    # The checkpoint this one's training started from (train.py --init_from), when this one's weights apply on top of
    # it (a LoRA adapter trained on its merged LLM, or a frozen tower it trained): loading loads it first.
    init_from: str | None = None

    def __post_init__(self):
        for name, allowed in MODES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        check_aspect(self.image_aspect_ratio)
        if self.video_pooling < 1 or (self.video_fps is None and self.video_frames < 1) or (self.video_fps or 1) <= 0:
            raise ValueError(f"videos need video_pooling >= 1 and a positive video_frames or video_fps, not "
                             f"{self.video_pooling}, {self.video_frames}, {self.video_fps}")
        if self.lora_alpha is None:
            self.lora_alpha = 2 * self.lora_rank

    def resolve_image_layout(self, tile: int):
        """anyres: the grids, LLaVA-NeXT's (anyres_max_N: OneVision's) for a `tile`-px tower unless given, and within
        max_image_tokens if set."""
        if not is_anyres(self.image_aspect_ratio):
            return
        points = self.image_grid_pinpoints
        if points is None or isinstance(points, str):
            points = parse_pinpoints(points, tile, self.image_aspect_ratio)
        if self.max_image_tokens is not None:
            side = math.isqrt(self.num_image_tokens)
            worst = {tuple(p): self.num_image_tokens + (p[0] // tile * side) * (p[1] // tile * side + 1)
                     for p in points}
            points = [p for p in points if worst[tuple(p)] <= self.max_image_tokens]
            if not points:
                raise ValueError(f"--max_image_tokens {self.max_image_tokens} leaves no grid: the smallest gives up to "
                                 f"{min(worst.values())} image tokens")
        self.image_grid_pinpoints = [list(p) for p in points]

    @property
    def hidden_size(self) -> int | None:
        """The LLM's width. transformers fills DeepSpeed's "auto" bucket sizes from model.config.hidden_size."""
        return self.llm_hidden_size

    @property
    def lora_targets(self):
        return "all-linear" if self.target_modules == "all-linear" else self.target_modules.split("|")

    def save(self, folder: str):
        with open(os.path.join(folder, CONFIG_NAME), "w") as f:
            json.dump(asdict(self), f, indent=2, ensure_ascii=False)

    @classmethod
    def load(cls, folder: str) -> "VLMConfig":
        with open(os.path.join(folder, CONFIG_NAME)) as f:
            data = json.load(f)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
