"""Where, and in which precision, inference runs: one rule for test.py, eval.py and the web UI."""

import argparse

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def add_device_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu) | cuda | cuda:N | mps | cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                        help="auto: bf16 on GPUs that support it, else fp16 on a GPU, fp32 on the CPU")


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name} was asked for, but this machine has no CUDA GPU (try --device cpu)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps was asked for, but MPS is not available here")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    return DTYPES[name]
