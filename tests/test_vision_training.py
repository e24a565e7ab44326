"""Training the vision tower, as LLaVA-OneVision and nanoVLM do in later stages: a learning rate per part (the
optimizer's groups hold exactly that part's parameters), LoRA on the tower (only its adapters train; it saves,
reloads, resumes exactly, merges and exports with equal logits) and activation checkpointing inside the tower (the
same gradients)."""

import shutil

import pytest
import torch
from runs import argv, losses, tiny_setup
from test_model import image
from tiny import save_tiny_clip, save_tiny_qwen2
from transformers import LlavaForConditionalGeneration

import train
from model import VisionLanguageModel, VLMConfig, load_checkpoint
from model.checkpoint import load_starting_point
from model.export import export
from training.trainer import parameter_groups


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision_training")
    return {"llm": save_tiny_qwen2(root / "qwen2"), "clip": save_tiny_clip(root / "clip")}


def build(bases, **modes):
    torch.manual_seed(0)
    config = VLMConfig(llm=bases["llm"], vision=bases["clip"], lora_rank=4, **modes)
    return VisionLanguageModel.build(config).apply_trainable_modes()


@pytest.mark.parametrize("vision_mode", ["full", "lora"])
def test_each_part_gets_its_own_rate_and_only_its_parameters(bases, vision_mode):
    model = build(bases, vision_mode=vision_mode, llm_mode="lora")
    groups = parameter_groups(model, 1e-4, 0.1, projector_lr=1e-3, vision_lr=1e-5)
    by_part = {}
    for group in groups:
        by_part.setdefault(group["part"], set()).update(group["names"])
        assert group["lr"] == {"projector": 1e-3, "vision_tower": 1e-5, "llm": 1e-4}[group["part"]]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    for part in ("projector", "vision_tower", "llm"):
        assert by_part[part] == {n for n in trainable if n.startswith(part + ".")}, part
    tower = {n for n in trainable if n.startswith("vision_tower.")}
    if vision_mode == "lora":
        assert tower and all("lora_" in n for n in tower)
    else:
        assert tower == {f"vision_tower.{n}" for n, _ in model.vision_tower.named_parameters()}
    no_rate = parameter_groups(model, 1e-4, 0.1, projector_lr=None, vision_lr=None)
    assert {g["lr"] for g in no_rate} == {1e-4}


def test_activation_checkpointing_reaches_the_tower_with_equal_gradients(bases):
    def grads(checkpointing):
        model = build(bases, vision_mode="full", llm_mode="full").train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.vision_tower.vision_model.encoder.gradient_checkpointing
        prompt = model.processor.render([{"role": "user", "content": "<|extra_0|>what?"},
                                         {"role": "assistant", "content": "red"}])
        batch = model.processor([prompt], [[image(4)]])
        labels = batch["input_ids"].clone()
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
              pixel_values=batch["pixel_values"], labels=labels).loss.backward()
        return {n: p.grad for n, p in model.vision_tower.named_parameters() if p.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    assert max((plain[k] - checkpointed[k]).abs().max().item() for k in plain) < 1e-6


def test_vision_lora_trains_resumes_merges_and_exports(tmp_path):
    setup = tiny_setup(tmp_path)
    setup["llm"] = save_tiny_qwen2(tmp_path / "qwen2")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    extra = ("--vision_mode", "lora", "--vision_lr", "3e-3", "--save_steps", "4", "--lora_rank", "4")
    assert train.main(argv(setup, straight, *extra, steps=8)) == 0
    a = losses(straight)
    assert a[-1] < a[0] - 0.2, a
    assert (straight / "vision_adapter.safetensors").exists() and not (straight / "vision").exists()
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-4", resumed / "checkpoint-4")
    assert train.main(argv(setup, resumed, *extra, steps=8)) == 0
    b = losses(resumed)
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5, (a, b)

    model = load_checkpoint(str(straight))
    trained = model.vision_tower.lora_state_dict()
    assert trained and any(v.abs().max() > 0 for k, v in trained.items() if "lora_B" in k)  # B starts at zero
    prompt = model.processor.render([{"role": "user", "content": "<|extra_0|>What colour?"}], True)
    batch = model.processor([prompt], [[image(6)]])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad():
        ours = model(**inputs).logits
    export(str(straight), str(tmp_path / "merged"))
    export(str(straight), str(tmp_path / "llava"), "llava")
    merged = load_checkpoint(str(tmp_path / "merged"))
    assert not merged.vision_tower.lora_state_dict()
    llava = LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava").eval()
    start = load_starting_point(str(straight), VLMConfig(llm="", vision="", llm_mode="frozen")).eval()
    assert not start.vision_tower.lora_state_dict() and start.config.init_from  # merged, and recorded to reload
    with torch.no_grad():
        assert (merged(**inputs).logits - ours).abs().max().item() < 1e-5
        assert (llava(**inputs).logits - ours).abs().max().item() < 1e-5
        assert (start(**inputs).logits - ours).abs().max().item() < 1e-5  # --init_from: the next stage's start
