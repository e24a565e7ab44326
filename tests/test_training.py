"""train.py and the trainer on tiny models: learning, optimizer groups, freezing, checkpoints, resume,
stage hand-off, 2-process DDP, bad input."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from runs import argv, losses, tiny_setup, torchrun
from safetensors.torch import load_file
from transformers import TrainerCallback

import train
from model import load_checkpoint
from training.trainer import parameter_groups


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("train"))


def test_loss_falls_and_outputs_load(setup, tmp_path):
    out = tmp_path / "run"
    assert train.main(argv(setup, out, "--llm_mode", "full", "--save_steps", "15")) == 0
    curve = losses(out)
    assert len(curve) == 30 and sum(curve[-5:]) / 5 < 0.6 * sum(curve[:5]) / 5
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for folder in (out / "checkpoint-15", out / "checkpoint-30", out):
        model = load_checkpoint(str(folder))  # test.py's loading path
        assert model.config.llm_mode == "full"
        assert torch.equal(model.projector[0].weight, load_file(folder / "projector.safetensors")["0.weight"])


def test_optimizer_groups_follow_one_rule(setup):
    model = train.build_model(
        train.ModelArguments(base_language_model=setup["llm"], base_vision_model=setup["vision"], lora_rank=4),
        train.DataArguments(), torch.float32)
    groups = parameter_groups(model, learning_rate=3e-5, weight_decay=0.1, projector_lr=1e-4)
    by_key = {(g["names"][0].startswith("projector."), g["weight_decay"] > 0): g for g in groups}
    assert by_key[(True, True)]["lr"] == by_key[(True, False)]["lr"] == 1e-4
    assert set(by_key[(True, True)]["names"]) == {"projector.0.weight", "projector.2.weight"}
    assert set(by_key[(True, False)]["names"]) == {"projector.0.bias", "projector.2.bias"}
    assert by_key[(False, True)]["lr"] == 3e-5 and all("lora_" in n for n in by_key[(False, True)]["names"])
    assert (False, False) not in by_key  # LoRA matrices are all 2-D
    trained = {n for g in groups for n in g["names"]}
    assert trained == {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("vision_tower.") for n in trained)

    from training.trainer import VLMTrainer

    args = train.VLMTrainingArguments(output_dir="unused", learning_rate=3e-5, weight_decay=0.1,
                                      feature_proj_lr=1e-4, report_to="none")
    optimizer = VLMTrainer(model=model, args=args).create_optimizer()
    assert sorted((g["lr"], g["weight_decay"], len(g["params"])) for g in optimizer.param_groups) == sorted(
        (g["lr"], g["weight_decay"], len(g["params"])) for g in groups)


def test_frozen_weights_do_not_change(setup, tmp_path):
    out = tmp_path / "run"
    assert train.main(argv(setup, out, steps=5)) == 0
    trained = load_checkpoint(str(out))
    fresh = train.build_model(train.ModelArguments(base_language_model=setup["llm"],
                                                   base_vision_model=setup["vision"]),
                              train.DataArguments(), torch.float32)
    base = dict(fresh.named_parameters())
    changed = {n for n, p in trained.named_parameters() if not torch.equal(p, base[n])}
    assert {n for n in changed if "lora_" not in n} == {n for n in base if n.startswith("projector.")}
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in trained.named_parameters())


class CrashAfterSave(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt("simulated crash")


def test_resume_matches_an_uninterrupted_run(setup, tmp_path):
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    extra = ("--save_steps", "4", "--lora_dropout", "0.1")
    assert train.main(argv(setup, straight, *extra, steps=8)) == 0
    with pytest.raises(KeyboardInterrupt):
        train.main(argv(setup, crashed, *extra, steps=8), callbacks=[CrashAfterSave(4)])
    assert sorted(p.name for p in crashed.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-4"]
    assert train.main(argv(setup, crashed, *extra, steps=8)) == 0  # resumes from checkpoint-4 by itself
    a, b = losses(straight), losses(crashed)
    assert len(a) == len(b) == 8
    diff = max(abs(x - y) for x, y in zip(a, b, strict=True))
    print(f"resume parity: max |loss diff| over 8 steps = {diff:.3g}")
    assert diff < 1e-5
    for name in ("projector.safetensors", "adapter_model.safetensors"):
        sa, sb = load_file(straight / name), load_file(crashed / name)
        assert all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa), name


def test_stage1_to_stage2_hand_off(setup, tmp_path):
    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    assert train.main(argv(setup, stage1, "--llm_mode", "frozen", steps=4)) == 0
    assert set(os.listdir(stage1)) >= {"projector.safetensors", "vlm_config.json"}
    assert not (stage1 / "adapter_model.safetensors").exists()
    assert train.main(argv(setup, stage2, "--init_projector", str(stage1), "--learning_rate", "0", steps=1)) == 0
    p1, p2 = load_file(stage1 / "projector.safetensors"), load_file(stage2 / "projector.safetensors")
    assert all(torch.equal(p1[k], p2[k]) for k in p1)


def test_bad_input_fails_before_loading_a_model(setup, tmp_path, capsys):
    args = argv(setup, tmp_path / "x")
    missing = [a if a != setup["captions"] else str(tmp_path / "nope.json") for a in args]
    assert train.main(missing) == 2
    assert "data file not found" in capsys.readouterr().err
    (tmp_path / "empty.json").write_text("[]")
    assert train.main([a if a != setup["captions"] else str(tmp_path / "empty.json") for a in args]) == 2
    assert "holds no samples" in capsys.readouterr().err
    assert train.main(args + ["--target_modules", "q_proj|v_proj"]) == 2
    assert "match no module" in capsys.readouterr().err


def test_two_process_ddp_on_cpu(setup, tmp_path):
    out = tmp_path / "ddp"
    result = torchrun(2, argv(setup, out, "--llm_mode", "full", "--per_device_train_batch_size", "2",
                              "--ddp_backend", "gloo", "--use_cpu", "true", steps=6))
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-6"]
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no leftover temporary folders
    # the same 4 samples per step in one process: the logged (averaged) losses agree
    single = tmp_path / "single"
    assert train.main(argv(setup, single, "--llm_mode", "full", steps=6)) == 0
    ddp_curve, single_curve = losses(out), losses(single)
    assert len(ddp_curve) == 6
    diff = max(abs(a - b) for a, b in zip(ddp_curve, single_curve, strict=True))
    print(f"2-process DDP vs one process: max |loss diff| = {diff:.3g}")
    assert diff < 1e-4
    shutil.rmtree(out)


def test_train_sh_runs_both_stages(setup, tmp_path):
    """train.sh's own flags (recipes, group_by_length, torchrun) on the tiny models, 2 steps per stage."""
    env = dict(os.environ, LLM=setup["llm"], VISION=setup["vision"], IMAGE_MAP=setup["image_map"],
               CAPTIONS=setup["captions"], NPROC_PER_NODE="1", MASTER_PORT="29519", OMP_NUM_THREADS="1",
               PYTHONPATH=os.getcwd(), PYTHON=sys.executable)
    common = ["--max_steps", "2", "--report_to", "none", "--use_cpu", "true", "--lora_rank", "4",
              "--target_modules", "c_attn|w1|w2", "--dataloader_num_workers", "0"]
    stage1, stage2 = tmp_path / "s1", tmp_path / "s2"
    for stage, out, extra in (("1", stage1, {}), ("2", stage2, {"INIT_PROJECTOR": str(stage1)})):
        result = subprocess.run(["sh", "train.sh", *common], env=env | extra | {"STAGE": stage, "OUTPUT_DIR": str(out)},
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((stage1 / "vlm_config.json").read_text())["llm_mode"] == "frozen"
    config2 = json.loads((stage2 / "vlm_config.json").read_text())
    assert config2["llm_mode"] == "lora" and config2["lora_rank"] == 4
    assert (stage2 / "adapter_model.safetensors").exists()
