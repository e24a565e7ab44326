"""The image layouts' names and AnyRes grids as flags and config files spell them (no torch: config.py and the
command lines read them). The layouts themselves are in anyres.py.

`--image_grid_pinpoints` takes three spellings of the same list of grids:
    336x672,672x336,...            ours: height x width in pixels
    [(672, 336), (336, 672), ...]  LLaVA-NeXT's: (width, height) pixel pairs, as its select_best_resolution reads them
    (1x1),...,(6x6)                LLaVA-OneVision's: tile counts (width x height); with `...` every grid from the
                                   first to the last, as LLaVA-NeXT's train.py expands it, else just those listed
"""

import ast
import re

ASPECT_RATIOS = ("square", "pad", "anyres", "anyres_max_N", "native")
TILES = re.compile(r"\((\d+)\s*x\s*(\d+)\)")
ANYRES_MAX = re.compile(r"anyres_max_([1-9]\d*)$")
ONEVISION_GRIDS = 6  # anyres_max's default grids: LLaVA-OneVision's 1x1 ... 6x6 tiles


def anyres_max(aspect: str) -> int | None:
    """N of LLaVA-OneVision's `anyres_max_N` (a tile grid whose features are downsampled to about N tiles' worth);
    None for the other layouts."""
    match = ANYRES_MAX.match(aspect)
    return int(match.group(1)) if match else None


def check_aspect(aspect: str) -> str:
    if aspect not in ASPECT_RATIOS[:3] + ASPECT_RATIOS[4:] and anyres_max(aspect) is None:
        raise ValueError(f"--image_aspect_ratio must be one of {', '.join(ASPECT_RATIOS)} (e.g. anyres_max_9), not "
                         f"{aspect!r}")
    return aspect


def is_anyres(aspect: str) -> bool:
    """AnyRes grids of tiles: LLaVA-NeXT's anyres, or OneVision's anyres_max_N."""
    return aspect == "anyres" or anyres_max(aspect) is not None


def is_variable(aspect: str) -> bool:
    """Whether an image's token count depends on its size."""
    return is_anyres(aspect) or aspect == "native"


def onevision_pinpoints(tile: int) -> list[list[int]]:
    """LLaVA-OneVision's grids (its config's order): 1x1 ... 6x6 tiles, height x width in pixels."""
    counts = range(1, ONEVISION_GRIDS + 1)
    return [[h * tile, w * tile] for h in counts for w in counts]


def default_pinpoints(tile: int) -> list[list[int]]:
    """LLaVA-NeXT's grids for a tower of `tile` px: 1x2, 2x1, 2x2, 3x1 and 1x3 tiles (height x width)."""
    return [[tile, 2 * tile], [2 * tile, tile], [2 * tile, 2 * tile], [3 * tile, tile], [tile, 3 * tile]]


def _read(text: str, tile: int) -> list[list[int]]:
    """The grids as [height, width] in pixels, in the order written; [] for text of no known form."""
    text = text.strip()
    if text.startswith("[") or text.startswith("(") and "," in text.split(")")[0]:  # LLaVA's Python literal
        try:
            pairs = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return []
        pairs = pairs if isinstance(pairs, (list, tuple)) and all(isinstance(p, (list, tuple)) for p in pairs) else []
        return [[int(height), int(width)] for width, height in pairs] if all(len(p) == 2 for p in pairs) else []
    if text.startswith("("):  # OneVision's tile counts
        counts = [(int(w), int(h)) for w, h in TILES.findall(text)]
        if not counts or TILES.sub("", text).replace(",", "").replace("...", "").strip():
            return []
        if "..." in text:
            (w0, h0), (w1, h1) = counts[0], counts[-1]
            counts = [(w, h) for w in range(w0, w1 + 1) for h in range(h0, h1 + 1)]
        return [[h * tile, w * tile] for w, h in counts]
    try:
        return [[int(v) for v in item.lower().split("x")] for item in text.replace(" ", "").split(",") if item]
    except ValueError:
        return []


def parse_pinpoints(text: str | None, tile: int, aspect: str = "anyres") -> list[list[int]]:
    """`--image_grid_pinpoints` in any of the three spellings -> [[height, width], ...] in pixels, multiples of the
    tile; none gives the default list (LLaVA-NeXT's, or OneVision's for anyres_max_N)."""
    if not text:
        return onevision_pinpoints(tile) if anyres_max(aspect) else default_pinpoints(tile)
    points = _read(text, tile)
    if not points or any(len(p) != 2 or p[0] % tile or p[1] % tile or min(p) <= 0 for p in points):
        raise ValueError(f"--image_grid_pinpoints takes HxW sizes in pixels, multiples of the tower's {tile} px "
                         f"(e.g. {tile}x{2 * tile},{2 * tile}x{tile}), LLaVA-NeXT's [({2 * tile}, {tile}), ...] or "
                         f"OneVision's (1x1),...,(3x3), not {text!r}")
    return points
