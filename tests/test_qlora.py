"""QLoRA (--llm_mode qlora): LoRA on the LLM loaded in NF4 by bitsandbytes, which runs Linear4bit on the CPU. The 4-bit
base never changes, the run tracks plain LoRA, checkpoints reload and resume exactly, and the export (dequantise,
then merge) gives the 4-bit model's logits."""

import json
import os

import bitsandbytes as bnb  # requirements-dev.txt installs it; QLoRA needs it, the rest of the project does not
import pytest
import torch
from runs import argv, losses, tiny_setup
from test_training import CrashAfterSave
from tiny import save_tiny_qwen2
from transformers import TrainerCallback

import eval as evaluate
import test as test_cli
import train
from model import load_checkpoint
from model.export import export
from model.quantization import quantized_bytes

TEXT = torch.arange(3, 40)[None]  # (1, 37) byte tokens, no image


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("qlora")
    return {**tiny_setup(root), "qwen2": save_tiny_qwen2(root / "qwen2")}


def llm_args(setup, llm):
    return () if llm == "qwen" else ("--base_language_model", setup["qwen2"], "--target_modules", "all-linear")


@torch.no_grad()
def text_logits(model) -> torch.Tensor:
    return model.eval()(TEXT).logits  # (1, 37, V)


def fp32_path(model):
    """On CPUs with AVX512-BF16, bitsandbytes runs eval-mode 4-bit layers through a packed kernel in bf16 (2e-3 off
    here); with it off they dequantise and compute in the configured fp32, which is what the export must equal."""
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
    return model


class WatchBase(TrainerCallback):
    """The 4-bit base's packed bytes when training starts and ends, and the trained model's logits."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = quantized_bytes(model.llm)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.after, self.logits = quantized_bytes(model.llm), text_logits(model)


@pytest.mark.parametrize("llm", ["qwen", "qwen2"])
def test_qlora_trains_only_its_adapter_tracks_lora_and_reloads_exactly(setup, tmp_path, llm):
    qlora, lora, watch = tmp_path / "qlora", tmp_path / "lora", WatchBase()
    assert train.main(argv(setup, qlora, "--llm_mode", "qlora", *llm_args(setup, llm)), callbacks=[watch]) == 0
    assert len(watch.before) >= 4 and watch.before.keys() == watch.after.keys()  # every block's linears are 4-bit
    assert all(torch.equal(watch.before[k], watch.after[k]) for k in watch.before)  # the base bytes never change
    curve = losses(qlora)
    assert sum(curve[-5:]) < 0.95 * sum(curve[:5])
    assert train.main(argv(setup, lora, "--llm_mode", "lora", *llm_args(setup, llm))) == 0
    gap = max(abs(a - b) for a, b in zip(curve, losses(lora), strict=True))
    print(f"{llm}: qlora vs lora, max |loss diff| over 30 steps = {gap:.3g}")
    assert gap < 0.05  # NF4's rounding of the base, not a different run
    # the checkpoint holds the adapter and the projector only, and reloads onto the 4-bit base
    assert {"adapter_model.safetensors", "projector.safetensors", "vlm_config.json"} <= set(os.listdir(qlora))
    assert not (qlora / "llm").exists()
    reloaded = load_checkpoint(str(qlora))
    assert reloaded.config.llm_mode == "qlora"
    assert all(torch.equal(a, b) for a, b in zip(quantized_bytes(reloaded.llm).values(), watch.after.values(),
                                                  strict=True))
    assert torch.equal(text_logits(reloaded), watch.logits)


def test_qlora_resumes_exactly(setup, tmp_path):
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    extra = ("--llm_mode", "qlora", "--save_steps", "4", "--lora_dropout", "0.1")
    assert train.main(argv(setup, straight, *extra, steps=8)) == 0
    with pytest.raises(KeyboardInterrupt):
        train.main(argv(setup, crashed, *extra, steps=8), callbacks=[CrashAfterSave(4)])
    assert train.main(argv(setup, crashed, *extra, steps=8)) == 0
    a, b = losses(straight), losses(crashed)
    assert len(a) == len(b) == 8 and max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5


def test_qlora_with_activation_checkpointing_and_each_loss(setup, tmp_path):
    runs = {}
    for name, extra in {"chunked": (), "recomputed": ("--activation_checkpointing", "true"),
                        "plain": ("--loss_impl", "plain"), "labelled": ("--loss_impl", "labelled")}.items():
        assert train.main(argv(setup, tmp_path / name, "--llm_mode", "qlora", *extra, steps=4)) == 0
        runs[name] = losses(tmp_path / name)
    for name, curve in runs.items():
        assert max(abs(a - b) for a, b in zip(curve, runs["chunked"], strict=True)) < 1e-4, name


@pytest.mark.parametrize("llm", ["qwen", "qwen2"])
def test_export_dequantises_then_merges(setup, tmp_path, llm, caplog):
    run, merged = tmp_path / "run", tmp_path / "merged"
    assert train.main(argv(setup, run, "--llm_mode", "qlora", *llm_args(setup, llm), steps=10)) == 0
    four_bit = text_logits(fp32_path(load_checkpoint(str(run))))
    export(str(run), str(merged))
    assert "dequantised to float32, then LoRA is merged" in caplog.text
    exported = load_checkpoint(str(merged))
    assert exported.config.llm_mode == "full"
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in exported.modules())
    diff = (text_logits(exported) - four_bit).abs().max().item()
    # merging into the original fp32 base instead, as a plain LoRA export would, misses by NF4's rounding
    config = json.loads((run / "vlm_config.json").read_text())
    (run / "vlm_config.json").write_text(json.dumps({**config, "llm_mode": "lora"}))
    export(str(run), str(tmp_path / "naive"))
    naive = (text_logits(load_checkpoint(str(tmp_path / "naive"))) - four_bit).abs().max().item()
    print(f"{llm}: export vs the 4-bit model, max |logit diff| = {diff:.3g}; "
          f"merged into the original base: {naive:.3g}")
    assert diff <= 1e-4 < naive


def test_test_py_and_eval_py_run_the_4bit_model(setup, tmp_path, capsys):
    run = tmp_path / "run"
    assert train.main(argv(setup, run, "--llm_mode", "qlora", "--learning_rate", "2e-2")) == 0
    capsys.readouterr()
    images = json.loads(open(setup["image_map"]).read())
    for colour in ("red", "green", "blue"):
        assert test_cli.main(["--model_weights", str(run), "--image_path", images[colour]["path"], "--prompt",
                              "<|extra_0|>What colour?", "--max_new_tokens", "6", "--no_stream"]) == 0
    answers = capsys.readouterr().out.strip().splitlines()
    assert len(answers) == 3 and all(answers) and len(set(answers)) > 1, answers  # it reads the image
    assert evaluate.main(["--model_weights", str(run), "--image_map", setup["image_map"], "--captions_file",
                          setup["captions"], "--max_new_tokens", "6", "--limit", "8", "--no_progress"]) == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert results["n"] == 8 and 0 <= results["exact_match"] <= 1


def test_qlora_without_bitsandbytes_says_so(setup, tmp_path, monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else
                        find_spec(name, *a))
    assert train.main(argv(setup, tmp_path / "x", "--llm_mode", "qlora")) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: --llm_mode qlora needs bitsandbytes, which is not installed: pip install bitsandbytes")


def test_the_memory_estimate_counts_what_loading_allocates(tmp_path):
    """bench/memory_estimate.py's arithmetic against real models of the tests' tiny shape: the NF4 base's bytes as
    transformers and bitsandbytes allocate them (after peft's preparation), and LoRA's parameter count."""
    from bench.gpu_train import SHAPES
    from bench.memory_estimate import lora_config, parameter_counts, weight_bytes
    from model.quantization import nf4_config, prepare_for_training
    from qwen import QWenConfig, QWenLMHeadModel

    shape = SHAPES["tiny"]
    counts = parameter_counts(shape, rank=8)
    QWenLMHeadModel(QWenConfig(**shape["llm"])).save_pretrained(tmp_path / "llm")
    from transformers import AutoModelForCausalLM

    llm = prepare_for_training(AutoModelForCausalLM.from_pretrained(
        tmp_path / "llm", quantization_config=nf4_config(torch.float32), dtype=torch.float32))
    allocated = 0
    for module in llm.modules():
        for p in module.parameters(recurse=False):
            allocated += p.numel() * p.element_size()
        if isinstance(module, bnb.nn.Linear4bit):
            state = module.weight.quant_state
            allocated += state.absmax.numel() * state.absmax.element_size() + state.state2.absmax.numel() * 4
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in llm.modules()) == 5 * shape["llm"]["num_hidden_layers"]
    assert weight_bytes(counts, "nf4") == pytest.approx(allocated, rel=0.01)
    from peft import get_peft_model

    lora = sum(p.numel() for n, p in get_peft_model(llm, lora_config(8)).named_parameters() if "lora_" in n)
    assert counts["lora"] == lora and counts["llm"] == sum(p.numel() for p in QWenLMHeadModel(
        QWenConfig(**shape["llm"])).parameters())
