"""Running train.py on the tiny models, in this process or under torchrun, and reading back what it wrote."""

import json
import os
import socket
import subprocess
import sys

import torch
from safetensors.torch import load_file
from tiny import save_tiny_clip, save_tiny_qwen, write_color_dataset


def tiny_setup(root, n_samples=32) -> dict:
    image_map, captions = write_color_dataset(root / "data", n=n_samples)
    return {"llm": save_tiny_qwen(root / "qwen"), "vision": save_tiny_clip(root / "clip"),
            "image_map": image_map, "captions": captions, "root": root}


def argv(setup, out, *extra, steps=30):
    return ["--base_language_model", setup["llm"], "--base_vision_model", setup["vision"],
            "--image_map", setup["image_map"], "--captions_file", setup["captions"], "--output_dir", str(out),
            "--max_steps", str(steps), "--per_device_train_batch_size", "4", "--learning_rate", "3e-3",
            "--lora_rank", "8", "--logging_steps", "1", "--save_steps", str(steps), "--report_to", "none",
            "--dataloader_num_workers", "0", "--seed", "7", "--disable_tqdm", "true", *extra]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra) -> dict:
    """One thread per process (2 cores, up to 2 processes), DeepSpeed on the CPU, the repo importable."""
    return dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONPATH=os.getcwd(), **extra)


def torchrun(nproc: int, args: list[str], timeout=600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_port", str(free_port()), "train.py", *args]
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout)


def losses(run_dir):
    with open(os.path.join(run_dir, "trainer_state.json")) as f:
        return [h["loss"] for h in json.load(f)["log_history"] if "loss" in h]


def max_loss_diff(a_dir, b_dir) -> float:
    a, b = losses(a_dir), losses(b_dir)
    assert len(a) == len(b) > 0, (a, b)
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def max_weight_diff(a_dir, b_dir, name) -> float:
    """Largest |a - b| over the tensors of one safetensors file that both folders hold, with equal keys."""
    a, b = load_file(os.path.join(a_dir, name)), load_file(os.path.join(b_dir, name))
    assert a.keys() == b.keys(), f"{name}: {sorted(a.keys() ^ b.keys())[:3]}"
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def checkpoints(run_dir) -> list[str]:
    return sorted(p for p in os.listdir(run_dir) if p.startswith("checkpoint-"))


def weights_equal(model_a, model_b) -> bool:
    a, b = dict(model_a.named_parameters()), dict(model_b.named_parameters())
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
