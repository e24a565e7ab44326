"""The CPU demo's task: one or two coloured shapes on a plain background, with exact answers.

Each image is asked about in Chinese (its colours) and in English (its shapes, left to right), and the data holds
two kinds of two-turn chats as well: both questions about the same image, one after the other (`chat`), and a
second image brought into the conversation with its own marker in the second turn (`second_image`).

    python -m demo.synthetic --test_img test_img      # the example images of test.sh
    python -m demo.synthetic --split data/sizes/80 --images 200 --size 80 --seed 7   # a held-out split at 80 px
"""

import argparse
import json
import os
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from common import IMAGE_MARKER

# English name -> (Chinese name, RGB)
COLORS = {
    "red": ("红色", (220, 40, 40)),
    "green": ("绿色", (40, 170, 60)),
    "blue": ("蓝色", (40, 80, 220)),
    "yellow": ("黄色", (235, 210, 40)),
    "purple": ("紫色", (140, 60, 170)),
    "orange": ("橙色", (245, 140, 30)),
    "white": ("白色", (245, 245, 245)),
    "black": ("黑色", (20, 20, 20)),
}
SHAPES = ("circle", "square", "triangle")
QUESTIONS = {"zh": "图中出现了哪些颜色？", "en": "What shapes are in the image?"}
BACKGROUND = (90, 170)  # each of R, G, B is drawn from this range
SIDE = (0.20, 0.35)  # bounding-box side, as a fraction of the image side
MIN_GAP = 0.25  # horizontal distance between two centres, as a fraction of the image width


@dataclass(frozen=True)
class Placed:
    shape: str
    color: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1, inclusive pixel coordinates

    @property
    def center_x(self) -> float:
        return (self.box[0] + self.box[2]) / 2


def overlaps(a: Placed, b: Placed) -> bool:
    return not (a.box[2] < b.box[0] or b.box[2] < a.box[0] or a.box[3] < b.box[1] or b.box[3] < a.box[1])


def sample_scene(rng: random.Random, size: int) -> tuple[tuple[int, int, int], list[Placed]]:
    """A background colour and 1-2 shapes of different colours, sorted left to right."""
    background = tuple(rng.randint(*BACKGROUND) for _ in range(3))
    n = rng.choice((1, 2))
    colors = rng.sample(list(COLORS), n)
    lo, hi = round(SIDE[0] * size), int(SIDE[1] * size)
    while True:
        shapes = []
        for color in colors:
            side = rng.randint(lo, hi)
            x0, y0 = rng.randint(0, size - side), rng.randint(0, size - side)
            shapes.append(Placed(rng.choice(SHAPES), color, (x0, y0, x0 + side - 1, y0 + side - 1)))
        if n == 1 or (abs(shapes[0].center_x - shapes[1].center_x) >= MIN_GAP * size
                      and not overlaps(shapes[0], shapes[1])):
            return background, sorted(shapes, key=lambda s: s.center_x)


def render(background, shapes: list[Placed], size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    for s in shapes:
        rgb = COLORS[s.color][1]
        x0, y0, x1, y1 = s.box
        if s.shape == "circle":
            draw.ellipse(s.box, fill=rgb)
        elif s.shape == "square":
            draw.rectangle(s.box, fill=rgb)
        else:  # triangle, apex up
            draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=rgb)
    return image


def answer(shapes: list[Placed], lang: str) -> str:
    if lang == "zh":
        return "和".join(COLORS[s.color][0] for s in shapes)
    return " and ".join(f"{'an' if s.color[0] in 'aeiou' else 'a'} {s.color} {s.shape}" for s in shapes)


def question(rng: random.Random, lang: str) -> str:
    """The image marker goes before or after the question, at random."""
    return f"{IMAGE_MARKER}{QUESTIONS[lang]}" if rng.random() < 0.5 else f"{QUESTIONS[lang]}{IMAGE_MARKER}"


CHAT_KINDS = ("chat", "second_image")
# Post-training (demo/posttrain.py). "one": SFT samples that name one of the shapes, drawn at random (the answer format,
# never a rule); "right": GRPO prompts whose gold answer is the shape on the right, a rule no SFT sample shows; "pairs":
# DPO pairs on the two-shape images, the shapes in their order chosen, swapped rejected.
ONE_QUESTION = "Name one shape in the image."
RIGHT_QUESTION = "Name the shape on the right."
POSTTRAIN_SOURCES = ("right", "pairs")


def vocabulary() -> list[str]:
    """The words of the task's texts, as Qwen's pre-tokenisation cuts them (English words with their leading space),
    for the tiny LLM's tokenizer (demo/bases.py): the questions, the answers' words (each Chinese colour name and 和
    apart, so that an answer is a few tokens, not one), and the chat template's role names."""
    english = ["What", " shapes", " are", " in", " the", " image", "?", "a", "an", " a", " an", " and"]
    english += [f" {word}" for word in (*COLORS, *SHAPES)]
    chinese = [QUESTIONS["zh"][:-1], QUESTIONS["zh"][-1], "和", *(zh for zh, _ in COLORS.values())]
    return ["system", "user", "assistant", *english, *chinese]


def write_split(folder: str, n_images: int, size: int, seed: int, chats: float = 0.5, one: bool = False,
                posttrain: bool = False) -> dict[str, str]:
    """n_images PNGs and their Q&A in the `conversations` source format that process_image.py reads: a zh and an
    en sample per image, and for a `chats` share of the images one two-turn chat of each kind (the first answer
    given, the second to learn or to score). one: the "one" source too; posttrain: the POSTTRAIN_SOURCES files too
    (drawn apart, so the other sources are the same either way). Returns {source: annotation file}."""
    rng = random.Random(seed)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    samples = {source: [] for source in (*QUESTIONS, *(CHAT_KINDS if chats else ()))}
    scenes = []
    for i in range(n_images):
        background, shapes = sample_scene(rng, size)
        name = f"images/{i:05d}.png"
        render(background, shapes, size).save(os.path.join(folder, name))
        scenes.append((name, shapes))
        for lang in QUESTIONS:
            samples[lang].append({"id": f"{i:05d}", "images": [name], "conversations": [
                {"role": "user", "content": question(rng, lang)},
                {"role": "assistant", "content": answer(shapes, lang)}]})
    for i, (name, shapes) in enumerate(scenes):
        if not chats or rng.random() >= chats:
            continue
        first, second = rng.sample(list(QUESTIONS), 2)  # one language, then the other
        samples["chat"].append({"id": f"{i:05d}", "images": [name], "conversations": [
            {"role": "user", "content": question(rng, first)}, {"role": "assistant", "content": answer(shapes, first)},
            {"role": "user", "content": QUESTIONS[second]}, {"role": "assistant", "content": answer(shapes, second)}]})
        other_name, other = scenes[rng.randrange(n_images)]
        lang_a, lang_b = rng.choice(list(QUESTIONS)), rng.choice(list(QUESTIONS))
        samples["second_image"].append({"id": f"{i:05d}", "images": [name, other_name], "conversations": [
            {"role": "user", "content": question(rng, lang_a)},
            {"role": "assistant", "content": answer(shapes, lang_a)},
            {"role": "user", "content": question(rng, lang_b)},
            {"role": "assistant", "content": answer(other, lang_b)}]})
    if one or posttrain:
        samples.update(posttrain_samples(scenes, random.Random(f"{seed}:posttrain"), one, posttrain))
    files = {}
    for lang, rows in samples.items():
        files[lang] = os.path.join(folder, f"annotations_{lang}.json")
        with open(files[lang], "w", encoding="utf-8") as f:
            json.dump(rows, f, ensure_ascii=False)
    return files


def posttrain_samples(scenes: list, rng: random.Random, one: bool, posttrain: bool) -> dict[str, list]:
    samples = {}
    if one:
        samples["one"] = [{"id": name[7:12], "images": [name], "conversations": [
            {"role": "user", "content": f"{IMAGE_MARKER}{ONE_QUESTION}"},
            {"role": "assistant", "content": answer([rng.choice(shapes)], "en")}]} for name, shapes in scenes]
    if posttrain:
        samples["right"] = [{"id": name[7:12], "images": [name], "conversations": [
            {"role": "user", "content": f"{IMAGE_MARKER}{RIGHT_QUESTION}"},
            {"role": "assistant", "content": answer(shapes[-1:], "en")}]} for name, shapes in scenes]
        samples["pairs"] = [{"id": name[7:12], "images": [name], "conversations": [
            {"role": "user", "content": question(rng, "en")},
            {"role": "assistant", "content": answer(shapes, "en"), "rejected": answer(shapes[::-1], "en")}]}
            for name, shapes in scenes if len(shapes) == 2]
    return samples


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test_img", default="test_img", help="folder for the example images")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--split", help="instead: write a data split (images and annotations) into this folder")
    parser.add_argument("--images", type=int, default=200, help="--split: how many images")
    parser.add_argument("--seed", type=int, default=0, help="--split: the draw")
    parser.add_argument("--chats", type=float, default=1.0, help="--split: share of images with two-turn chats")
    args = parser.parse_args()
    if args.split:
        for source, path in write_split(args.split, args.images, args.size, args.seed, args.chats).items():
            print(f"{source}: {path}")
        return
    rng = random.Random(2024)
    os.makedirs(args.test_img, exist_ok=True)
    for i in range(1, 4):
        background, shapes = sample_scene(rng, args.size)
        render(background, shapes, args.size).save(os.path.join(args.test_img, f"{i}.jpg"), quality=95)
        print(f"{args.test_img}/{i}.jpg: {answer(shapes, 'zh')} / {answer(shapes, 'en')}")


if __name__ == "__main__":
    main()
