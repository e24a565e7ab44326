"""The command-line rule: bad input ends with one sentence on stderr and exit code 2, not a traceback; and the
flags that test.py, eval.py and the web UI share. Nothing here imports torch: `--help` answers at once."""

import argparse
import functools
import sys

USAGE_EXIT = 2


def fail(error) -> int:
    """Prints `error: <message>` on stderr; returns the exit code for bad input."""
    print(f"error: {error}", file=sys.stderr)
    return USAGE_EXIT


def exits_on(*errors: type[BaseException]):
    """Decorates a `main(argv=None) -> int | None`: the given errors become `error: <message>` on stderr
    and exit code 2; None means success (0). Anything else still raises, with its traceback."""

    def decorate(main):
        @functools.wraps(main)
        def run(*args, **kwargs) -> int:
            try:
                code = main(*args, **kwargs)
            except errors as e:
                return fail(e)
            return 0 if code is None else code

        return run

    return decorate


def add_device_arguments(parser: argparse.ArgumentParser):
    """Where, in which precision and with which decoding loop inference runs (model.device reads them)."""
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu) | cuda | cuda:N | mps | cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                        help="auto: bf16 on GPUs that support it, else fp16 on a GPU, fp32 on the CPU")
    parser.add_argument("--decode", default="auto", choices=["auto", "eager", "static", "compiled"],
                        help="auto: compiled on CUDA (static KV cache + torch.compile), static on the CPU, eager "
                             "elsewhere; eager is transformers' generate (beam search always uses it)")
