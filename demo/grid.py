"""A PNG grid of held-out images, each captioned with its question, the model's answer and ✓/✗."""

import glob
import os

from PIL import Image, ImageDraw, ImageFont

from common import atomic_file

from .synthetic import COLORS

CELL, TEXT_H, COLUMNS = 192, 78, 4
# Fonts with CJK glyphs on common systems; without one, Chinese answers are shown glossed in English.
CJK_FONTS = ["/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
             "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf", "/System/Library/Fonts/PingFang.ttc",
             "C:/Windows/Fonts/msyh.ttc"]


def find_font(size: int):
    """(font, has CJK glyphs): a CJK font if the system has one, else matplotlib's bundled DejaVu Sans."""
    for path in CJK_FONTS:
        if os.path.exists(path):
            return ImageFont.truetype(path, size), True
    import matplotlib

    dejavu = glob.glob(os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data/fonts/ttf/DejaVuSans.ttf"))
    return (ImageFont.truetype(dejavu[0], size) if dejavu else ImageFont.load_default()), False


def gloss(text: str) -> str:
    """Chinese colour names -> English, for fonts without CJK glyphs."""
    for english, (chinese, _) in COLORS.items():
        text = text.replace(chinese, english)
    return text.replace("和", " & ").replace("图中出现了哪些颜色？", "[zh] which colours?")


def draw_grid(rows: list[dict], path: str) -> str:
    """rows: eval_predictions.jsonl entries (images, question, prediction, reference)."""
    font, cjk = find_font(13)
    text = (lambda s: s) if cjk else gloss
    n_rows = (len(rows) + COLUMNS - 1) // COLUMNS
    grid = Image.new("RGB", (COLUMNS * CELL, n_rows * (CELL + TEXT_H)), "white")
    draw = ImageDraw.Draw(grid)
    for i, row in enumerate(rows):
        x, y = (i % COLUMNS) * CELL, (i // COLUMNS) * (CELL + TEXT_H)
        with Image.open(row["images"][0]) as image:
            grid.paste(image.convert("RGB").resize((CELL - 8, CELL - 8)), (x + 4, y + 4))
        ok = row["prediction"].strip() == row["reference"].strip()
        question = text(row["question"].replace("<|extra_0|>", ""))
        draw.text((x + 4, y + CELL), question, fill="black", font=font)
        draw.text((x + 4, y + CELL + 18), f"{'✓' if ok else '✗'} {text(row['prediction'])}",
                  fill=(0, 130, 0) if ok else (200, 0, 0), font=font)
        if not ok:
            draw.text((x + 4, y + CELL + 36), f"want: {text(row['reference'])}", fill="gray", font=font)
    with atomic_file(path) as tmp:
        grid.save(tmp)
    return path
