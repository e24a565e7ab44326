"""scripts/gpu_check.sh --dry-run: the GPU smoke check's steps on the CPU, run once here, each PASS. Its steps are the
project's whole path in miniature, so this file also checks what they made: the demo's --quick run learned, the
DeepSpeed runs of train.sh equal train.py without DeepSpeed, FSDP2 sharded, QLoRA trained on a 4-bit base."""

import json
import os
import subprocess
import sys

import pytest
from runs import checkpoints, env, max_loss_diff, max_weight_diff
from test_deepspeed import LOSS_TOLERANCE, WEIGHT_TOLERANCE

import train
from common import IMAGE_MARKER


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("gpu_check") / "work"
    result = subprocess.run(["sh", "scripts/gpu_check.sh", "--dry-run"], env=env(WORK=str(work), PYTHON=sys.executable),
                            capture_output=True, text=True, timeout=1500)
    return work, result


def log(work, name: str) -> str:
    (path,) = [p for p in work.iterdir() if p.name.endswith(f"-{name}.log")]
    return path.read_text()


def test_every_step_passes_and_a_failure_is_reported(dry_run, tmp_path):
    work, result = dry_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and " s | " in line]
    assert len(rows) == 14 and all("| PASS |" in row for row in rows), rows
    assert (work / "zero3" / "checkpoint-4" / "checkpoint_manifest.json").exists()
    broken = subprocess.run(["sh", "scripts/gpu_check.sh", "--dry-run"], env=env(WORK=str(tmp_path / "broken"),
                                                                                   PYTHON="false"),
                            capture_output=True, text=True, timeout=120)
    assert broken.returncode == 1 and "| environment | FAIL |" in broken.stdout


def test_the_quick_demo_runs_end_to_end_and_learns(dry_run):
    work, _ = dry_run
    stdout, out = log(work, "demo___quick"), work / "demo"
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert set(summary["per_source"]) == {"zh", "en", "chat", "second_image"} and 0 <= summary["exact_match"] <= 1
    assert summary["clip_steps"] == 20 and 0 <= summary["zero_shot_top1"] <= 1  # stage 0 ran
    assert (work / "demo_base" / "clip_loss.png").exists()
    assert (work / "demo_base" / "vision" / "open_clip_vision.safetensors").exists()
    assert all(f"[{k}/7]" in stdout for k in range(1, 8))
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < 0.5 * losses[0]
    for name in ("loss.png", "heldout_grid.png", "eval_results.json", "vlm_config.json"):
        assert (out / name).exists(), name
    questions = [json.loads(line)["question"] for line in (out / "eval_predictions.jsonl").read_text().splitlines()]
    assert any(q.startswith(IMAGE_MARKER) for q in questions) and any(q.endswith(IMAGE_MARKER) for q in questions)
    # a normal run is quiet (common/quiet.py): the log holds the demo's and its commands' stdout and stderr
    noise = [line for line in stdout.splitlines() if any(word in line for word in (
        "trust_remote_code", "FutureWarning", "Setting accelerator to CPU", "pin_memory"))]
    assert not noise, noise


@pytest.mark.parametrize("stage", [2, 3])
def test_train_sh_under_deepspeed_equals_train_py_without(dry_run, tmp_path, stage):
    """DEEPSPEED=configs/zeroN.json sh train.sh (the stage-2 LoRA recipe, "auto" values and all, one process) gives
    the losses and weights of train.py with the same flags and no DeepSpeed."""
    work, _ = dry_run
    out, plain = work / f"zero{stage}", tmp_path / "plain"
    assert checkpoints(out) == ["checkpoint-4"] and (out / "adapter_model.safetensors").exists()
    data = work / "data" / "train" / "processed"
    assert train.main([  # train.sh's flags for stage 2, then gpu_check's
        "--base_language_model", str(work / "demo_base" / "llm"),
        "--base_vision_model", str(work / "demo_base" / "vision"),
        "--image_map", str(data / "image_map.json"), "--captions_file", str(data / "captions.json"),
        "--output_dir", str(plain), "--seed", "42", "--train_sampling_strategy", "group_by_length",
        "--llm_mode", "lora", "--lora_rank", "128", "--lora_dropout", "0.1", "--target_modules", "c_attn|w1|w2",
        "--learning_rate", "3e-5", "--feature_proj_lr", "1e-4", "--num_train_epochs", "2",
        "--max_steps", "4", "--save_steps", "4", "--logging_steps", "1", "--report_to", "none", "--lora_rank", "8",
        "--per_device_train_batch_size", "8", "--dataloader_num_workers", "0", "--use_cpu", "true"]) == 0
    diff = max_loss_diff(plain, out)
    print(f"train.sh ZeRO-{stage}, 1 process vs plain: max |loss diff| = {diff:.2g}")
    assert diff < LOSS_TOLERANCE
    assert max_weight_diff(plain, out, "adapter_model.safetensors") < WEIGHT_TOLERANCE
    # the engine's checkpoint holds the trained weights only, not the frozen LLM
    engine_files = [f for f in (out / "checkpoint-4" / "global_step4").iterdir() if "model_states" in f.name]
    frozen_bytes = sum(os.path.getsize(f) for f in (work / "demo_base" / "llm").glob("*.safetensors"))
    assert engine_files and sum(os.path.getsize(f) for f in engine_files) < frozen_bytes / 2


def test_fsdp2_sharded_and_qlora_trained_a_4bit_base(dry_run):
    work, _ = dry_run
    (line,) = [line for line in log(work, "train_sh_FSDP_configs_fsdp2_json").splitlines() if "FSDP2:" in line]
    assert "over 2 processes" in line and "QWenBlock x 2" in line, line
    assert checkpoints(work / "fsdp2") == ["checkpoint-4"]
    config = json.loads((work / "qlora" / "vlm_config.json").read_text())
    assert config["llm_mode"] == "qlora" and (work / "qlora" / "adapter_model.safetensors").exists()
    assert "error" not in log(work, "eval_py_QLoRA").lower()
