"""Vision towers: shapes, CLS handling, layer choice, freezing, save/reload, processors, image files."""

import pickle

import pytest
import torch
from PIL import Image
from tiny import register_tiny_open_clip, save_tiny_clip, save_tiny_siglip
from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

from visual import FeatureSelection, ImageLoadError, load_image, load_vision_tower
from visual.hf_tower import HFVisionTower

# family -> (prefix tokens, grid tokens) of the tiny towers
LAYOUT = {"clip": (1, 16), "siglip": (0, 16), "open_clip": (1, 16)}


@pytest.fixture(scope="module")
def tower_names(tmp_path_factory):
    root = tmp_path_factory.mktemp("towers")
    torch.manual_seed(0)
    return {
        "clip": save_tiny_clip(root / "clip"),
        "siglip": save_tiny_siglip(root / "siglip"),
        # saved once, since every load of a bare architecture name draws new random weights
        "open_clip": save_tower(load_vision_tower(register_tiny_open_clip(root)), root / "open_clip"),
    }


def save_tower(tower, folder):
    tower.save_pretrained(str(folder))
    return str(folder)


def images(n=3, size=48):
    g = torch.Generator().manual_seed(n)
    return [Image.fromarray(torch.randint(0, 256, (size, size + 8 * i, 3), generator=g, dtype=torch.uint8).numpy())
            for i in range(n)]


def features(tower, imgs):
    return tower(tower.image_processor(imgs))


@pytest.mark.parametrize("family", list(LAYOUT))
def test_shape_matches_reported_sizes(tower_names, family):
    tower = load_vision_tower(tower_names[family])
    out = features(tower, images())
    assert out.shape == (3, tower.num_patches, tower.hidden_size) == (3, LAYOUT[family][1], 32)
    assert tower.image_size == 32


@pytest.mark.parametrize("family", list(LAYOUT))
def test_cls_handling(tower_names, family):
    prefix, grid = LAYOUT[family]
    imgs = images()
    out = {sel: features(load_vision_tower(tower_names[family], FeatureSelection(select_feature=sel)), imgs)
           for sel in ("patch", "cls_patch", "all_but_first")}
    assert out["cls_patch"].shape[1] == grid + prefix
    assert torch.equal(out["patch"], out["cls_patch"][:, prefix:])  # only a real CLS is dropped
    assert torch.equal(out["all_but_first"], out["cls_patch"][:, 1:])
    assert out["all_but_first"].shape[1] == grid + prefix - 1


def test_siglip_final_output_after_post_layernorm(tower_names):
    """The original project's features: SigLIP's last_hidden_state, first token dropped."""
    selection = FeatureSelection(select_layer=-1, select_feature="all_but_first", post_layernorm=True)
    tower = load_vision_tower(tower_names["siglip"], selection)
    pixels = tower.image_processor(images())
    reference = SiglipVisionModel.from_pretrained(tower_names["siglip"]).eval()(pixel_values=pixels)
    assert torch.allclose(tower(pixels), reference.last_hidden_state[:, 1:], atol=1e-6)
    assert tower.num_patches == 15


@pytest.mark.parametrize("family", list(LAYOUT))
def test_select_layer_changes_the_output(tower_names, family):
    imgs = images()
    a = features(load_vision_tower(tower_names[family], FeatureSelection(select_layer=-2)), imgs)
    b = features(load_vision_tower(tower_names[family], FeatureSelection(select_layer=-1)), imgs)
    assert a.shape == b.shape and (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("family", list(LAYOUT))
def test_frozen_by_default_and_trainable_on_request(tower_names, family):
    tower = load_vision_tower(tower_names[family])
    assert tower.frozen and not tower.training
    tower.train()  # a frozen tower stays in eval mode when the VLM trains
    assert not tower.training
    head = torch.nn.Linear(32, 1)
    out = features(tower, images())
    assert not out.requires_grad, "a frozen tower must build no autograd graph"
    head(out).sum().backward()
    assert all(p.grad is None for p in tower.parameters())
    assert head.weight.grad is not None

    trainable = load_vision_tower(tower_names[family], trainable=True)
    head(features(trainable, images())).sum().backward()
    assert not trainable.frozen and trainable.training
    # blocks up to select_layer=-2 learn; the last block and the final norm feed nothing here
    grads = {n: p.grad for n, p in trainable.named_parameters() if p.grad is not None}
    assert any(("embed" in n or "conv1" in n) and g.abs().sum() > 0 for n, g in grads.items())


@pytest.mark.parametrize("family", list(LAYOUT))
def test_save_and_reload_give_identical_features(tower_names, family, tmp_path):
    tower = load_vision_tower(tower_names[family])
    tower.save_pretrained(str(tmp_path))
    reloaded = load_vision_tower(str(tmp_path))
    imgs = images()
    assert type(reloaded) is type(tower)
    assert torch.equal(features(reloaded, imgs), features(tower, imgs))


@pytest.mark.parametrize("family", list(LAYOUT))
def test_processor_is_one_path_for_training_and_inference(tower_names, family, tmp_path):
    tower = load_vision_tower(tower_names[family])
    imgs = images()
    for i, img in enumerate(imgs):
        img.save(tmp_path / f"{i}.png")
    batched = tower.image_processor([load_image(tmp_path / f"{i}.png") for i in range(3)])  # inference path
    worker_copy = pickle.loads(pickle.dumps(tower.image_processor))  # as a DataLoader worker holds it
    one_by_one = torch.cat([worker_copy([load_image(tmp_path / f"{i}.png")]) for i in range(3)])
    assert batched.shape == (3, 3, 32, 32) and batched.dtype == torch.float32
    assert torch.equal(batched, one_by_one)


def test_open_clip_architecture_by_name(tower_names, tmp_path):
    tower = load_vision_tower(register_tiny_open_clip(tmp_path), FeatureSelection(select_feature="cls_patch"))
    assert tower.num_patches == 17 and tower.hidden_size == 32
    assert features(tower, images()).shape == (3, 17, 32)
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        load_vision_tower("open_clip:NoSuchArch")


def test_full_clip_checkpoint_loads_only_the_vision_tower(tmp_path):
    tower = load_vision_tower(save_tiny_clip(tmp_path, full=True))
    assert isinstance(tower.vision_model, CLIPVisionModel)
    assert not any("text" in name for name, _ in tower.named_parameters())
    assert features(tower, images()).shape == (3, 16, 32)


@pytest.mark.parametrize("config, selection, n", [
    (CLIPVisionConfig(image_size=224, patch_size=14), "patch", 256),
    (CLIPVisionConfig(image_size=336, patch_size=14), "patch", 576),
    (SiglipVisionConfig(image_size=384, patch_size=14), "patch", 729),
    (SiglipVisionConfig(image_size=384, patch_size=14), "all_but_first", 728),
    (SiglipVisionConfig(image_size=224, patch_size=16), "patch", 196),
])
def test_num_patches_of_the_published_encoders(config, selection, n):
    model_class = CLIPVisionModel if isinstance(config, CLIPVisionConfig) else SiglipVisionModel
    with torch.device("meta"):  # shapes only: nothing of real size is allocated
        model = model_class(config)
    tower = HFVisionTower(model, image_processor=None, selection=FeatureSelection(select_feature=selection))
    assert tower.num_patches == n


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16", "1"])
def test_odd_image_modes_become_rgb(tmp_path, mode):
    source = Image.new("RGB", (20, 10), (200, 30, 30))
    image = source.convert(mode) if mode != "I;16" else Image.new("I;16", (20, 10), 40000)
    path = tmp_path / ("x.tiff" if mode in ("CMYK", "I;16") else "x.png")
    image.save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (20, 10)


def test_transparent_pixels_become_white(tmp_path):
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "t.png")
    assert load_image(tmp_path / "t.png").getpixel((0, 0)) == (255, 255, 255)


def test_corrupt_and_missing_files_name_the_file(tmp_path):
    good = tmp_path / "good.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    for path in (truncated, garbage):
        with pytest.raises(ImageLoadError, match=path.name):
            load_image(path)
    with pytest.raises(ImageLoadError, match="missing.jpg"):
        load_image(tmp_path / "missing.jpg")


def test_open_clip_resnet_tower_gives_grid_tokens(tmp_path):
    """CLIP's ModifiedResNet (the demo's stage-0 encoder): a stage's feature map as tokens, row by row."""
    from open_clip.model import CLIP

    from demo.clip_pretrain import PREPROCESS, TINY_CLIP
    from visual.open_clip_tower import OpenCLIPVisionTower

    torch.manual_seed(0)
    config = {**TINY_CLIP, "text_cfg": {**TINY_CLIP["text_cfg"], "vocab_size": 32}}  # as WordTokenizer sets it
    clip = CLIP(**config)
    folder = tmp_path / "rn"
    tower = OpenCLIPVisionTower(clip.visual, {**config, "quick_gelu": False}, PREPROCESS, FeatureSelection())
    tower.save_pretrained(str(folder))
    imgs = [Image.new("RGB", (96, 96), c) for c in ("red", "blue")]
    last = load_vision_tower(str(folder), FeatureSelection(select_layer=-1))
    before = load_vision_tower(str(folder), FeatureSelection(select_layer=-2))
    assert (last.num_patches, last.hidden_size) == (4, 512) and (before.num_patches, before.hidden_size) == (16, 256)
    pixels = last.image_processor(imgs)
    feature_map = clip.visual.eval().forward_intermediates(pixels, indices=[4], intermediates_only=True)[
        "image_intermediates"][0]  # (B, 512, 2, 2)
    tokens = last(pixels)
    assert tokens.shape == (2, 4, 512)
    assert torch.allclose(tokens[:, 1], feature_map[:, :, 0, 1], atol=1e-6)  # row 0, column 1
    assert before(pixels).shape == (2, 16, 256)
    with pytest.raises(ValueError, match="ResNet tower takes select_layer -1"):
        load_vision_tower(str(folder), FeatureSelection(select_layer=1))
