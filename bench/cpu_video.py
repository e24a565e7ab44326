"""Videos on the CPU, in one run:

- tokens and peak memory per video against frames (8, 16, 32) and --video_pooling (1, 2), with a 224 px CLIP-style
  tower (patch 16: a 14 x 14 grid a frame, pooled by 2 to 7 x 7): a training step on one video sample;
- our training step against transformers' LlavaOnevisionForConditionalGeneration with the same weights (through
  the export) and the same batch: one 8-frame video sample and one anyres_max_9 image sample;
- decoding: frames per second the training DataLoader delivers (PyAV) with 1 and 2 workers, and PyAV against
  torchcodec in one process where torchcodec loads (it needs FFmpeg's shared libraries; PyAV's wheels carry them).

Each model variant runs in a process of its own, so its peak RSS is its own: forward + backward + AdamW (LLM and
projector trained, fp32), median step time and the peak resident memory during the steps.

    python bench/cpu_video.py [--steps 3] [--vocab 151936] [--clips 16]
"""

import argparse
import gc
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import LlavaOnevisionForConditionalGeneration  # noqa: E402

from bench.common import (  # noqa: E402
    adamw_step_stats,
    emit,
    in_own_process,
    machine,
    table,
    tmpdir,
    write_bases,
)
from common import IMAGE_MARKER, VIDEO_MARKER  # noqa: E402
from model import VisionLanguageModel, VLMConfig, save_checkpoint  # noqa: E402
from model.export import export  # noqa: E402
from visual.video import Video, load_video  # noqa: E402

FRAMES, POOLINGS = (8, 16, 32), (1, 2)


def build(root: str, vocab: int, frames: int, pooling: int, aspect: str = "square") -> VisionLanguageModel:
    llm, vision = write_bases(root, vocab=vocab)  # 224 px, patch 16 CLIP-style tower; a 4-layer 512-wide Qwen2
    torch.manual_seed(0)
    config = VLMConfig(llm=llm, vision=vision, llm_mode="full", image_aspect_ratio=aspect, videos=True,
                       video_frames=frames, video_pooling=pooling)
    return VisionLanguageModel.build(config).apply_trainable_modes()


def clip(frames: int, seed: int = 0) -> Video:
    g = np.random.default_rng(seed)
    pixels = g.integers(0, 256, (frames, 360, 640, 3), dtype=np.uint8)
    return Video(pixels, list(range(frames)), [i / 30 for i in range(frames)], None)


def labelled(model, texts: list[str], visuals: list[list]) -> dict:
    """Each text asked, 24 tokens answered; labels on the answer and the template's tokens."""
    prompts = [model.processor.render([{"role": "user", "content": t + "x" * 40},
                                       {"role": "assistant", "content": "y" * 24}]) for t in texts]
    batch = model.processor(prompts, visuals, padding_side="right")
    visual = torch.isin(batch["input_ids"], torch.tensor(sorted(model.processor.visual_token_ids)))
    batch["labels"] = batch["input_ids"].masked_fill(visual | (batch["attention_mask"] == 0), -100)
    return batch


def run_tokens(frames: int, pooling: int, steps: int, vocab: int) -> dict:
    model = build(tmpdir(), vocab, frames, pooling)
    batch = labelled(model, [VIDEO_MARKER], [[clip(frames)]])
    tokens = int((batch["input_ids"] == model.video_token_id).sum())
    return {**adamw_step_stats(model, batch, steps), "tokens_per_video": tokens}


def run_pair(variant: str, steps: int, vocab: int) -> dict:
    root = tmpdir()
    model = build(root, vocab, 8, 2, aspect="anyres_max_9")
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    batch = labelled(model, [VIDEO_MARKER, IMAGE_MARKER], [[clip(8)], [image]])
    if variant == "onevision":
        save_checkpoint(model, os.path.join(root, "ours"))
        export(os.path.join(root, "ours"), os.path.join(root, "onevision"), fmt="llava")
        rows = [tuple(r) for r in batch["image_sizes"].tolist()]
        views = batch["pixel_values"].split([model.image_inputs.tiles(r) for r in rows])
        del model
        gc.collect()
        model = LlavaOnevisionForConditionalGeneration.from_pretrained(os.path.join(root, "onevision"))
        model.model.vision_tower.requires_grad_(False)
        batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                 "labels": batch["labels"], "pixel_values_videos": views[0][None], "pixel_values": views[1],
                 "image_sizes": torch.tensor([rows[1][:2]]), "batch_num_images": torch.tensor([1])}
    return adamw_step_stats(model, batch, steps)


def write_clips(root: str, n: int) -> list[str]:
    """n mp4 clips: 10 s of 640 x 360 at 30 fps (H.264), noise over a moving gradient."""
    import av

    paths = []
    base = np.linspace(0, 255, 640, dtype=np.uint8)[None, :, None].repeat(360, 0).repeat(3, 2)
    for k in range(n):
        path = os.path.join(root, f"clip{k}.mp4")
        with av.open(path, "w") as container:
            stream = container.add_stream("libx264", rate=30)
            stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
            for t in range(300):
                frame = np.roll(base, 4 * t + k, axis=1)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
        paths.append(path)
    return paths


class Clips(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], frames: int):
        self.paths, self.frames = paths, frames

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return torch.from_numpy(load_video(self.paths[i], self.frames).frames)


def decode_rates(n: int, frames: int) -> dict:
    paths = write_clips(tmpdir(), n)
    rates = {}
    for workers in (1, 2):
        loader = torch.utils.data.DataLoader(Clips(paths, frames), batch_size=1, num_workers=workers)
        start = time.perf_counter()
        count = sum(batch.shape[1] for batch in loader)
        rates[f"pyav_loader_{workers}_workers"] = count / (time.perf_counter() - start)
    for backend in ("pyav", "torchcodec"):
        try:
            start = time.perf_counter()
            count = sum(len(load_video(p, frames, backend=backend).indices) for p in paths)
            rates[f"{backend}_one_process"] = count / (time.perf_counter() - start)
        except Exception as e:  # noqa: BLE001  (torchcodec without FFmpeg's shared libraries)
            rates[f"{backend}_one_process"] = f"unavailable: {str(e).splitlines()[0][:80]}"
    return rates


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--vocab", type=int, default=151936, help="LLM vocabulary (Qwen's: 151,936)")
    p.add_argument("--clips", type=int, default=16, help="decoding: mp4 clips of 300 frames each")
    p.add_argument("--only", help="(internal) tokens:FRAMES:POOLING or pair:VARIANT in this process")
    args = p.parse_args()
    if args.only:
        kind, *rest = args.only.split(":")
        emit(run_tokens(int(rest[0]), int(rest[1]), args.steps, args.vocab) if kind == "tokens" else
             run_pair(rest[0], args.steps, args.vocab))
        return
    common = ("--steps", str(args.steps), "--vocab", str(args.vocab))
    tokens = {f"{f}x{p}": in_own_process(__file__, "--only", f"tokens:{f}:{p}", *common)
              for f in FRAMES for p in POOLINGS}
    print(table([[str(f), str(p), str(tokens[f"{f}x{p}"]["tokens_per_video"]),
                  f"{tokens[f'{f}x{p}']['step_ms']:.0f} ms", f"{tokens[f'{f}x{p}']['peak_rss_mb']:.0f} MB"]
                 for f in FRAMES for p in POOLINGS],
                ["frames", "pooling", "tokens a video", "step", "peak RSS"]))
    pair = {v: in_own_process(__file__, "--only", f"pair:{v}", *common) for v in ("ours", "onevision")}
    print()
    print(table([[v, f"{r['step_ms']:.0f} ms", f"{r['peak_rss_mb']:.0f} MB"] for v, r in pair.items()],
                ["8-frame video + anyres_max_9 image", "step", "peak RSS"]))
    decoding = decode_rates(args.clips, 8)
    print()
    print(table([[k, f"{v:.0f}" if isinstance(v, float) else v] for k, v in decoding.items()],
                ["decoding (8 of 300 frames a clip, 640 x 360 H.264)", "frames/s"]))
    emit({"benchmark": "cpu_video", **machine(), "vocab": args.vocab, "tokens": tokens, "step": pair,
          "decoding": decoding})


if __name__ == "__main__":
    main()
