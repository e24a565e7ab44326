"""The model matrix: each LLM family people start from in 2026 wired to a tiny CLIP, and each vision-tower family wired
to a tiny Llama, all tiny and fp32, each through every check: default LoRA targets and full tuning, packing exact
(sliding-window layers included), greedy static decoding equal to generate, export to Llava with equal logits (or a
one-sentence refusal), a training run whose loss falls, and save, reload and exact resume.

Each family's detail that breaks naive glue is in its tiny config (tests/tiny.py): tied embeddings (Qwen3, Gemma 3),
Gemma's scaled embedding, sliding windows (Gemma 3 beside global layers, Mistral on all), SmolLM3's NoPE layer, Phi's
fused projections, Qwen3-MoE's experts; DINOv2's interpolated position grid, the registers of DINOv2-reg and DINOv3
(RoPE), AIMv2 without a CLS token."""

import shutil

import pytest
import torch
from runs import argv, losses
from test_decoding import CONVERSATIONS as DECODING_CONVERSATIONS
from test_decoding import new_tokens
from test_model import image
from test_packing import alone, items, packed_logits
from tiny import llm_family_configs, save_tiny_clip, save_tiny_llm, save_tiny_tower, write_color_dataset
from transformers import LlavaForConditionalGeneration

import train
from model import VisionLanguageModel, VLMConfig, load_checkpoint
from model.export import export
from model.lora_targets import LORA_TARGETS

LLM_FAMILIES = list(llm_family_configs())
TOWER_FAMILIES = ["dinov2", "dinov2_with_registers", "dinov3_vit", "aimv2"]
COMBOS = [(family, "clip") for family in LLM_FAMILIES] + [("llama", tower) for tower in TOWER_FAMILIES]
IDS = [llm if tower == "clip" else tower for llm, tower in COMBOS]
NOT_LLAVA = {"dinov2_with_registers", "dinov3_vit"}  # Llava drops one prefix token or none; these have five
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    out = {family: save_tiny_llm(root / family, family) for family in LLM_FAMILIES}
    out |= {tower: save_tiny_tower(root / tower, tower) for tower in TOWER_FAMILIES}
    out["clip"] = save_tiny_clip(root / "clip")
    out["image_map"], out["captions"] = write_color_dataset(root / "data", n=16)
    return out


def build(bases, llm, tower, mode="full", **overrides):
    torch.manual_seed(1)
    config = VLMConfig(llm=bases[llm], vision=bases[tower], llm_mode=mode, lora_rank=4, **overrides)
    return VisionLanguageModel.build(config).apply_trainable_modes()


@pytest.mark.parametrize(("llm", "tower"), COMBOS, ids=IDS)
def test_lora_targets_and_full_mode(bases, llm, tower):
    model = build(bases, llm, tower, mode="lora")
    assert model.config.target_modules == LORA_TARGETS[llm]  # auto, resolved by family and recorded
    wanted = set(LORA_TARGETS[llm].split("|"))
    adapted = {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in model.llm.named_parameters()
               if "lora_A" in name}
    assert adapted == wanted, (adapted, wanted)
    assert all(not p.requires_grad for n, p in model.llm.named_parameters() if "lora_" not in n)
    full = build(bases, llm, tower, mode="full")
    assert all(p.requires_grad for p in full.llm.parameters())
    assert not any(p.requires_grad for p in full.vision_tower.parameters())


@pytest.mark.parametrize(("llm", "tower"), COMBOS, ids=IDS)
def test_packed_rows_give_each_sample_its_own_logits(bases, llm, tower):
    model = build(bases, llm, tower).eval()
    samples = items(model)
    if llm in ("gemma3_text", "mistral"):  # the 6-token window is inside every sample: packing meets it
        assert min(len(s["input_ids"]) for s in samples) > 2 * model.llm.config.sliding_window
        windowed = alone(model, samples[0])
        model.llm.config.sliding_window = 10_000  # the window really shapes the logits this test compares
        assert (alone(model, samples[0]) - windowed).abs().max().item() > 1e-3
        model.llm.config.sliding_window = 6
    packed = packed_logits(model, [samples[:2], samples[2:]])
    diff = max((p - alone(model, s)).abs().max().item() for p, s in zip(packed, samples, strict=True))
    assert diff <= TOLERANCE, diff


@pytest.mark.parametrize(("llm", "tower"), COMBOS, ids=IDS)
def test_static_greedy_equals_generate(bases, llm, tower):
    model = build(bases, llm, tower, mode="frozen").eval()
    eager = new_tokens(model, "eager", DECODING_CONVERSATIONS, max_new_tokens=12)
    static = new_tokens(model, "static", DECODING_CONVERSATIONS, max_new_tokens=12)
    assert torch.equal(eager, static)


@pytest.mark.parametrize(("llm", "tower"), COMBOS, ids=IDS)
def test_llava_export_has_equal_logits(bases, llm, tower, tmp_path):
    model = build(bases, llm, tower, mode="lora")
    with torch.no_grad():  # a trained-looking adapter, so the merge is checked too
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.config.llm_mode = "lora"
    from model import save_checkpoint
    save_checkpoint(model, tmp_path / "ckpt")
    if tower in NOT_LLAVA:
        with pytest.raises(ValueError, match="cannot export to Llava: the vision tower has 5 tokens"):
            export(str(tmp_path / "ckpt"), str(tmp_path / "llava"), "llava")
        return
    export(str(tmp_path / "ckpt"), str(tmp_path / "llava"), "llava")
    llava = LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava").eval()
    prompt = model.processor.render([{"role": "user", "content": "<|extra_0|>what is it?"}], True)
    batch = model.processor([prompt], [[image(3)]])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad():
        diff = (model.eval()(**inputs).logits - llava(**inputs).logits).abs().max().item()
    assert diff <= TOLERANCE, diff


@pytest.mark.parametrize(("llm", "tower"), COMBOS, ids=IDS)
def test_training_loss_falls_and_resumes_exactly(bases, llm, tower, tmp_path):
    setup = {"llm": bases[llm], "vision": bases[tower], "image_map": bases["image_map"],
             "captions": bases["captions"]}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    extra = ("--save_steps", "3", "--learning_rate", "1e-2", "--lora_rank", "4")
    assert train.main(argv(setup, straight, *extra, steps=6)) == 0
    a = losses(straight)
    assert a[-1] < a[0] - 0.3, a
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-3", resumed / "checkpoint-3")  # as if the run had stopped there
    assert train.main(argv(setup, resumed, *extra, steps=6)) == 0
    b = losses(resumed)
    assert len(a) == len(b) == 6 and max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5, (a, b)
    first, second = load_checkpoint(str(straight)).eval(), load_checkpoint(str(resumed)).eval()
    prompt = first.processor.render([{"role": "user", "content": "<|extra_0|>What colour?"}], True)
    batch = first.processor([prompt], [[image(5)]])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad():
        assert (first(**inputs).logits - second(**inputs).logits).abs().max().item() < 1e-5
