"""Videos and LLaVA-OneVision's layout: decoding (frame indices by transformers' rule; mp4, gif and a frame folder
giving the same frames), the processor (pixels and token counts equal LlavaOnevisionVideoProcessor,
LlavaOnevisionImageProcessor and LlavaOnevisionProcessor, downsampling included), the model (logits equal
LlavaOnevisionForConditionalGeneration with our weights for a video, an anyres_max image and a mixed batch), and bad
input (an undecodable video is a counted bad sample; a marker without its video is one sentence)."""

import json

import av
import numpy as np
import pytest
import torch
from PIL import Image
from tiny import save_tiny_clip, save_tiny_qwen2
from transformers import (
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
)
from transformers.video_utils import VideoMetadata, default_sample_indices_fn

from common import IMAGE_MARKER, VIDEO_MARKER
from dataset import VLMCollator, VLMDataset
from dataset.collator import MODEL_INPUTS
from dataset.conversation import encode_conversation
from model import VisionLanguageModel, VLMConfig
from model.anyres import anyres_tokens
from model.export import to_llava
from visual.video import Video, load_video, sample_indices, video_info

# ---- clips ----


def moving_square(frames: int = 12, size: int = 48, direction: int = 1, colour=(255, 255, 0), seed: int = 0):
    """(frames, size, size, 3) uint8: a square crossing a black field left to right (direction 1) or back."""
    rng = np.random.default_rng(seed)
    top = int(rng.integers(0, size - 12))
    out = np.zeros((frames, size, size, 3), np.uint8)
    for t in range(frames):
        x = int(round(t * (size - 12) / max(frames - 1, 1)))
        x = x if direction > 0 else size - 12 - x
        out[t, top:top + 12, x:x + 12] = colour
    return out


def write_video(path, frames: np.ndarray, codec: str, fps: int = 12):
    """Lossless H.264 (yuv444, qp 0) for mp4 and lossless VP9 for webm, with PyAV; a GIF with Pillow (its palette is
    the clip's own few colours, where FFmpeg's GIF encoder dithers)."""
    if codec == "gif":
        first, *rest = [Image.fromarray(frame) for frame in frames]
        first.save(path, save_all=True, append_images=rest, duration=int(1000 / fps), loop=0)
        return str(path)
    options = {"libx264": ({"qp": "0"}, "yuv444p"), "libvpx-vp9": ({"lossless": "1"}, "yuv444p")}
    opts, pix_fmt = options[codec]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt, stream.options = frames.shape[2], frames.shape[1], pix_fmt, opts
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return str(path)


def write_folder(path, frames: np.ndarray):
    path.mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(path / f"{i:05d}.png")
    return str(path)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    return {"qwen2": save_tiny_qwen2(root / "qwen2"), "clip": save_tiny_clip(root / "clip"), "root": root}


def make(bases, aspect="anyres_max_9", **overrides):
    torch.manual_seed(1)
    config = VLMConfig(llm=bases["qwen2"], vision=bases["clip"], llm_mode="full", image_aspect_ratio=aspect,
                       **{"videos": True, "video_frames": 4, **overrides})
    model = VisionLanguageModel.build(config).apply_trainable_modes().eval()
    with torch.no_grad():
        for p in model.projector.parameters():
            p.normal_(0, 0.2)  # the projector and the newline should matter in every comparison
    return model


def picture(width, height, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8).numpy())


def clip_video(frames=4, size=40, seed=0) -> Video:
    pixels = moving_square(frames, size, seed=seed)
    return Video(pixels, list(range(frames)), [i / 12 for i in range(frames)], None)


# ---- decoding ----


@pytest.mark.parametrize("total,frames,fps,video_fps", [(100, 8, None, None), (7, 8, None, None), (300, 16, None, None),
                                                         (97, 32, None, None), (120, 1, None, None),
                                                         (300, None, 1.0, 30.0), (50, None, 2.0, 25.0),
                                                         (10, None, 0.1, 30.0)])
def test_frame_indices_follow_transformers_rule(total, frames, fps, video_fps):
    ours = sample_indices(total, frames, fps, video_fps)
    metadata = VideoMetadata(total_num_frames=total, fps=video_fps or 30.0)
    wanted = frames if frames is None else min(frames, total)  # more frames than the clip has: all of them
    theirs = default_sample_indices_fn(metadata, num_frames=wanted, fps=None if frames else fps)
    assert ours == theirs.tolist()
    assert ours == sorted(set(ours)) and 0 <= ours[0] and ours[-1] < total


def test_mp4_gif_webm_and_frame_folder_give_the_same_frames(tmp_path):
    frames = moving_square(12, 48)
    paths = {"mp4": write_video(tmp_path / "a.mp4", frames, "libx264"),
             "gif": write_video(tmp_path / "a.gif", frames, "gif"),
             "webm": write_video(tmp_path / "a.webm", frames, "libvpx-vp9"),
             "folder": write_folder(tmp_path / "frames", frames)}
    for name, path in paths.items():
        info = video_info(path)
        assert (info.frames, info.height, info.width) == (12, 48, 48), name
        video = load_video(path, frames=5)
        assert video.indices == [0, 2, 4, 7, 9], name
        assert len(video.timestamps) == 5 and video.timestamps == sorted(video.timestamps), name
        error = np.abs(video.frames.astype(int) - frames[video.indices].astype(int)).max()
        assert error <= 2, f"{name}: frames differ by up to {error}"
    assert load_video(paths["mp4"], frames=5).timestamps == pytest.approx([i / 12 for i in [0, 2, 4, 7, 9]])
    assert load_video(paths["mp4"], frames=None, fps=6).indices == [0, 2, 4, 6, 8, 10]  # 12 frames at 12 fps, 6/s


# ---- processor ----


def test_video_pixels_and_tokens_equal_onevision(bases):
    model = make(bases)
    video = load_video(write_video(bases["root"] / "p.mp4", moving_square(9, 40), "libx264"), frames=4)
    pixels, rows = model.image_inputs([video])
    reference = LlavaOnevisionVideoProcessor.from_pretrained(bases["clip"], size={"height": 32, "width": 32})
    theirs = reference(videos=[video.frames], return_tensors="pt")["pixel_values_videos"][0]
    torch.testing.assert_close(pixels, theirs, rtol=0, atol=1e-6)
    assert rows == [(40, 40, 4)]
    assert model.image_inputs.tokens(rows[0]) == 4 * 2 * 2 + 1  # 4x4 features pooled to 2x2 a frame, one newline
    _, processor = to_llava(model)
    assert isinstance(processor, LlavaOnevisionProcessor)
    text = f"{VIDEO_MARKER}what moves?"
    ids = model.processor([text], [[video]])["input_ids"][0].tolist()
    hf_ids = processor(text=[text.replace(VIDEO_MARKER, "<video>")], videos=[video.frames],
                       return_tensors="pt")["input_ids"][0].tolist()
    assert ids == hf_ids


@pytest.mark.parametrize("pooling,frames,expected", [(1, 8, 8 * 16 + 1), (2, 8, 8 * 4 + 1), (3, 16, 16 * 4 + 1),
                                                     (4, 32, 32 + 1)])
def test_video_token_count_by_frames_and_pooling(bases, pooling, frames, expected):
    model = make(bases, aspect="square", video_pooling=pooling, video_frames=frames)
    video = clip_video(frames)
    pixels, rows = model.image_inputs([video])
    assert pixels.shape == (frames, 3, 32, 32) and rows == [(40, 40, frames)]
    assert model.image_inputs.tokens(rows[0]) == expected
    with torch.no_grad():  # the features the model writes are as many as the tokens
        assert model.image_features(pixels, torch.tensor(rows)).shape == (expected, model.config.llm_hidden_size)


SHAPES = [(20, 70), (90, 25), (12, 9), (1400, 900), (64, 64), (32, 96), (200, 180)]


def test_anyres_max_pixels_and_tokens_equal_onevision(bases):
    model = make(bases)
    assert model.config.image_grid_pinpoints[:3] == [[32, 32], [32, 64], [32, 96]]  # OneVision's 1x1 ... 6x6
    assert len(model.config.image_grid_pinpoints) == 36
    images = [picture(w, h, k) for k, (w, h) in enumerate(SHAPES)]
    reference = LlavaOnevisionImageProcessor.from_pretrained(
        bases["clip"], image_grid_pinpoints=model.config.image_grid_pinpoints, size={"height": 32, "width": 32},
        crop_size=None, do_center_crop=None)
    _, processor = to_llava(model)
    downsampled = 0
    for image in images:  # one image a sample: its anyres grid
        ours, rows = model.image_inputs([image])
        theirs = reference(images=[image], return_tensors="pt")["pixel_values"][0]
        torch.testing.assert_close(ours, theirs[:len(ours)], rtol=0, atol=1e-6)
        text = f"{IMAGE_MARKER}?"
        ids = model.processor([text], [[image]])["input_ids"][0]
        hf = processor(text=[text.replace(IMAGE_MARKER, "<image>")], images=[image], return_tensors="pt")
        assert ids.tolist() == hf["input_ids"][0].tolist()
        full = anyres_tokens(rows[0], model.config.image_grid_pinpoints, 32, 4, 16)  # anyres: no downsampling
        downsampled += model.image_inputs.tokens(rows[0]) < full
    assert downsampled >= 2  # the large images are downsampled to about 9 tiles' worth
    # several images in one sample: each padded to a square, one view and a newline (OneVision's rule)
    ours, rows = model.image_inputs(images[:2])
    theirs = reference(images=[images[:2]], return_tensors="pt")["pixel_values"][:, 0]
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    assert [model.image_inputs.tokens(r) for r in rows] == [17, 17]
    text = f"{IMAGE_MARKER} or {IMAGE_MARKER}?"
    hf = processor(text=[text.replace(IMAGE_MARKER, "<image>")], images=[images[:2]], return_tensors="pt")
    assert model.processor([text], [images[:2]])["input_ids"][0].tolist() == hf["input_ids"][0].tolist()


# ---- model ----


def reference_inputs(model, batch, samples):
    """Our batch as LlavaOnevision takes it: image views (4-D) and videos (videos, frames, 3, H, W) apart, and the
    images per sample."""
    rows = [tuple(r) for r in batch["image_sizes"].tolist()]
    views = batch["pixel_values"].split([model.image_inputs.tiles(r) for r in rows])
    images = [v for v, r in zip(views, rows, strict=True) if len(r) < 3 or r[2] <= 0]
    videos = [v for v, r in zip(views, rows, strict=True) if len(r) > 2 and r[2] > 0]
    sizes = [r[:2] for r in rows if len(r) < 3 or r[2] <= 0]
    counts = [sum(1 for item in sample if not isinstance(item, Video)) for sample in samples]
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
            "pixel_values": torch.cat(images) if images else None,
            "image_sizes": torch.tensor(sizes) if sizes else None,
            "pixel_values_videos": torch.stack(videos) if videos else None,
            "batch_num_images": torch.tensor([c for c in counts if c]) if images else None}


@pytest.mark.parametrize("case", ["video", "anyres_max image", "mixed"])
def test_logits_equal_llava_onevision(bases, case):
    model = make(bases)
    onevision, _ = to_llava(model)
    onevision.eval()
    video = clip_video(4, 40, seed=1)
    if case == "video":
        texts, samples = [f"{VIDEO_MARKER}which way does it move?"], [[video]]
    elif case == "anyres_max image":
        texts, samples = [f"{IMAGE_MARKER}what is it?"], [[picture(1400, 900)]]
    else:  # a video, two images, one large image, text alone
        texts = [f"{VIDEO_MARKER}which way?", f"{IMAGE_MARKER} and {IMAGE_MARKER}: which is wider?",
                 f"describe {IMAGE_MARKER}", "no picture at all"]
        samples = [[video], [picture(90, 25, 2), picture(20, 70, 3)], [picture(200, 180, 4)], []]
    prompts = [model.processor.render([{"role": "user", "content": t}], add_generation_prompt=True) for t in texts]
    batch = model.processor(prompts, samples, padding_side="left")
    with torch.no_grad():
        ours = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     pixel_values=batch["pixel_values"], image_sizes=batch["image_sizes"]).logits
        theirs = onevision(**reference_inputs(model, batch, samples)).logits
    mask = batch["attention_mask"].bool()
    assert (ours[mask] - theirs[mask]).abs().max() <= 1e-5


# ---- bad input ----


def test_undecodable_video_is_a_counted_bad_sample(bases, tmp_path):
    model = make(bases, aspect="square")
    good = write_video(tmp_path / "good.mp4", moving_square(6, 32), "libx264")
    (tmp_path / "bad.mp4").write_bytes(b"\x00not a video at all" * 50)
    image_map = {"good": {"path": good}, "bad": {"path": str(tmp_path / "bad.mp4")},
                 "gone": {"path": str(tmp_path / "gone.mp4")}}
    turn = [{"role": "user", "content": f"{VIDEO_MARKER}what?"}, {"role": "assistant", "content": "a square"}]
    samples = [{"id": name, "images": [name], "conversations": turn} for name in ("bad", "gone", "good")]
    (tmp_path / "image_map.json").write_text(json.dumps(image_map))
    (tmp_path / "captions.json").write_text(json.dumps(samples))
    data = VLMDataset(str(tmp_path / "image_map.json"), str(tmp_path / "captions.json"), model.processor,
                      store=False, progress=False)
    item = data[0]
    assert item["id"] == "good" and [s[0] for s in item["skipped"]] == ["bad", "gone"]
    assert "cannot decode video" in item["skipped"][0][1] and "not found" in item["skipped"][1][1]
    assert item["pixel_values"].shape == (4, 3, 32, 32) and item["image_sizes"] == [(32, 32, 4)]
    n_video = sum(1 for i in item["input_ids"].tolist() if i == model.video_token_id)
    assert n_video == 4 * 4 + 1 and data.token_length(2) == len(item["input_ids"])


def test_marker_that_names_the_wrong_kind_is_a_bad_sample(bases, tmp_path):
    model = make(bases, aspect="square")
    picture(40, 30).save(tmp_path / "a.png")
    (tmp_path / "image_map.json").write_text(json.dumps({"a": {"path": str(tmp_path / "a.png")}}))
    turn = [{"role": "user", "content": f"{VIDEO_MARKER}what?"}, {"role": "assistant", "content": "x"}]
    good = [{"role": "user", "content": f"{IMAGE_MARKER}what?"}, {"role": "assistant", "content": "x"}]
    (tmp_path / "captions.json").write_text(json.dumps([{"id": "v", "images": ["a"], "conversations": turn},
                                                        {"id": "i", "images": ["a"], "conversations": good}]))
    data = VLMDataset(str(tmp_path / "image_map.json"), str(tmp_path / "captions.json"), model.processor,
                      store=False, progress=False)
    item = data[0]
    assert item["id"] == "i" and "asks for a video" in item["skipped"][0][1]


# ---- frame order ----


def sliding_square(frames: int, size: int, direction: int, colour, rng) -> np.ndarray:
    """An 8 px square sliding right (or left) at a random speed (2 to 6 px a frame) from a random place that keeps it
    in the field: where a clip starts, and where any one of its frames stands, overlaps between the two directions,
    so telling them apart takes comparing frames."""
    speed = int(rng.integers(2, 7))
    span = speed * (frames - 1)
    start = int(rng.integers(0, size - 8 - span + 1))
    top = int(rng.integers(0, size - 8))
    out = np.zeros((frames, size, size, 3), np.uint8)
    for t in range(frames):
        x = start + speed * t if direction > 0 else start + span - speed * t
        out[t, top:top + 8, x:x + 8] = colour
    return out


def direction_items(model, n: int, seed: int, frames: int = 4):
    """n clips (half moving right, half left) at random places and colours, as training items and their answers."""
    rng = np.random.default_rng(seed)
    items, answers = [], []
    for k in range(n):
        direction = 1 if k % 2 == 0 else -1
        colour = tuple(int(c) for c in rng.integers(120, 256, 3))
        pixels = sliding_square(frames, 32, direction, colour, rng)
        video = Video(pixels, list(range(frames)), [t / 4 for t in range(frames)], None)
        answer = "right" if direction > 0 else "left"
        messages = [{"role": "user", "content": f"{VIDEO_MARKER}which way does it move?"},
                    {"role": "assistant", "content": answer}]
        views, rows = model.image_inputs([video])
        ids, labels = encode_conversation(model.processor, messages, rows)
        items.append({"id": str(k), "input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                      "pixel_values": views, "image_sizes": rows, "video": video})
        answers.append(answer)
    return items, answers


def answers(model, videos) -> list[str]:
    conversations = [[{"role": "user", "content": f"{VIDEO_MARKER}which way does it move?"}] for _ in videos]
    return model.answer(conversations, [[v] for v in videos], max_new_tokens=6)


def test_frame_order_is_learned_and_reversal_flips_the_answer(bases):
    """A tiny model (frozen random tower, projector and LLM trained) learns which way a square slides from 4 frames,
    on held-out clips, and answers the other way when their frames are reversed. Pooling 1 (the 4x4 grid of this
    32 px tower): pooled to 2x2 it did not learn within 400 steps."""
    torch.manual_seed(0)
    config = VLMConfig(llm=bases["qwen2"], vision=bases["clip"], llm_mode="full", videos=True, video_frames=4,
                       video_pooling=1)
    model = VisionLanguageModel.build(config).apply_trainable_modes()
    model.train()
    train_items, _ = direction_items(model, 1024, seed=0)
    held_out, truth = direction_items(model, 100, seed=1)
    collate = VLMCollator(model.tokenizer.pad_token_id or 0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(1000):
        batch = collate([train_items[i] for i in torch.randperm(len(train_items), generator=g)[:16].tolist()])
        inputs = {k: batch[k] for k in MODEL_INPUTS if batch.get(k) is not None}
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    said = answers(model, [item["video"] for item in held_out])
    accuracy = sum(a == t for a, t in zip(said, truth, strict=True)) / len(truth)
    reversed_said = answers(model, [item["video"].reversed() for item in held_out])
    flipped = sum(a != r and r in ("left", "right") for a, r in zip(said, reversed_said, strict=True)) / len(said)
    print(f"frame order: loss {losses[0]:.3f} -> {losses[-1]:.3f}, held-out accuracy {accuracy:.0%}, "
          f"reversal flips {flipped:.0%}")
    assert losses[-1] < 0.1 * losses[0] and accuracy >= 0.9 and flipped >= 0.9


# ---- training and test.py ----


def write_video_dataset(folder, n=16):
    """Clips sliding right or left (mp4, gif and frame folders) and still images, mixed: 'right', 'left', 'still'."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    image_map, samples = {}, []
    for k in range(n):
        direction = 1 if k % 2 == 0 else -1
        frames = sliding_square(4, 32, direction, (255, 255, 0), rng)
        kind = ("mp4", "gif", "folder")[k % 3]
        if kind == "folder":
            path = write_folder(folder / f"v{k}", frames)
        else:
            path = write_video(folder / f"v{k}.{kind}", frames, "libx264" if kind == "mp4" else "gif")
        image_map[f"v{k}"] = {"path": path}
        samples.append({"id": f"v{k}", "images": [f"v{k}"], "conversations": [
            {"role": "user", "content": f"{VIDEO_MARKER}which way?"},
            {"role": "assistant", "content": "right" if direction > 0 else "left"}]})
        if k % 4 == 0:  # a still image beside it, and a sample holding both
            picture(40, 30, k).save(folder / f"i{k}.png")
            image_map[f"i{k}"] = {"path": str(folder / f"i{k}.png")}
            samples.append({"id": f"i{k}", "images": [f"i{k}"], "conversations": [
                {"role": "user", "content": f"{IMAGE_MARKER}which way?"}, {"role": "assistant", "content": "still"}]})
            samples.append({"id": f"b{k}", "images": [f"i{k}", f"v{k}"], "conversations": [
                {"role": "user", "content": f"{IMAGE_MARKER} then {VIDEO_MARKER}: which moves?"},
                {"role": "assistant", "content": "the second"}]})
    (folder / "image_map.json").write_text(json.dumps(image_map))
    (folder / "captions.json").write_text(json.dumps(samples))
    return str(folder / "image_map.json"), str(folder / "captions.json")


@pytest.fixture(scope="module")
def video_data(bases, tmp_path_factory):
    from tiny import save_tiny_qwen

    root = tmp_path_factory.mktemp("video_data")
    return {"qwen": save_tiny_qwen(root / "qwen"), "data": write_video_dataset(root / "data"), "root": root}


def video_run_args(bases, video_data, out, steps, *extra):
    image_map, captions = video_data["data"]
    return ["--base_language_model", video_data["qwen"], "--base_vision_model", bases["clip"], "--image_map",
            image_map, "--captions_file", captions, "--output_dir", str(out), "--max_steps", str(steps),
            "--per_device_train_batch_size", "4", "--learning_rate", "3e-3", "--lora_rank", "8", "--logging_steps",
            "1", "--save_steps", "4", "--report_to", "none", "--dataloader_num_workers", "0", "--seed", "3",
            "--disable_tqdm", "true", "--image_aspect_ratio", "anyres_max_9", "--video_frames", "4", *extra]


@pytest.mark.parametrize("packing", [False, True])
def test_training_on_videos_and_images_learns_resumes_and_reloads(bases, video_data, tmp_path, packing):
    from runs import losses
    from test_training import CrashAfterSave

    import train
    from model import load_checkpoint

    extra = ("--packing", "--max_length", "512") if packing else ()
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    assert train.main(video_run_args(bases, video_data, straight, 8, *extra)) == 0
    history = losses(straight)
    assert history[-1] < history[0] - 0.1, history
    model = load_checkpoint(str(straight))
    assert model.config.videos and model.config.video_token == VIDEO_MARKER  # QWen's own reserved token
    assert model.config.image_aspect_ratio == "anyres_max_9"
    with pytest.raises(KeyboardInterrupt):
        train.main(video_run_args(bases, video_data, crashed, 8, *extra), callbacks=[CrashAfterSave(4)])
    assert train.main(video_run_args(bases, video_data, crashed, 8, *extra)) == 0
    assert max(abs(a - b) for a, b in zip(losses(crashed), history, strict=True)) < 1e-5
    again = load_checkpoint(str(crashed))
    video = load_video(json.loads(open(video_data["data"][0]).read())["v0"]["path"], frames=4)
    batch = model.processor([f"{VIDEO_MARKER}which way?"], [[video]])
    with torch.no_grad():
        a = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_sizes")}).logits
        b = again(**{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_sizes")}).logits
    assert (a - b).abs().max() < 1e-5


@pytest.fixture(scope="module")
def video_checkpoint(bases, video_data):
    from model import save_checkpoint

    torch.manual_seed(0)
    config = VLMConfig(llm=video_data["qwen"], vision=bases["clip"], llm_mode="full", videos=True, video_frames=4,
                       image_aspect_ratio="anyres_max_9")
    model = VisionLanguageModel.build(config).apply_trainable_modes()
    folder = video_data["root"] / "ckpt"
    save_checkpoint(model, str(folder))
    return str(folder), json.loads(open(video_data["data"][0]).read())


def test_test_py_answers_about_a_video_and_an_image(video_checkpoint, monkeypatch, capsys):
    import test as test_cli

    folder, image_map = video_checkpoint
    seen = []
    original = VisionLanguageModel.generate

    def spy(self, input_ids, attention_mask=None, pixel_values=None, image_sizes=None, **kwargs):
        seen.append(image_sizes.tolist())
        return original(self, input_ids, attention_mask, pixel_values, image_sizes=image_sizes, **kwargs)

    monkeypatch.setattr(VisionLanguageModel, "generate", spy)
    argv = ["--model_weights", folder, "--max_new_tokens", "3", "--no_stream"]
    assert test_cli.main([*argv, "--video_path", image_map["v0"]["path"], "--image_path", image_map["i0"]["path"],
                          "--prompt", f"{IMAGE_MARKER} and {VIDEO_MARKER}?"]) == 0
    assert seen[-1] == [[30, 40, 0], [32, 32, 4]]  # the image, then the video's 4 frames, in the prompt's order
    assert test_cli.main([*argv, "--video_path", image_map["v3"]["path"], "--prompt", "which way?"]) == 0
    assert seen[-1] == [[32, 32, 4]]  # a prompt without a marker: the video goes first
    assert "go before the question" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing", "markers"])
def test_test_py_refuses_bad_video_input_in_one_sentence(video_checkpoint, tmp_path, capsys, case):
    import test as test_cli

    folder, image_map = video_checkpoint
    if case == "missing":
        argv = ["--video_path", str(tmp_path / "nowhere.mp4"), "--prompt", "what?"]
    else:
        argv = ["--video_path", image_map["v0"]["path"], "--prompt", f"{VIDEO_MARKER}{VIDEO_MARKER} twice?"]
    assert test_cli.main(["--model_weights", folder, *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert ("not found" in err[0]) if case == "missing" else ("2 video marker(s)" in err[0])


# ---- converting LLaVA-Video-178K / OneVision data ----


def test_llava_video_entries_convert_and_process_image_records_frames(tmp_path):
    from dataprocess.pipeline import load_config, process

    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "a.mp4", moving_square(12, 32), "libx264")
    write_folder(videos / "b", moving_square(5, 32))
    (videos / "broken.mp4").write_bytes(b"\x00" * 100)
    entries = [  # LLaVA-Video-178K marks the video with <image>; OneVision's video entries with <video>
        {"id": "a", "video": "a.mp4", "conversations": [{"from": "human", "value": "<image>\nWhat moves?"},
                                                         {"from": "gpt", "value": "A square."}]},
        {"id": "b", "video": "b", "conversations": [{"from": "human", "value": "<video>\nHow many frames?"},
                                                     {"from": "gpt", "value": "Five."}]},
        {"id": "c", "video": "broken.mp4", "conversations": [{"from": "human", "value": "<image>\n?"},
                                                              {"from": "gpt", "value": "x"}]},
        {"id": "d", "video": "gone.mp4", "conversations": [{"from": "human", "value": "<image>\n?"},
                                                            {"from": "gpt", "value": "x"}]}]
    (tmp_path / "llava_video.json").write_text(json.dumps(entries))
    (tmp_path / "config.yaml").write_text(json.dumps({
        "output_dir": str(tmp_path / "out"), "workers": 1,
        "sources": [{"type": "llava", "annotations": str(tmp_path / "llava_video.json"), "image_dir": str(videos)}]}))
    report = process(load_config(str(tmp_path / "config.yaml")), progress=False)
    image_map = json.loads((tmp_path / "out" / "image_map.json").read_text())
    captions = json.loads((tmp_path / "out" / "captions.json").read_text())
    assert [s["id"].split("/")[-1] for s in captions] == ["a", "b"]
    assert all(s["conversations"][0]["content"].startswith(VIDEO_MARKER) for s in captions)
    entries = {k.split("/")[-1]: v for k, v in image_map.items()}
    assert (entries["a.mp4"]["frames"], entries["a.mp4"]["duration"]) == (12, 1.0)
    assert (entries["b"]["frames"], entries["b"]["duration"]) == (5, 5.0)  # a frame folder counts as 1 fps
    (only,) = report.values()
    assert (only["images_corrupt"], only["images_missing"], only["samples_dropped"]) == (1, 1, 2)
