"""Where, in which precision and with which decoding loop inference runs: one rule for test.py, eval.py, the web UI
and lmms-eval (their flags: common.cli.add_device_arguments)."""

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# torch's names, as lmms-eval's llava_hf takes them (`--model_args dtype=float32`)
DTYPE_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}


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
    name = DTYPE_ALIASES.get(name, name)
    if name not in ("auto", *DTYPES):
        raise ValueError(f"dtype {name!r} is not one of auto, {', '.join(DTYPES)} (or {', '.join(DTYPE_ALIASES)})")
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
    from common.quiet import hide_weight_loading_bar

    from .checkpoint import load_checkpoint

    hide_weight_loading_bar()
    device = pick_device(args.device)
    model = load_checkpoint(args.model_weights, llm=args.base_language_model, vision=args.base_vision_model,
                            device=device, dtype=pick_dtype(args.dtype, device))
    return model.set_decoding(pick_decoding(args.decode, device))
