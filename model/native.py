"""Images at their own aspect ratio for towers that take variable patch counts (SigLIP2 NaFlex): `native`.

Each image is resized, its aspect ratio kept, to the largest size whose patch grid fits `max_image_tokens` patches
(transformers' Siglip2ImageProcessor does it, by its `get_image_size_for_max_num_patches`), cut into patches and
padded to that many. Its image tokens are its own grid's cells, rows x columns, so the count depends on the image's
size alone: the processor expands each marker into that many tokens, and the model passes the tower the
`spatial_shapes` and `pixel_attention_mask` transformers' Siglip2VisionModel expects, computed from the same sizes,
and keeps each image's valid tokens (model.py).
"""

import torch
from transformers.models.siglip2.image_processing_siglip2 import get_image_size_for_max_num_patches


def native_grid(image_size, patch_size: int, max_patches: int) -> tuple[int, int]:
    """(rows, columns) of patches of an image of (height, width) once resized within max_patches."""
    height, width = get_image_size_for_max_num_patches(image_size[0], image_size[1], patch_size, max_patches)
    return height // patch_size, width // patch_size


def spatial_shapes(image_sizes, patch_size: int, max_patches: int) -> torch.Tensor:
    """(n_images, 2): each image's patch grid, as Siglip2VisionModel's `spatial_shapes`."""
    return torch.tensor([native_grid(tuple(s), patch_size, max_patches) for s in image_sizes], dtype=torch.long)

