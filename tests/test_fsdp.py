"""FSDP2 through the Trainer (`--fsdp --fsdp_config configs/fsdp2.json`), on the CPU with gloo: the LLM's blocks and the
tower's layers sharded one by one, the same losses and weights as the single-process run for the same global batch,
checkpoints that hold the whole trained weights and reload, and exact resume after a kill."""

import os
import shutil

import pytest
import torch
from runs import argv, checkpoints, max_loss_diff, max_weight_diff, tiny_setup, torchrun
from safetensors.torch import load_file

import train
from model import load_checkpoint

# gloo's reductions run in their own order (as under DeepSpeed, tests/test_deepspeed.py)
LOSS_TOLERANCE, WEIGHT_TOLERANCE = 1e-4, 2e-4
MODES = {  # LoRA without dropout: the two runs draw their dropout masks on different processes
    "full": (("--llm_mode", "full"), "llm/model.safetensors"),
    "lora": (("--llm_mode", "lora", "--lora_dropout", "0"), "adapter_model.safetensors"),
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("fsdp"))


def fsdp_run(setup, out, flags):
    result = torchrun(2, argv(setup, out, *flags, "--save_steps", "3", "--per_device_train_batch_size", "2",
                              "--use_cpu", "true", "--fsdp", "--fsdp_config", "configs/fsdp2.json", steps=6))
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("mode", MODES)
def test_fsdp2_two_processes_match_one_and_resume_exactly(setup, tmp_path, mode):
    flags, weights = MODES[mode]
    plain, sharded = tmp_path / "plain", tmp_path / "fsdp"
    assert train.main(argv(setup, plain, *flags, "--save_steps", "3", steps=6)) == 0  # one process, batch 4
    result = fsdp_run(setup, sharded, flags)
    # it did shard: both QWen blocks and the three CLIP layers on their own, each process holding half the weights
    (line,) = [line for line in result.stderr.splitlines() if "FSDP2:" in line]
    assert "over 2 processes" in line and "QWenBlock x 2" in line and "CLIPEncoderLayer x 3" in line, line
    held, whole = (int(n.replace(",", "")) for n in line.split("holds ")[1].split(" parameters")[0].split(" of "))
    assert abs(held - whole / 2) < 0.01 * whole, line
    diff = max_loss_diff(plain, sharded)
    print(f"FSDP2 {mode}, 2 processes vs 1: max |loss diff| over 6 steps = {diff:.2g}")
    assert diff < LOSS_TOLERANCE
    assert checkpoints(sharded) == ["checkpoint-3", "checkpoint-6"]
    for folder in ("checkpoint-3", "checkpoint-6", "."):  # the whole trained weights, as the plain run saved them
        for name in (weights, "projector.safetensors"):
            assert max_weight_diff(plain / folder, sharded / folder, name) < WEIGHT_TOLERANCE, (folder, name)
    # only the trained weights and the optimizer: no torch.save'd copy of the whole model (frozen base included)
    assert not [f for f in os.listdir(sharded / "checkpoint-3") if f.startswith("pytorch_model")]
    model = load_checkpoint(str(sharded))
    saved = load_file(sharded / weights)
    params = dict(model.llm.named_parameters())
    if mode == "lora":  # peft's file names drop the adapter name
        params = {k.replace(".default", ""): v for k, v in params.items()}
    assert saved and all(torch.equal(params[k], v) for k, v in saved.items() if k in params)
    assert sum(k in params for k in saved) == len(saved)
    assert torch.equal(model.projector[0].weight, load_file(sharded / "projector.safetensors")["0.weight"])

    # killed after checkpoint-3: the rerun resumes from it and ends where the uninterrupted run ended
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    shutil.copytree(sharded / "checkpoint-3", crashed / "checkpoint-3")
    result = fsdp_run(setup, crashed, flags)
    assert f"resuming from {crashed / 'checkpoint-3'}" in result.stderr
    assert max_loss_diff(sharded, crashed) == 0
    assert max_weight_diff(sharded, crashed, weights) == 0


def test_qlora_under_fsdp_is_refused_with_one_sentence(setup, tmp_path, capsys):
    assert train.main(argv(setup, tmp_path / "x", "--llm_mode", "qlora", "--fsdp", "--fsdp_config",
                           "configs/fsdp2.json")) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: --llm_mode qlora does not run under")
