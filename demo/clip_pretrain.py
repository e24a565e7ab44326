"""Stage 0 of the demo: a tiny CLIP pretrained contrastively on the synthetic images and their captions, with
open_clip's own model and CLIP's symmetric loss (each image also set against its caption with left and right
swapped), then saved as a vision-tower folder that `--base_vision_model` loads (and frozen there), as real VLMs
freeze an encoder that was pretrained.

The image tower is open_clip's ModifiedResNet (CLIP's ResNet) at a small width: convolutions read shape and
colour from 64 px images within a minute, which a random or briefly trained tiny ViT does not (docs/demo.md).
"""

import json
import math
import os
import re
import time

import torch
from open_clip.model import CLIP
from open_clip.transform import PreprocessCfg, image_transform_v2
from tqdm import tqdm

from visual import FeatureSelection, load_image
from visual.open_clip_tower import OpenCLIPVisionTower

# open_clip model config: ModifiedResNet (layers as a list) and a small text transformer; the text tower's vocabulary
# and context are those of the captions' word tokenizer (WordTokenizer), set when the model is made
TINY_CLIP = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": None, "width": 128, "heads": 4, "layers": 2},
}
WORD = re.compile(r"\w+|[^\w\s]")


class WordTokenizer:
    """A tokenizer fitted to the captions' few words (about 20, against the 49,408 BPE tokens of CLIP's, whose
    embedding and optimizer state would be most of the text tower). The ids follow open_clip's text tower, which
    pools at the highest id of a row: padding 0, start 1, unknown 2, the words, and end-of-text last."""

    def __init__(self, captions: list[str], context_length: int):
        words = sorted({w for c in captions for w in WORD.findall(c.lower())})
        self.ids = {w: i + 3 for i, w in enumerate(words)}
        self.end = len(words) + 3
        self.vocab_size, self.context_length = self.end + 1, context_length

    def __call__(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in zip(out, texts, strict=True):
            ids = [1, *(self.ids.get(w, 2) for w in WORD.findall(text.lower()))][: self.context_length - 1] + [self.end]
            row[: len(ids)] = torch.tensor(ids)
        return out
PREPROCESS = {"size": 64, "mode": "RGB", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
              "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0}


def caption(answer: str) -> str:
    """The English answer with position words: "left: a red circle; right: a blue square"."""
    parts = answer.split(" and ")
    return answer if len(parts) == 1 else f"left: {parts[0]}; right: {parts[1]}"


def swapped(caption_text: str) -> str | None:
    """The caption with left and right exchanged (a hard negative: the same words, the other order); None for one
    shape."""
    if not caption_text.startswith("left: "):
        return None
    left, right = caption_text.removeprefix("left: ").split("; right: ")
    return f"left: {right}; right: {left}"


def captioned_images(annotations: str, image_dir: str) -> list[tuple[str, str]]:
    """(image path, caption) pairs from the demo's English annotations: each shape and its colour, left and
    right, which is what the encoder should learn to tell apart."""
    with open(annotations, encoding="utf-8") as f:
        rows = json.load(f)
    return [(os.path.join(image_dir, r["images"][0]), caption(r["conversations"][-1]["content"])) for r in rows]


def load_pairs(pairs, transform, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """All images through the transform once (B, 3, 64, 64), all captions tokenised (B, L): the steps then
    only index tensors (6,000 images are 300 MB in fp32)."""
    images = torch.stack([transform(load_image(path)) for path, _ in tqdm(pairs, desc="stage 0: images",
                                                                           mininterval=5, leave=False)])
    return images, tokenizer([caption for _, caption in pairs])


@torch.no_grad()
def retrieval_accuracy(model, pairs, transform, tokenizer) -> float:
    """Zero-shot: each held-out image picks the closest of all distinct held-out captions; top-1 exact."""
    model.eval()
    captions = sorted({c for _, c in pairs})
    text = model.encode_text(tokenizer(captions), normalize=True)  # (n_captions, E)
    right = 0
    for start in range(0, len(pairs), 256):
        chunk = pairs[start:start + 256]
        images = model.encode_image(torch.stack([transform(load_image(p)) for p, _ in chunk]), normalize=True)
        picked = (images @ text.T).argmax(-1)  # (n,)
        right += sum(captions[k] == c for k, (_, c) in zip(picked.tolist(), chunk, strict=True))
    return right / len(pairs)


def contrastive_loss(model, out, negatives: torch.Tensor | None) -> torch.Tensor:
    """CLIP's symmetric loss, each image also set against the swapped captions of the batch's two-shape images
    (hard negatives, text features (n, E)): telling left from right is then the only way to pick its caption."""
    images, texts, scale = out["image_features"], out["text_features"], out["logit_scale"]  # (B, E), (B, E), ()
    candidates = texts if negatives is None else torch.cat([texts, negatives])  # (B + n, E)
    target = torch.arange(len(images))
    return (torch.nn.functional.cross_entropy(scale * images @ candidates.T, target)
            + torch.nn.functional.cross_entropy(scale * texts @ images.T, target)) / 2


def pretrain(train_pairs, test_pairs, out_folder: str, steps: int = 400, batch_size: int = 128, lr: float = 2e-3,
             seed: int = 0, progress: bool = True, hard_negatives: bool = True, width: int | None = None) -> dict:
    """Trains the tiny CLIP, saves its image tower to `out_folder`; returns the stage's figures."""
    torch.manual_seed(seed)
    tokenizer = WordTokenizer([c for _, c in train_pairs], TINY_CLIP["text_cfg"]["context_length"])
    config = {**TINY_CLIP, "text_cfg": {**TINY_CLIP["text_cfg"], "vocab_size": tokenizer.vocab_size},
              "vision_cfg": {**TINY_CLIP["vision_cfg"], "width": width or TINY_CLIP["vision_cfg"]["width"]}}
    model = CLIP(**config, output_dict=True)
    transform = image_transform_v2(PreprocessCfg(**PREPROCESS), is_train=False)
    images, texts = load_pairs(train_pairs, transform, tokenizer)
    flipped = [swapped(c) for _, c in train_pairs]
    has_flip = torch.tensor([f is not None for f in flipped])
    flipped = tokenizer([f or "" for f in flipped])  # (N, L); rows of one-shape captions are never used
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (
        1 + math.cos(math.pi * min(s, steps) / steps)))
    start, losses = time.time(), []
    generator = torch.Generator().manual_seed(seed)
    model.train()
    bar = tqdm(range(steps), desc="stage 0: CLIP", disable=not progress, mininterval=2)
    for step in bar:
        idx = torch.randint(0, len(images), (batch_size,), generator=generator)
        out = model(images[idx], texts[idx])
        two = idx[has_flip[idx]] if hard_negatives else idx[:0]
        negatives = model.encode_text(flipped[two], normalize=True) if len(two) else None
        loss = contrastive_loss(model, out, negatives)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    accuracy = retrieval_accuracy(model, test_pairs, transform, tokenizer)
    model_cfg = {**config, "quick_gelu": False}
    tower = OpenCLIPVisionTower(model.visual, model_cfg, PREPROCESS, FeatureSelection(select_layer=-2))
    tower.save_pretrained(out_folder)
    return {"steps": steps, "seconds": round(time.time() - start, 1), "loss_first": losses[0], "loss_last": losses[-1],
            "losses": losses, "zero_shot_top1": accuracy}
