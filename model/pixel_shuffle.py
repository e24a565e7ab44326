"""Pixel shuffle (space-to-depth) before the projector, as Idefics3, SmolVLM, InternVL and nanoVLM cut image tokens.

Each factor x factor block of the tower's square feature grid becomes one token whose features are the block's
concatenated (in the order of transformers' `Idefics3Connector.pixel_shuffle`), so an image gives factor² fewer
tokens, each factor² times wider, and the projector maps that width to the LLM's.

A grid the factor does not divide (SigLIP-so400m-384's 27 x 27 with factor 2) is padded with zero features on the
bottom and right up to the next multiple first (27 -> 28: 14 x 14 = 196 tokens), so no patch is dropped and the
image is not resized. The token count of a grid of side s is ceil(s / factor)².
"""

import math

import torch
from torch import nn
from torch.nn import functional as F


def shuffled_tokens(num_tokens: int, factor: int) -> int:
    """Image tokens after pixel shuffle of a square grid of `num_tokens` features."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"pixel shuffle needs a square feature grid, but the tower gives {num_tokens} tokens per "
                         f"image (use --select_feature patch to drop a CLS token)")
    return math.ceil(side / factor) ** 2


def pixel_shuffle(features: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, side², D) -> (B, ceil(side / factor)², D * factor²), rows of blocks in order, each block's features in
    Idefics3's order; the grid padded with zeros on the bottom and right when factor does not divide side."""
    batch, n, dim = features.shape
    side = math.isqrt(n)
    grid = features.view(batch, side, side, dim)  # (B, H, W, D)
    padded = math.ceil(side / factor) * factor
    if padded != side:
        grid = F.pad(grid, (0, 0, 0, padded - side, 0, padded - side))  # (B, H', W', D)
    blocks = padded // factor
    # (B, H', W'/f, f*D) -> (B, W'/f, H', f*D) -> (B, W'/f, H'/f, f²D) -> (B, H'/f, W'/f, f²D)
    x = grid.reshape(batch, padded, blocks, factor * dim).transpose(1, 2)
    x = x.reshape(batch, blocks, blocks, factor * factor * dim).transpose(1, 2)
    return x.reshape(batch, blocks * blocks, factor * factor * dim)


class PixelShuffleMLP(nn.Sequential):
    """pixel_shuffle_mlp: pixel shuffle, then mlp2x_gelu from the widened features (weights named as mlp2x_gelu's)."""

    def __init__(self, vision_dim: int, llm_dim: int, factor: int):
        if factor < 2:
            raise ValueError(f"--projector_type pixel_shuffle_mlp needs --pixel_shuffle 2 or more, not {factor}")
        width = vision_dim * factor * factor
        super().__init__(nn.Linear(width, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim))
        self.factor = factor

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(pixel_shuffle(features, self.factor))  # (B, N / f², D_llm)
