"""Reading images as RGB, whatever mode they were saved in, from files or from members of tar shards (their
references: common/images.py)."""

from PIL import Image, UnidentifiedImageError

from common.images import open_source


class ImageLoadError(ValueError):
    """An image file is missing or cannot be decoded; the message names the file."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Grayscale, palette, CMYK and 16-bit images become RGB; transparency is composited on white,
    since a plain convert would show whatever colour the transparent pixels happen to store."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grayscale: scale to 8 bits before RGB
        image = image.point(lambda v: v / 256).convert("L")
    return image.convert("RGB")


def load_image(path) -> Image.Image:
    try:
        with Image.open(open_source(path) if isinstance(path, str) else path) as image:
            image.load()  # decode now, so a truncated file fails here and not in the model
            return to_rgb(image)
    except FileNotFoundError:
        raise ImageLoadError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageLoadError(f"cannot decode image {path}: {e}") from None


def image_size(path) -> tuple[int, int]:
    """(height, width) from the file's header, without decoding its pixels."""
    try:
        with Image.open(open_source(path) if isinstance(path, str) else path) as image:
            return image.height, image.width
    except FileNotFoundError:
        raise ImageLoadError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageLoadError(f"cannot decode image {path}: {e}") from None
