"""Library noise kept off a normal run: each message is stopped at its one source, with the reason beside it.

Entry points call `quiet_libraries()` first, before torch, transformers or peft load. Nothing here imports them.
"""

import logging
import sys
import warnings

BITSANDBYTES = "bitsandbytes"


class _Drop(logging.Filter):
    """Drops a logger's records that start with one of `prefixes`."""

    def __init__(self, *prefixes: str):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def keep_bitsandbytes_out():
    """bitsandbytes only where a 4-bit path runs. peft imports it whenever it is installed (peft/helpers.py, which
    transformers' Trainer imports too), and on CPUs with AVX512-BF16 that import asks the Hub for a kernel and logs
    that `trust_remote_code=True` would allow it: a message that asks for remote code, on runs that never use 4-bit.
    A None in sys.modules makes `import bitsandbytes` fail, which peft and transformers read as "not installed"
    (importlib's find_spec answers None for it). `let_bitsandbytes_in` undoes it."""
    if BITSANDBYTES not in sys.modules:
        sys.modules[BITSANDBYTES] = None


def let_bitsandbytes_in():
    """For the 4-bit path (model.quantization): bitsandbytes importable again, and the availability answers that
    transformers and peft cached while it was kept out forgotten. Its kernel message is harmless there (the CPU
    falls back to bitsandbytes' own NF4 code; nothing remote runs), so that one message is dropped."""
    if sys.modules.get(BITSANDBYTES, 0) is None:
        del sys.modules[BITSANDBYTES]
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_Drop("Failed to load CPU gemm_4bit_forward"))
    for module, names in (("transformers.utils.import_utils", ["is_bitsandbytes_available"]),
                          ("peft.import_utils", ["is_bnb_available", "is_bnb_4bit_available"])):
        for name in names:
            cached = getattr(sys.modules.get(module), name, None)
            if hasattr(cached, "cache_clear"):
                cached.cache_clear()


def quiet_libraries():
    """What a normal run should not print:
    - the bitsandbytes message above;
    - DeepSpeed's notice on stdout that it set its accelerator to the CPU (accelerate and transformers import
      DeepSpeed whenever it is installed, also for runs that never use it; on a machine without a GPU the CPU is what
      the user has, and a DeepSpeed run on a GPU machine never falls back to it);
    - transformers' FutureWarning that `is_gradient_checkpointing` is deprecated: peft (0.21) asks it each time it
      wraps a model in LoRA (PeftModel.__init__), a call of peft's, not ours."""
    keep_bitsandbytes_out()
    logging.getLogger("DeepSpeed").addFilter(_Drop("Setting accelerator to CPU"))
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def hide_weight_loading_bar():
    """transformers draws a `Loading weights` bar for every model it loads, even a tiny one for one question: kept off
    the commands that load a checkpoint to answer (test.py, eval.py, the web UI, export, lmms-eval). Download bars
    stay: a first run fetching a 15 GB LLM should show its progress."""
    from transformers.utils import logging as transformers_logging

    def hook(factory, args, kwargs):
        return factory(*args, **({**kwargs, "disable": True} if kwargs.get("desc") == "Loading weights" else kwargs))

    transformers_logging.set_tqdm_hook(hook)
