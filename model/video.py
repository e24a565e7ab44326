"""Videos as LLaVA-OneVision feeds them: each sampled frame resized to the tower's square (transformers'
LlavaOnevisionVideoProcessor, set up with the tower's size, resampling, mean and std), encoded and projected like an
image, its feature grid pooled bilinearly by `pooling` (OneVision's 2: a 27x27 grid becomes 14x14), the frames laid
end to end and one newline vector after the video:

    tokens of a video of F frames = F * ceil(side / pooling)² + 1        (side² = an image's tokens)

The processor writes that many video tokens; the model writes that many features (one masked_scatter, as ever).
"""

import math

import torch
from torch.nn import functional
from transformers import LlavaOnevisionVideoProcessor


def pooled_side(side: int, pooling: int) -> int:
    return math.ceil(side / pooling)


def video_tokens(frames: int, side: int, pooling: int) -> int:
    """Tokens of a video of `frames` frames whose frames give side x side features each."""
    return frames * pooled_side(side, pooling) ** 2 + 1


def pool_frames(features: torch.Tensor, pooling: int) -> torch.Tensor:
    """(frames, side * side, D) -> (frames, ceil(side / pooling)², D): OneVision's bilinear pooling of each frame's
    feature grid (identity for pooling 1)."""
    frames, n, dim = features.shape
    side = math.isqrt(n)
    if pooling == 1:
        return features
    grid = features.view(frames, side, side, dim).permute(0, 3, 1, 2)  # (frames, D, side, side)
    size = [pooled_side(side, pooling)] * 2
    pooled = functional.interpolate(grid, size=size, mode="bilinear")  # (frames, D, side', side')
    return pooled.permute(0, 2, 3, 1).reshape(frames, -1, dim)


def pack_video(features: torch.Tensor, pooling: int, newline: torch.Tensor) -> torch.Tensor:
    """One video's frame features (frames, side * side, D) -> its token features (video_tokens, D)."""
    pooled = pool_frames(features, pooling).flatten(0, 1)  # (frames * side'², D)
    return torch.cat([pooled, newline.to(pooled.dtype)[None]])


class VideoInputs:
    """A video (visual/video.py's Video: its sampled frames) -> pixel values (frames, 3, tile, tile); its tokens."""

    def __init__(self, settings: dict, num_image_tokens: int, pooling: int = 2, frames: int | None = 8,
                 fps: float | None = None):
        """settings: the tower processor's tile, resampling, mean and std (anyres.processor_settings)."""
        self.side = math.isqrt(num_image_tokens)
        if self.side * self.side != num_image_tokens:
            raise ValueError(f"videos pool each frame's square feature grid, but this tower gives {num_image_tokens} "
                             f"features per image (use --select_feature patch)")
        self.pooling, self.frames, self.fps = pooling, (None if fps else frames), fps
        s = settings
        self.processor = LlavaOnevisionVideoProcessor(
            size={"height": s["tile"], "width": s["tile"]}, resample=s["resample"], image_mean=s["image_mean"],
            image_std=s["image_std"])

    def tokens(self, frames: int) -> int:
        return video_tokens(frames, self.side, self.pooling)

    def __call__(self, video) -> torch.Tensor:
        """One video's frames (F, H, W, 3) uint8 -> (F, 3, tile, tile)."""
        out = self.processor(videos=[video.frames], return_tensors="pt")["pixel_values_videos"]
        return out[0].float()
