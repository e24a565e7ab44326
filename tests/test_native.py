"""SigLIP2 NaFlex (`--image_aspect_ratio native`): each image at its own aspect ratio within --max_image_tokens
patches. Pixels, masks and grids equal transformers' Siglip2ImageProcessor; features equal Siglip2VisionModel run
alone; several images of different shapes and a text-only sample share a batch; packing is exact; a run trains,
packs and reloads; export refuses in one sentence; the tower and the layout are refused apart."""

import shutil

import pytest
import torch
from runs import argv, losses, tiny_setup
from test_decoding import new_tokens
from test_model import image
from test_packing import alone, packed_logits
from tiny import save_tiny_clip, save_tiny_qwen2, save_tiny_siglip2
from transformers import Siglip2ImageProcessor, Siglip2VisionModel

import train
from dataset import encode_conversation
from model import VisionLanguageModel, VLMConfig, load_checkpoint
from model.export import main as export_main

SHAPES = [(80, 20), (20, 60), (40, 40), (200, 30)]  # PIL (width, height): wide, tall, square, very wide


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("native")
    return {"llm": save_tiny_qwen2(root / "qwen2"), "siglip2": save_tiny_siglip2(root / "siglip2"),
            "clip": save_tiny_clip(root / "clip")}


def build(bases, max_image_tokens=None, mode="frozen"):
    torch.manual_seed(0)
    config = VLMConfig(llm=bases["llm"], vision=bases["siglip2"], image_aspect_ratio="native", llm_mode=mode,
                       max_image_tokens=max_image_tokens)
    return VisionLanguageModel.build(config).apply_trainable_modes().eval()


def images():
    return [image(k).resize(shape) for k, shape in enumerate(SHAPES)]


@pytest.mark.parametrize("max_image_tokens", [None, 12])
def test_pixels_masks_and_token_counts_equal_siglip2s_processor(bases, max_image_tokens):
    model = build(bases, max_image_tokens)
    reference = Siglip2ImageProcessor.from_pretrained(bases["siglip2"])(
        images=images(), max_num_patches=max_image_tokens or 16, return_tensors="pt")
    pixels, sizes = model.image_inputs(images())
    assert torch.equal(pixels, reference["pixel_values"].float())
    counts = [model.image_inputs.tokens(size) for size in sizes]
    assert counts == reference["pixel_attention_mask"].sum(-1).tolist()
    assert counts == reference["spatial_shapes"].prod(-1).tolist()
    assert len(set(counts)) > 1 and max(counts) <= (max_image_tokens or 16)


def test_features_equal_siglip2_vision_model_run_alone(bases):
    model = build(bases)
    reference = Siglip2ImageProcessor.from_pretrained(bases["siglip2"])(images=images(), return_tensors="pt")
    siglip2 = Siglip2VisionModel.from_pretrained(bases["siglip2"]).eval()
    with torch.no_grad():
        hidden = siglip2(**reference, output_hidden_states=True).hidden_states[-2]  # select_layer -2
        valid = torch.cat([h[:n] for h, n in zip(hidden, reference["pixel_attention_mask"].sum(-1).tolist(),
                                                  strict=True)])
        pixels, sizes = model.image_inputs(images())
        ours = model.image_features(pixels, torch.tensor(sizes))
        assert (ours - model.projector(valid)).abs().max().item() < 1e-5


def test_a_batch_of_several_shapes_and_text_only_packs_exactly(bases):
    model = build(bases, mode="full")
    imgs = images()
    conversations = [("<|extra_0|><|extra_0|>which is wider?", "the first", imgs[:2]),
                     ("no image here", "fine", []), ("<|extra_0|>what?", "a square", imgs[2:3]),
                     ("and <|extra_0|>?", "a strip", imgs[3:])]
    samples = []
    for question, answer, pictures in conversations:
        sizes = [(p.height, p.width) for p in pictures]
        ids, labels = encode_conversation(model.processor, [{"role": "user", "content": question},
                                                            {"role": "assistant", "content": answer}], sizes)
        pixels = model.image_inputs(pictures)[0] if pictures else None
        samples.append({"id": question, "input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                        "pixel_values": pixels, "image_sizes": sizes})
    packed = packed_logits(model, [samples[:2], samples[2:]])
    diff = max((p - alone(model, s)).abs().max().item() for p, s in zip(packed, samples, strict=True))
    assert diff < 1e-5, diff


def test_native_training_packs_learns_reloads_and_refuses_llava_export(bases, tmp_path, capsys):
    setup = tiny_setup(tmp_path)
    setup["llm"], setup["vision"] = bases["llm"], bases["siglip2"]
    out, resumed = tmp_path / "run", tmp_path / "resumed"
    extra = ("--image_aspect_ratio", "native", "--max_image_tokens", "12", "--packing", "true", "--save_steps", "6")
    assert train.main(argv(setup, out, *extra, steps=12)) == 0
    a = losses(out)
    assert a[-1] < a[0] - 0.25, a
    resumed.mkdir()
    shutil.copytree(out / "checkpoint-6", resumed / "checkpoint-6")
    assert train.main(argv(setup, resumed, *extra, steps=12)) == 0
    assert max(abs(x - y) for x, y in zip(a, losses(resumed), strict=True)) < 1e-5
    model = load_checkpoint(str(out))
    assert model.config.image_aspect_ratio == "native" and model.config.num_image_tokens == 12
    conversations = [([{"role": "user", "content": "<|extra_0|>What colour?"}], [image(1).resize((60, 20))]),
                     ([{"role": "user", "content": "a longer question without an image"}], [])]
    eager = new_tokens(model, "eager", conversations, max_new_tokens=6)
    assert torch.equal(eager, new_tokens(model, "static", conversations, max_new_tokens=6))
    assert export_main([str(out), str(tmp_path / "llava"), "--format", "llava"]) == 2
    assert "SigLIP2 NaFlex" in capsys.readouterr().err and not (tmp_path / "llava").exists()


def test_native_needs_a_naflex_tower_and_the_tower_needs_native(bases):
    with pytest.raises(ValueError, match="native needs a tower that takes variable patch counts"):
        VisionLanguageModel.build(VLMConfig(llm=bases["llm"], vision=bases["clip"], image_aspect_ratio="native"))
    with pytest.raises(ValueError, match="and such a tower needs it"):
        VisionLanguageModel.build(VLMConfig(llm=bases["llm"], vision=bases["siglip2"]))
