"""Pixel shuffle before the projector (model/pixel_shuffle.py): transformers' Idefics3Connector.pixel_shuffle is the
reference for the rearrangement; a grid the factor does not divide is zero-padded on the bottom and right; the token
count falls by the factor squared under square, pad and anyres, the processor and the model agreeing; a run trains
and reloads; export refuses it in one sentence."""

import math

import pytest
import torch
from runs import argv, losses, tiny_setup
from test_model import image
from tiny import save_tiny_clip, save_tiny_qwen2
from transformers.models.idefics3.modeling_idefics3 import Idefics3Connector

import train
from model import VisionLanguageModel, VLMConfig, load_checkpoint
from model.export import main as export_main
from model.pixel_shuffle import pixel_shuffle, shuffled_tokens


def idefics3(features, factor):
    return Idefics3Connector.pixel_shuffle(None, features, factor)


@pytest.mark.parametrize(("side", "factor"), [(4, 2), (6, 2), (6, 3), (24, 2)])
def test_equals_idefics3_where_the_factor_divides_the_grid(side, factor):
    features = torch.randn(3, side * side, 5)
    assert torch.equal(pixel_shuffle(features, factor), idefics3(features, factor))
    assert shuffled_tokens(side * side, factor) == (side // factor) ** 2


@pytest.mark.parametrize(("factor", "tokens"), [(2, 196), (3, 81)])
def test_a_grid_the_factor_does_not_divide_is_zero_padded(factor, tokens):
    """SigLIP-so400m-384's 27 x 27 grid: padded to 28 x 28 for factor 2 (196 tokens); 27 is 9 x 3 (81 tokens)."""
    features = torch.randn(2, 27 * 27, 4)
    assert shuffled_tokens(27 * 27, factor) == tokens
    out = pixel_shuffle(features, factor)
    side = math.ceil(27 / factor) * factor
    grid = torch.zeros(2, side, side, 4)
    grid[:, :27, :27] = features.view(2, 27, 27, 4)
    assert out.shape == (2, tokens, 4 * factor * factor)
    assert torch.equal(out, idefics3(grid.view(2, side * side, 4), factor))


def test_a_grid_with_a_cls_token_is_refused():
    with pytest.raises(ValueError, match="square feature grid.*17 tokens"):
        shuffled_tokens(17, 2)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("pixel_shuffle")
    return {"llm": save_tiny_qwen2(root / "qwen2"), "clip": save_tiny_clip(root / "clip")}


@pytest.mark.parametrize("aspect", ["square", "pad", "anyres"])
@pytest.mark.parametrize("factor", [2, 3])
def test_tokens_fall_by_the_factor_squared_in_every_layout(bases, aspect, factor):
    """The tiny CLIP's 4 x 4 grid: 4 tokens with factor 2, 4 with factor 3 (padded to 6 x 6); features equal the
    projector's MLP on Idefics3's shuffle of the tower's features, laid out by the same layout code."""
    torch.manual_seed(0)
    config = VLMConfig(llm=bases["llm"], vision=bases["clip"], projector_type="pixel_shuffle_mlp",
                       pixel_shuffle=factor, image_aspect_ratio=aspect, llm_mode="frozen")
    model = VisionLanguageModel.build(config).eval()
    assert model.config.num_image_tokens == 4
    images = [image(1), image(2).resize((80, 40))]
    prompt = model.processor.render([{"role": "user", "content": "<|extra_0|> and <|extra_0|>: same?"}], True)
    batch = model.processor([prompt], [images])
    counts = [model.image_inputs.tokens((img.height, img.width)) for img in images]
    assert int((batch["input_ids"] == model.image_token_id).sum()) == sum(counts)
    if aspect != "anyres":
        assert counts == [4, 4]
    with torch.no_grad():
        features = model.image_features(batch["pixel_values"], batch["image_sizes"])
        tower = model.vision_tower(batch["pixel_values"])  # (tiles, 16, D)
        padded = torch.zeros(tower.shape[0], 6, 6, tower.shape[-1]) if factor == 3 else None
        if padded is not None:
            padded[:, :4, :4] = tower.view(-1, 4, 4, tower.shape[-1])
            tower = padded.view(tower.shape[0], 36, -1)
        mlp = torch.nn.Sequential(*model.projector)  # the same layers, without the shuffle
        expected = mlp(idefics3(tower, factor))
        if aspect == "anyres":
            from model.anyres import pack_features
            inputs = model.image_inputs
            per_image = expected.split([inputs.tiles((img.height, img.width)) for img in images])
            expected = torch.cat([pack_features(f, (img.height, img.width), inputs.pinpoints, inputs.tile,
                                                model.projector.image_newline)
                                  for f, img in zip(per_image, images, strict=True)])
        else:
            expected = expected.flatten(0, 1)
        assert torch.equal(features, expected)
        assert model(**{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_sizes")}
                     ).logits.isfinite().all()


def test_training_with_pixel_shuffle_learns_reloads_and_refuses_llava_export(tmp_path, capsys):
    setup = tiny_setup(tmp_path)
    out = tmp_path / "run"
    assert train.main(argv(setup, out, "--projector_type", "pixel_shuffle_mlp", "--pixel_shuffle", "2",
                           steps=12)) == 0
    a = losses(out)
    assert a[-1] < a[0] - 0.25, a
    model = load_checkpoint(str(out))
    assert model.config.num_image_tokens == 4 and model.projector[0].in_features == 4 * 32
    assert export_main([str(out), str(tmp_path / "llava"), "--format", "llava"]) == 2
    assert "Llava has no pixel shuffle" in capsys.readouterr().err
    assert not (tmp_path / "llava").exists()


def test_pixel_shuffle_needs_its_projector(bases):
    config = VLMConfig(llm=bases["llm"], vision=bases["clip"], pixel_shuffle=2, llm_mode="frozen")
    with pytest.raises(ValueError, match="--pixel_shuffle 2 needs --projector_type pixel_shuffle_mlp"):
        VisionLanguageModel.build(config)
