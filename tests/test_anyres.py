"""Images at their own shape: LLaVA-1.5's pad and LLaVA-NeXT's AnyRes, and several images per conversation.

The references are transformers' own: LlavaImageProcessor(do_pad=True), LlavaNextImageProcessor and
LlavaNextProcessor (pixels and each image's token count), and LlavaNextForConditionalGeneration with our weights
(logits, one and several images of different shapes in a batch). Then training on mixed shapes, the newline vector
through save, load and resume, the exports, and test.py with two images."""

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from tiny import save_tiny_clip, save_tiny_qwen, save_tiny_qwen2, save_tiny_siglip
from transformers import (
    AutoProcessor,
    LlavaForConditionalGeneration,
    LlavaImageProcessor,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
)

import test as test_cli
import train
from common import IMAGE_MARKER
from model import VisionLanguageModel, VLMConfig, load_checkpoint, save_checkpoint
from model.checkpoint import load_trainable_weights
from model.export import export


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("anyres")
    return {"qwen": save_tiny_qwen(root / "qwen"), "qwen2": save_tiny_qwen2(root / "qwen2"),
            "clip": save_tiny_clip(root / "clip"), "siglip": save_tiny_siglip(root / "siglip"), "root": root}


def picture(width, height, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8).numpy())


# portrait, landscape, smaller than one tile (32 px), very large, and one of each grid's exact shape
SHAPES = [(20, 70), (90, 25), (12, 9), (1400, 900), (64, 64), (32, 96)]


def make(bases, aspect, llm="qwen2", vision="clip", **overrides):
    torch.manual_seed(1)
    config = VLMConfig(llm=bases[llm], vision=bases[vision], llm_mode="full", image_aspect_ratio=aspect, **overrides)
    model = VisionLanguageModel.build(config).apply_trainable_modes()
    with torch.no_grad():
        for p in model.projector.parameters():
            p.normal_(0, 0.2)  # the projector (and the newline) should matter in every comparison
    return model


@pytest.mark.parametrize("vision", ["clip", "siglip"])
def test_anyres_pixels_and_token_counts_equal_llava_next(bases, vision):
    model = make(bases, "anyres", vision=vision)
    pinpoints = model.config.image_grid_pinpoints
    assert pinpoints == [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]  # LLaVA-NeXT's list for a 32 px tower
    images = [picture(w, h, k) for k, (w, h) in enumerate(SHAPES)]
    reference = LlavaNextImageProcessor.from_pretrained(bases[vision], image_grid_pinpoints=pinpoints,
                                                        crop_size={"height": 32, "width": 32},
                                                        size={"shortest_edge": 32})
    ref = reference(images=images, return_tensors="pt")
    pixels, sizes = model.image_inputs(images)
    tiles = [model.image_inputs.tiles(s) for s in sizes]
    expected = torch.cat([ref["pixel_values"][i, :n] for i, n in enumerate(tiles)])
    assert pixels.shape == expected.shape and torch.allclose(pixels, expected, atol=1e-6)
    assert sizes == [tuple(s) for s in ref["image_sizes"].tolist()]
    prefix = model.vision_tower.prefix_tokens
    counter = LlavaNextProcessor(image_processor=reference, tokenizer=model.tokenizer, patch_size=8,
                                 vision_feature_select_strategy="default" if prefix else "full",
                                 num_additional_image_tokens=prefix, image_token="<image>")
    theirs = [int((counter(images=[im], text="<image>", return_tensors="pt")["input_ids"] == model.image_token_id)
                  .sum()) for im in images]
    ours = [model.image_inputs.tokens(s) for s in sizes]
    print(f"{vision}: image tokens per image {ours}, tiles {tiles}")
    assert ours == theirs and len(set(ours)) > 2


def test_llava_pinpoint_spellings_give_the_same_grids():
    """Ours (HxW px), LLaVA-NeXT's [(W, H), ...] and OneVision's (1x1),...,(NxN) name the same grids."""
    from model.layouts import parse_pinpoints

    ours = parse_pinpoints("336x672,672x336,672x672,1008x336,336x1008", 336)
    assert ours == parse_pinpoints(None, 336)  # LLaVA-NeXT's default list
    assert parse_pinpoints("[(672, 336), (336, 672), (672, 672), (336, 1008), (1008, 336)]", 336) == ours
    assert parse_pinpoints("[[672, 336]]", 336) == [[336, 672]]  # (width, height), as LLaVA reads them
    grids = {tuple(p) for p in parse_pinpoints("(1x1),...,(3x3)", 384)}
    assert grids == {(384 * h, 384 * w) for w in (1, 2, 3) for h in (1, 2, 3)}
    assert parse_pinpoints("(1x2),(2x1)", 336) == [[672, 336], [336, 672]]  # just those listed, without "..."
    square = parse_pinpoints("(1x1),...,(2x2)", 336)
    assert sorted(square) == sorted(parse_pinpoints("336x336,336x672,672x336,672x672", 336))
    for bad in ("(1x2", "[(1, 2, 3)]", "(1x1),(axb)", "336x500"):
        with pytest.raises(ValueError, match="--image_grid_pinpoints takes HxW sizes"):
            parse_pinpoints(bad, 336)


def test_pad_pixels_equal_llava_image_processor(bases):
    model = make(bases, "pad")
    images = [picture(w, h, k) for k, (w, h) in enumerate(SHAPES)]
    reference = LlavaImageProcessor.from_pretrained(bases["clip"], do_pad=True)
    pixels, _ = model.image_inputs(images)
    expected = reference(images=images, return_tensors="pt")["pixel_values"]
    assert torch.allclose(pixels, expected, atol=1e-6)
    # the padding is the processor's mean colour, which normalises to about 0: a wide image has such rows above
    wide = model.image_inputs([Image.new("RGB", (64, 16), (255, 255, 255))])[0][0]
    assert wide[:, 0].abs().max() < 0.02 and wide[:, 16].abs().min() > 1  # int(mean * 255): near 0
    assert [model.image_inputs.tokens((h, w)) for w, h in SHAPES] == [16] * len(SHAPES)  # pad keeps N per image


def logits(model, batch):
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items()}).logits


def test_anyres_logits_equal_llava_next_for_one_and_several_images(bases, tmp_path):
    model = make(bases, "anyres").eval()
    save_checkpoint(model, str(tmp_path / "ckpt"))
    export(str(tmp_path / "ckpt"), str(tmp_path / "next"), fmt="llava")
    reference = LlavaNextForConditionalGeneration.from_pretrained(tmp_path / "next").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "next")
    assert isinstance(processor, LlavaNextProcessor)
    assert reference.config.image_grid_pinpoints == model.config.image_grid_pinpoints
    assert torch.equal(reference.model.image_newline, model.projector.image_newline)
    cases = [
        [f"{IMAGE_MARKER}what is it?"],  # one image
        [f"{IMAGE_MARKER} and {IMAGE_MARKER}: which is wider?", f"a longer one, {IMAGE_MARKER} alone"],  # several
    ]
    shapes = [[(20, 70)], [(90, 25), (1400, 900), (12, 9)]]
    worst = 0.0
    for questions, dims in zip(cases, shapes, strict=True):
        texts = [model.processor.render([{"role": "user", "content": q}], add_generation_prompt=True)
                 for q in questions]
        images = [picture(w, h, k) for k, (w, h) in enumerate(dims)]
        per_text = [images[:texts[0].count(IMAGE_MARKER)], images[texts[0].count(IMAGE_MARKER):]][:len(texts)]
        ours = model.processor(texts, per_text, padding_side="left")
        theirs = processor(text=[t.replace(IMAGE_MARKER, "<image>") for t in texts], images=images, padding=True,
                           padding_side="left", return_tensors="pt")
        assert theirs["input_ids"].tolist() == ours["input_ids"].tolist()  # the same image-token counts, in place
        with torch.no_grad():
            ref = reference(**theirs).logits
        diff = (ref - logits(model, ours))[ours["attention_mask"].bool()].abs().max().item()
        worst = max(worst, diff)
    print(f"anyres: max |logit diff| vs LlavaNextForConditionalGeneration = {worst:.2g}")
    assert worst <= 1e-5


def test_pad_exports_to_llava_with_the_padding_processor(bases, tmp_path):
    model = make(bases, "pad").eval()
    save_checkpoint(model, str(tmp_path / "ckpt"))
    export(str(tmp_path / "ckpt"), str(tmp_path / "llava"), fmt="llava")
    processor = AutoProcessor.from_pretrained(tmp_path / "llava")
    assert processor.image_processor.do_pad
    reference = LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava").eval()
    text = model.processor.render([{"role": "user", "content": f"{IMAGE_MARKER}wide?"}], add_generation_prompt=True)
    image = picture(80, 20)
    ours = model.processor([text], [[image]])
    theirs = processor(text=[text.replace(IMAGE_MARKER, "<image>")], images=[image], return_tensors="pt")
    assert torch.allclose(theirs["pixel_values"], ours["pixel_values"], atol=1e-6)
    with torch.no_grad():
        assert (reference(**theirs).logits - logits(model, ours)).abs().max().item() <= 1e-5


def test_mismatched_markers_name_both_counts(bases):
    model = make(bases, "anyres")
    text = model.processor.render([{"role": "user", "content": f"{IMAGE_MARKER}{IMAGE_MARKER}?"}])
    with pytest.raises(ValueError, match="text 0 has 2 image tokens but 1 images"):
        model.processor([text], [[picture(20, 20)]])
    batch = model.processor([text], [[picture(20, 20), picture(40, 20)]])
    with pytest.raises(ValueError, match=r"holds \d+ image tokens but \d+ image features"):
        model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"][:3],
              image_sizes=torch.tensor([[20, 20]]))


# ---- training, saving, resuming ----

def write_shapes_dataset(folder, n=24):
    """Images of several shapes, one or two a sample: "Which is wider?" style questions about their sizes."""
    import os

    os.makedirs(folder, exist_ok=True)
    image_map, samples = {}, []
    for k, (w, h) in enumerate([(60, 20), (20, 60), (40, 40), (90, 30)]):
        path = os.path.join(folder, f"{k}.png")
        picture(w, h, k).save(path)
        image_map[str(k)] = {"path": path}
    for i in range(n):
        a, b = i % 4, (i + 1) % 4
        two = i % 3 == 0
        samples.append({"id": f"s{i}", "source": "shapes", "images": [str(a), str(b)] if two else [str(a)],
                        "conversations": [
                            {"role": "user", "content": f"{IMAGE_MARKER} vs {IMAGE_MARKER}?" if two else
                             f"{IMAGE_MARKER}wide or tall?"},
                            {"role": "assistant", "content": ["wide", "tall", "square", "wide"][a]}]})
    (folder / "image_map.json").write_text(json.dumps(image_map))
    (folder / "captions.json").write_text(json.dumps(samples))
    return str(folder / "image_map.json"), str(folder / "captions.json")


def run_args(bases, image_map, captions, out, steps, *extra):
    return ["--base_language_model", bases["qwen"], "--base_vision_model", bases["clip"], "--image_map", image_map,
            "--captions_file", captions, "--output_dir", str(out), "--max_steps", str(steps),
            "--per_device_train_batch_size", "4", "--learning_rate", "3e-3", "--lora_rank", "8", "--logging_steps",
            "1", "--save_steps", "4", "--report_to", "none", "--dataloader_num_workers", "0", "--seed", "3",
            "--disable_tqdm", "true", "--image_aspect_ratio", "anyres", *extra]


@pytest.mark.parametrize("packing", [False, True])
def test_training_on_mixed_shapes_learns_saves_and_resumes_the_newline(bases, tmp_path, packing):
    from test_training import CrashAfterSave

    image_map, captions = write_shapes_dataset(tmp_path / "data")
    extra = ("--packing", "--max_length", "400") if packing else ()
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    assert train.main(run_args(bases, image_map, captions, straight, 8, *extra)) == 0
    history = [h["loss"] for h in json.loads((straight / "trainer_state.json").read_text())["log_history"]
               if "loss" in h]
    assert history[-1] < history[0]
    saved = load_file(straight / "projector.safetensors")
    assert "image_newline" in saved and saved["image_newline"].shape == (64,)
    model = load_checkpoint(str(straight))
    assert torch.equal(model.projector.image_newline, saved["image_newline"])
    assert model.config.image_aspect_ratio == "anyres"
    # the newline trains (it follows the projector's learning rate) and resume restores it exactly
    fresh = load_checkpoint(str(straight / "checkpoint-4"))
    assert not torch.equal(fresh.projector.image_newline, saved["image_newline"])
    load_trainable_weights(fresh, str(straight))
    assert torch.equal(fresh.projector.image_newline, saved["image_newline"])
    with pytest.raises(KeyboardInterrupt):
        train.main(run_args(bases, image_map, captions, crashed, 8, *extra), callbacks=[CrashAfterSave(4)])
    assert train.main(run_args(bases, image_map, captions, crashed, 8, *extra)) == 0
    assert torch.equal(load_file(crashed / "projector.safetensors")["image_newline"], saved["image_newline"])


# ---- test.py with several images ----

@pytest.fixture(scope="module")
def anyres_checkpoint(bases):
    model = make(bases, "anyres", llm="qwen")
    folder = bases["root"] / "anyres_ckpt"
    save_checkpoint(model, str(folder))
    a, b = bases["root"] / "wide.png", bases["root"] / "tall.png"
    picture(90, 25, 1).save(a)
    picture(20, 70, 2).save(b)
    return str(folder), str(a), str(b)


def test_test_py_answers_about_two_images_in_order(anyres_checkpoint, monkeypatch, capsys):
    folder, a, b = anyres_checkpoint
    seen = []
    original = VisionLanguageModel.generate

    def spy(self, input_ids, *args, **kwargs):
        seen.append(input_ids[0].clone())
        return original(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(VisionLanguageModel, "generate", spy)
    prompt = f"first {IMAGE_MARKER} then {IMAGE_MARKER}: which is wider?"
    argv = ["--model_weights", folder, "--prompt", prompt, "--max_new_tokens", "4", "--no_stream"]
    assert test_cli.main([*argv, "--image_path", a, b]) == 0
    assert test_cli.main([*argv, "--image_path", b, a]) == 0
    answers = capsys.readouterr().out.strip().splitlines()
    assert len(answers) == 2 and len(seen) == 2
    model = load_checkpoint(folder)
    image_id = model.image_token_id
    # the two images give different token counts (their shapes differ): swapping them moves the image blocks
    runs = [torch.diff((ids == image_id).int()).nonzero()[:, 0].tolist() for ids in seen]
    assert runs[0] != runs[1] and len(seen[0]) == len(seen[1])
    # and the answer depends on both images: changing the second changes the first answer's logits
    text = model.processor.render([{"role": "user", "content": prompt}], add_generation_prompt=True)
    first = model.processor([text], [[Image.open(a), Image.open(b)]])
    other = model.processor([text], [[Image.open(a), picture(20, 70, 99)]])
    assert (logits(model, first)[0, -1] - logits(model, other)[0, -1]).abs().max() > 1e-4


def test_test_py_refuses_a_marker_count_that_does_not_match(anyres_checkpoint, capsys):
    folder, a, b = anyres_checkpoint
    code = test_cli.main(["--model_weights", folder, "--image_path", a, b, "--prompt", f"{IMAGE_MARKER} only one?"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"error: the prompt holds 1 image marker(s) ({IMAGE_MARKER}) but 2 image(s) are "
                                 "given: use one marker per image"]
