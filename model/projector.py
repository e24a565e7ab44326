"""Projectors from vision features (B, N, D_vision) to LLM embeddings (B, N, D_llm).

Each kind is one small function, chosen by its exact name. Initialisation is PyTorch's default for
nn.Linear (uniform in ±1/sqrt(fan_in), as LLaVA-1.5 and the original project use), so recipes and
learning rates published for mlp2x_gelu carry over; stage-1 alignment then learns the output scale.
"""

from torch import nn

from .pixel_shuffle import PixelShuffleMLP


def linear(vision_dim: int, llm_dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(vision_dim, llm_dim))


def mlp2x_gelu(vision_dim: int, llm_dim: int) -> nn.Module:
    # Sequential indices 0 and 2 are the weight names of the original project's other_params.bin.
    return nn.Sequential(nn.Linear(vision_dim, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim))


PROJECTORS = {"linear": linear, "mlp2x_gelu": mlp2x_gelu, "pixel_shuffle_mlp": PixelShuffleMLP}


def build_projector(kind: str, vision_dim: int, llm_dim: int, pixel_shuffle: int = 1) -> nn.Module:
    """pixel_shuffle_mlp takes the shuffle factor (pixel_shuffle.py); the others map each token as it is."""
    if kind not in PROJECTORS:
        raise ValueError(f"unknown projector {kind!r}; choose one of {sorted(PROJECTORS)}")
    if kind == "pixel_shuffle_mlp":
        return PixelShuffleMLP(vision_dim, llm_dim, pixel_shuffle)
    if pixel_shuffle != 1:
        raise ValueError(f"--pixel_shuffle {pixel_shuffle} needs --projector_type pixel_shuffle_mlp, not {kind}")
    return PROJECTORS[kind](vision_dim, llm_dim)
