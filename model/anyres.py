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
from torch.nn import functional
from transformers import LlavaImageProcessor, LlavaNextImageProcessor, LlavaOnevisionImageProcessor
from transformers.image_processing_utils import select_best_resolution

from .layouts import anyres_max, check_aspect, is_anyres, is_variable
from .native import native_grid
from .video import pack_video

ONE_VIEW = -1  # a row's third field for an image of a several-image sample under anyres_max (see ImageInputs)


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


def downsampled(height: int, width: int, side: int, max_tiles: int | None) -> tuple[int, int]:
    """anyres_max_N (LLaVA-OneVision): a feature grid over N tiles' worth of features (by more than 1.1x in side)
    shrinks by that ratio; None (anyres) keeps it."""
    if max_tiles is None:
        return height, width
    ratio = math.sqrt(height * width / (max_tiles * side * side))
    return (int(height // ratio), int(width // ratio)) if ratio > 1.1 else (height, width)


def anyres_tokens(image_size, pinpoints: list[list[int]], tile: int, side: int, base: int,
                  max_tiles: int | None = None) -> int:
    """Image tokens of one image: the base view's `base`, its unpadded (anyres_max: downsampled) grid, and a newline
    per grid row."""
    rows, columns = grid_shape(image_size, pinpoints, tile)
    height, width, _, _ = unpadded_grid(image_size, rows, columns, side)
    height, width = downsampled(height, width, side, max_tiles)
    return base + height * (width + 1)


def pack_features(features: torch.Tensor, image_size, pinpoints, tile: int, newline: torch.Tensor,
                  max_tiles: int | None = None) -> torch.Tensor:
    """One image's tile features (1 + rows * columns, side * side, D), base view first, -> its token features
    (anyres_tokens, D), laid out as LLaVA-NeXT's spatial_unpad (anyres_max: then downsampled bilinearly, as
    LLaVA-OneVision) with a newline after each row."""
    rows, columns = grid_shape(image_size, pinpoints, tile)
    side = math.isqrt(features.shape[1])
    base, tiles = features[0], features[1:]  # (side * side, D), (rows * columns, side * side, D)
    grid = tiles.view(rows, columns, side, side, -1).permute(0, 2, 1, 3, 4).reshape(rows * side, columns * side, -1)
    height, width, cut_rows, cut_columns = unpadded_grid(image_size, rows, columns, side)
    grid = grid[cut_rows:cut_rows + height, cut_columns:cut_columns + width]  # (height, width, D)
    if downsampled(height, width, side, max_tiles) != (height, width):
        height, width = downsampled(height, width, side, max_tiles)
        grid = functional.interpolate(grid.permute(2, 0, 1)[None], [height, width], mode="bilinear")[0]
        grid = grid.permute(1, 2, 0)  # (height, width, D)
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
    """A sample's visuals (PIL images; visual/video.py's Videos where `videos` is set) -> (pixel_values (tiles and
    frames, 3, tile, tile), one row per visual), and the token count and tower inputs of each row.

    A row is (height, width) for an image laid out by `aspect` (one of ASPECT_RATIOS); (height, width, frames) for a
    video of that many frames; (height, width, ONE_VIEW) for an image of a several-image sample under anyres_max,
    which LLaVA-OneVision pads to a square and shows as one view and a newline (its processor's rule)."""

    def __init__(self, tower_processor, aspect: str, num_image_tokens: int, pinpoints: list[list[int]] | None = None,
                 videos=None):
        self.aspect, self.base = check_aspect(aspect), num_image_tokens
        self.tower_processor = tower_processor
        self.variable = is_variable(aspect)
        self.max_tiles = anyres_max(aspect)
        self.videos = videos  # a video.VideoInputs, or None: the model takes no videos
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
            raise ValueError(f"--image_aspect_ratio {aspect} lays features out on a square grid, but this tower gives "
                             f"{num_image_tokens} per image (use --select_feature patch)")
        if self.max_tiles is None:
            self.processor = LlavaNextImageProcessor(image_grid_pinpoints=pinpoints, do_pad=False, **common)
            return
        self.processor = LlavaOnevisionImageProcessor(  # OneVision resizes its base view to the tile, no crop
            image_grid_pinpoints=pinpoints, size={"height": s["tile"], "width": s["tile"]}, resample=s["resample"],
            image_mean=s["image_mean"], image_std=s["image_std"])

    @staticmethod
    def frames(row) -> int:
        """A row's third field: a video's frames, ONE_VIEW, or 0 (an image, laid out by the layout)."""
        return row[2] if len(row) > 2 else 0

    def tokens(self, row) -> int:
        """Image (or video) tokens of a row."""
        kind = self.frames(row)
        if kind > 0:
            return self.videos.tokens(kind)
        if kind == ONE_VIEW:
            return self.base + 1
        if self.aspect == "native":
            rows, columns = native_grid(row[:2], self.patch_size, self.base)
            return rows * columns
        if not is_anyres(self.aspect):
            return self.base
        return anyres_tokens(row[:2], self.pinpoints, self.tile, self.side, self.base, self.max_tiles)

    def tiles(self, row) -> int:
        """Views the tower sees for a row: a video's frames; 1; or anyres's base view and the grid's tiles."""
        kind = self.frames(row)
        if kind > 0:
            return kind
        if kind == ONE_VIEW or not is_anyres(self.aspect):
            return 1
        rows, columns = grid_shape(row[:2], self.pinpoints, self.tile)
        return 1 + rows * columns

    def rows(self, shapes: list[tuple]) -> list[tuple]:
        """A sample's rows from its visuals' (height, width) or (height, width, frames): anyres_max shows each image
        of a several-image sample as one view (OneVision's rule)."""
        several = self.max_tiles is not None and sum(1 for shape in shapes if self.frames(shape) == 0) > 1
        return [(*shape[:2], ONE_VIEW) if several and self.frames(shape) == 0 else tuple(shape) for shape in shapes]

    def pack(self, features: torch.Tensor, row, newline: torch.Tensor | None) -> torch.Tensor:
        """One row's projected views (tiles(row), N, D) -> its token features (tokens(row), D)."""
        kind = self.frames(row)
        if kind > 0:
            return pack_video(features, self.videos.pooling, newline)
        if kind == ONE_VIEW:
            return torch.cat([features[0], newline.to(features.dtype)[None]])
        if not is_anyres(self.aspect):
            return features.flatten(0, 1)
        return pack_features(features, row[:2], self.pinpoints, self.tile, newline, self.max_tiles)

    def __call__(self, visuals) -> tuple[torch.Tensor, list[tuple]]:
        """One sample's visuals -> (pixel values of all their views, in order; their rows)."""
        shapes = [(v.height, v.width, len(v.indices)) if hasattr(v, "indices") else (v.height, v.width)
                  for v in visuals]
        if any(len(shape) > 2 for shape in shapes) and self.videos is None:
            raise ValueError("this model was built without videos (train it on data that holds videos)")
        rows = self.rows(shapes)
        if all(len(row) == 2 for row in rows):
            return self.images(visuals), rows
        # OneVision's processor shows each image of a several-image sample as one view, padded to a square
        shown = [v for v, row in zip(visuals, rows, strict=True) if self.frames(row) == ONE_VIEW]
        views = iter(self.processor(images=[shown], return_tensors="pt")["pixel_values"].float()) if shown else None
        pixels = [self.videos(v) if self.frames(row) > 0 else next(views) if self.frames(row) == ONE_VIEW else
                  self.images([v]) for v, row in zip(visuals, rows, strict=True)]  # views: (1, 3, tile, tile) each
        return torch.cat(pixels), rows

    def images(self, images) -> torch.Tensor:
        """PIL images -> their views (tiles, 3, H, W), one image after the other."""
        if self.aspect == "square":
            return self.tower_processor(images)
        if self.aspect == "pad":
            return self.processor(images=list(images), return_tensors="pt")["pixel_values"].float()
        if self.aspect == "native":  # (n, num_image_tokens, 3 * patch²): patches, padded to the same count
            return self.processor(images=list(images), max_num_patches=self.base,
                                  return_tensors="pt")["pixel_values"].float()
        # anyres: each image's tiles, base view first, then the next image's: (sum of tiles, 3, tile, tile)
        tiles = [self.processor(images=[image], return_tensors="pt")["pixel_values"][0] for image in images]
        return torch.cat(tiles).float()
