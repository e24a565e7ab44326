"""Images at their own shape: LLaVA-1.5's pad and LLaVA-NeXT's AnyRes, beside the tower's own square.

    square  the tower's processor as it is (resize and crop to its square): N tokens an image
    pad     LLaVA-1.5 (`image_aspect_ratio pad`): the image padded to a square with the processor's mean colour,
            then resized: N tokens an image, none of it cropped away
    anyres  LLaVA-NeXT: the grid among `image_grid_pinpoints` that fits the image best; the image resized (its
            aspect kept) and padded to that grid, cut into tiles of the tower's size, after the whole image
            resized to one tile (the base view). Features: the base view's N, then the tiles' feature grid with
            the padding cut away (unpad) and a learned newline vector after each row

The pixels come from transformers' own LlavaImageProcessor(do_pad=True) and LlavaNextImageProcessor, set up with
the tower's size, resampling, mean and std; the token count of each image is computed here from its size, by
LLaVA-NeXT's arithmetic, so the processor expands each image marker into exactly as many tokens as the model
writes features (one masked_scatter, as ever).
"""

import math

import torch
from transformers import LlavaImageProcessor, LlavaNextImageProcessor
from transformers.image_processing_utils import select_best_resolution

from .layouts import ASPECT_RATIOS, VARIABLE
from .native import native_grid


def grid_shape(image_size, pinpoints: list[list[int]], tile: int) -> tuple[int, int]:
    """(rows, columns) of tiles the image (height, width) is cut into."""
    height, width = select_best_resolution(tuple(image_size), pinpoints)
    return height // tile, width // tile


def unpadded_grid(image_size, rows: int, columns: int, side: int) -> tuple[int, int, int, int]:
    """The feature grid (rows * side, columns * side) of an image padded into its tiles, and the (top, bottom) or
    (left, right) band LLaVA-NeXT cuts away: (height, width, cut rows each side, cut columns each side)."""
    height, width = image_size
    grid_h, grid_w = rows * side, columns * side
    if width / height > grid_w / grid_h:  # wider than the grid: padding above and below
        pad = (grid_h - int(round(height * (grid_w / width), 7))) // 2
        return grid_h - 2 * pad, grid_w, pad, 0
    pad = (grid_w - int(round(width * (grid_h / height), 7))) // 2
    return grid_h, grid_w - 2 * pad, 0, pad


def anyres_tokens(image_size, pinpoints: list[list[int]], tile: int, side: int, base: int) -> int:
    """Image tokens of one image: the base view's `base`, its unpadded grid, and a newline per grid row."""
    rows, columns = grid_shape(image_size, pinpoints, tile)
    height, width, _, _ = unpadded_grid(image_size, rows, columns, side)
    return base + height * (width + 1)


def pack_features(features: torch.Tensor, image_size, pinpoints, tile: int, newline: torch.Tensor) -> torch.Tensor:
    """One image's tile features (1 + rows * columns, side * side, D), base view first, -> its token features
    (anyres_tokens, D), laid out as LLaVA-NeXT's spatial_unpad with a newline after each row."""
    rows, columns = grid_shape(image_size, pinpoints, tile)
    side = math.isqrt(features.shape[1])
    base, tiles = features[0], features[1:]  # (side * side, D), (rows * columns, side * side, D)
    grid = tiles.view(rows, columns, side, side, -1).permute(0, 2, 1, 3, 4).reshape(rows * side, columns * side, -1)
    height, width, cut_rows, cut_columns = unpadded_grid(image_size, rows, columns, side)
    grid = grid[cut_rows:cut_rows + height, cut_columns:cut_columns + width]  # (height, width, D)
    grid = torch.cat([grid, newline.to(grid.dtype).expand(height, 1, -1)], dim=1)  # (height, width + 1, D)
    return torch.cat([base, grid.reshape(-1, grid.shape[-1])])


def processor_settings(image_processor) -> dict:
    """Size, resampling, mean and std of a tower's image processor (transformers' or open_clip's)."""
    hf = getattr(image_processor, "processor", None)
    if hf is not None:
        size = hf.size.get("shortest_edge") or hf.size["height"]
        crop = getattr(hf, "crop_size", None) or {"height": size, "width": size}
        return {"tile": crop["height"], "size": size, "resample": hf.resample, "image_mean": list(hf.image_mean),
                "image_std": list(hf.image_std)}
    cfg = image_processor.preprocess_cfg  # open_clip
    size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
    resample = {"bicubic": 3, "bilinear": 2, "nearest": 0}[cfg.get("interpolation", "bicubic")]
    return {"tile": size, "size": size, "resample": resample, "image_mean": list(cfg["mean"]),
            "image_std": list(cfg["std"])}


class ImageInputs:
    """list of PIL images -> (pixel_values (tiles, 3, tile, tile), image sizes [(height, width)]), and the token
    count of an image of a given size, for one of ASPECT_RATIOS."""

    def __init__(self, tower_processor, aspect: str, num_image_tokens: int, pinpoints: list[list[int]] | None = None):
        if aspect not in ASPECT_RATIOS:
            raise ValueError(f"--image_aspect_ratio must be one of {ASPECT_RATIOS}, not {aspect!r}")
        self.aspect, self.base = aspect, num_image_tokens
        self.tower_processor = tower_processor
        self.variable = aspect in VARIABLE
        if aspect == "square":
            return
        if aspect == "native":  # the tower's own NaFlex processor, within num_image_tokens patches (native.py)
            self.processor = tower_processor.processor
            self.patch_size = self.processor.patch_size
            return
        s = processor_settings(tower_processor)
        self.tile, self.pinpoints = s["tile"], pinpoints
        common = dict(size={"shortest_edge": s["size"]}, crop_size={"height": s["tile"], "width": s["tile"]},
                      resample=s["resample"], image_mean=s["image_mean"], image_std=s["image_std"])
        if aspect == "pad":
            self.processor = LlavaImageProcessor(do_pad=True, **common)
            return
        self.side = math.isqrt(num_image_tokens)
        if self.side * self.side != num_image_tokens:
            raise ValueError(f"--image_aspect_ratio anyres lays features out on a square grid, but this tower gives "
                             f"{num_image_tokens} per image (use --select_feature patch)")
        self.processor = LlavaNextImageProcessor(image_grid_pinpoints=pinpoints, do_pad=False, **common)

    def tokens(self, image_size) -> int:
        """Image tokens of an image of (height, width)."""
        if self.aspect == "native":
            rows, columns = native_grid(image_size, self.patch_size, self.base)
            return rows * columns
        if self.aspect != "anyres":
            return self.base
        return anyres_tokens(image_size, self.pinpoints, self.tile, self.side, self.base)

    def __call__(self, images) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        sizes = [(image.height, image.width) for image in images]
        if self.aspect == "square":
            return self.tower_processor(images), sizes
        if self.aspect == "pad":
            return self.processor(images=list(images), return_tensors="pt")["pixel_values"].float(), sizes
        if self.aspect == "native":  # (n, num_image_tokens, 3 * patch²): patches, padded to the same count
            return self.processor(images=list(images), max_num_patches=self.base,
                                  return_tensors="pt")["pixel_values"].float(), sizes
        # anyres: each image's tiles, base view first, then the next image's: (sum of tiles, 3, tile, tile)
        tiles = [self.processor(images=[image], return_tensors="pt")["pixel_values"][0] for image in images]
        return torch.cat(tiles).float(), sizes

    def tiles(self, image_size) -> int:
        """Tiles the tower sees for one image: 1, or the base view and the grid's."""
        if self.aspect != "anyres":
            return 1
        rows, columns = grid_shape(image_size, self.pinpoints, self.tile)
        return 1 + rows * columns
