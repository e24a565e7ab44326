"""DeepSpeed ZeRO-2 and ZeRO-3 with the shipped configs, on the CPU (DS_ACCELERATOR=cpu, gloo): the same
losses and weights as the plain run for the same global batch, checkpoints that reload, exact resume.

scripts/setup_venv.sh installs deepspeed (a pure-Python build), so these run wherever the suite runs."""

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest
import torch
from runs import argv, checkpoints, env, free_port, max_loss_diff, max_weight_diff, tiny_setup, torchrun
from safetensors.torch import load_file

import eval as eval_cli
import train
from model import load_checkpoint
from model.zero3 import place_buffers

assert importlib.util.find_spec("deepspeed"), "deepspeed is missing: sh scripts/setup_venv.sh installs it"
# gloo's reductions run in their own order: gradients agree to about 1e-7, and AdamW (lr 3e-3) turns that into
# weight differences up to a few 1e-5 where a gradient is near zero (measured 3e-6 to 4e-5 across runs)
LOSS_TOLERANCE, WEIGHT_TOLERANCE = 1e-4, 2e-4
FULL = ("--llm_mode", "full", "--save_steps", "3")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("deepspeed"))


@pytest.fixture(scope="module")
def plain(setup):
    """The reference: one process, no DeepSpeed, global batch 4 (as 2 processes x 2 below)."""
    out = setup["root"] / "plain"
    assert train.main(argv(setup, out, *FULL, steps=6)) == 0
    return out


def zero_run(setup, out, stage: int, nproc: int = 2, steps: int = 6):
    result = torchrun(nproc, argv(setup, out, *FULL, "--per_device_train_batch_size", str(4 // nproc),
                                  "--use_cpu", "true", "--deepspeed", f"configs/zero{stage}.json", steps=steps))
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_two_processes_match_the_plain_run_and_resume(setup, plain, stage, tmp_path):
    out = tmp_path / f"zero{stage}"
    zero_run(setup, out, stage)
    diff = max_loss_diff(plain, out)
    print(f"ZeRO-{stage}, 2 processes vs plain: max |loss diff| over 6 steps = {diff:.2g}")
    assert diff < LOSS_TOLERANCE
    assert checkpoints(out) == ["checkpoint-3", "checkpoint-6"]
    assert not any(p.startswith(".") for p in os.listdir(out))  # no staging folder left behind
    # every saved folder holds the whole (unpartitioned) weights: equal to the plain run's at the same step
    for folder in ("checkpoint-3", "checkpoint-6", "."):
        for name in ("llm/model.safetensors", "projector.safetensors"):
            assert max_weight_diff(plain / folder, out / folder, name) < WEIGHT_TOLERANCE, (folder, name)
    # and loads as test.py and eval.py load it, with exactly the weights it saved
    model = load_checkpoint(str(out))
    saved = load_file(out / "llm" / "model.safetensors")
    llm_weights = dict(model.llm.named_parameters())
    assert saved and all(torch.equal(llm_weights[k], v) for k, v in saved.items() if k in llm_weights)
    assert torch.equal(model.projector[0].weight, load_file(out / "projector.safetensors")["0.weight"])
    assert eval_cli.main(["--model_weights", str(out), "--image_map", setup["image_map"], "--captions_file",
                          setup["captions"], "--limit", "4", "--max_new_tokens", "4", "--no_progress"]) == 0

    # a crash after checkpoint-3, mid-way through saving checkpoint-6: the rerun resumes exactly
    crashed = tmp_path / f"crashed{stage}"
    crashed.mkdir()
    shutil.copytree(out / "checkpoint-3", crashed / "checkpoint-3")
    shutil.copytree(out / "checkpoint-6", crashed / ".checkpoint-6.partial")
    (crashed / ".checkpoint-6.partial" / "trainer_state.json").unlink()
    result = zero_run(setup, crashed, stage)
    assert f"resuming from {crashed / 'checkpoint-3'}" in result.stderr
    assert max_loss_diff(out, crashed) < LOSS_TOLERANCE  # steps 1-3 restored from the state, 4-6 trained again
    assert max_weight_diff(out, crashed, "llm/model.safetensors") < WEIGHT_TOLERANCE
    assert not (crashed / ".checkpoint-6.partial").exists()


PARTITION_REPORT = """
import sys
from transformers import HfArgumentParser
import train
model_args, data_args, args = HfArgumentParser(
    (train.ModelArguments, train.DataArguments, train.VLMTrainingArguments)).parse_args_into_dataclasses()
trainer, _ = train.prepare(model_args, data_args, args, set(), None)
model = trainer.model
for part in ("llm", "vision_tower"):
    params = [p for n, p in getattr(model, part).named_parameters() if "lora_" not in n]  # LoRA comes later
    print(part, sum(hasattr(p, "ds_id") for p in params), len(params), sum(p.numel() for p in params))
print("buffers", sorted({str(b.device) for b in model.buffers()}))
"""


def test_zero3_partitions_the_weights_at_load(setup, tmp_path):
    """Under ZeRO-3 the LLM and the frozen tower are built partitioned (transformers' zero.Init path): no
    process ever holds them whole, which is what lets a 7B model load on cards smaller than it."""
    script = tmp_path / "report.py"
    script.write_text(PARTITION_REPORT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", str(free_port()),
           str(script), *argv(setup, tmp_path / "out", "--use_cpu", "true", "--deepspeed", "configs/zero3.json")]
    result = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line.split()}
    for part in ("llm", "vision_tower"):
        partitioned, total, numel = map(int, report[part])
        assert partitioned == total > 0 and numel == 0, (part, report[part])  # placeholders only
    assert report["buffers"] == ["['cpu']"]


def test_place_buffers_moves_every_buffer():
    """ZeRO-3 places partitioned weights but not buffers (CLIP's position_ids): place_buffers does."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    tower = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=4, image_size=32, patch_size=8))
    assert any(True for _ in tower.buffers())
    place_buffers(tower, torch.device("meta"))
    assert all(b.device.type == "meta" for b in tower.buffers())
    assert all(p.device.type == "cpu" for p in tower.parameters())  # parameters are ZeRO's to place
