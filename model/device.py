"""Where, in which precision and with which decoding loop inference runs: one rule for test.py, eval.py and
the web UI."""

import argparse

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def add_device_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu) | cuda | cuda:N | mps | cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                        help="auto: bf16 on GPUs that support it, else fp16 on a GPU, fp32 on the CPU")
    parser.add_argument("--decode", default="auto", choices=["auto", "eager", "static", "compiled"],
                        help="auto: compiled on CUDA (static KV cache + torch.compile), static on the CPU, eager "
                             "elsewhere; eager is transformers' generate (beam search always uses it)")


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


def pick_decoding(name: str, device: torch.device) -> str:
    if name != "auto":
        return name
    return {"cuda": "compiled", "cpu": "static"}.get(device.type, "eager")


def load_for_inference(args):
    """The checkpoint of test.py's, eval.py's or the web UI's arguments, on their device, in their precision,
    with their decoding loop (add_device_arguments, plus --model_weights and the base-model overrides)."""
    from .checkpoint import load_checkpoint

    device = pick_device(args.device)
    model = load_checkpoint(args.model_weights, llm=args.base_language_model, vision=args.base_vision_model,
                            device=device, dtype=pick_dtype(args.dtype, device))
    return model.set_decoding(pick_decoding(args.decode, device))
