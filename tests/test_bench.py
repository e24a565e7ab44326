"""The GPU benchmarks' code, run on the CPU at their --tiny size, so that it is ready when a GPU is at hand:
both sides (ours and transformers' Llava) train or decode, and the JSON line carries every figure."""

import json
import subprocess
import sys

import pytest
from runs import env


@pytest.mark.parametrize("script,keys,extra", [
    ("bench/gpu_train.py", {"b1_ckpt1", "b4_ckpt1", "b1_ckpt0"}, []),
    ("bench/gpu_train.py", {"packing"}, ["--packing"]),
    ("bench/gpu_train.py", {"posttrain"}, ["--posttrain"]),
    ("bench/gpu_train.py", {"budget", "qlora_llm_weights_gib"}, ["--budget_gib", "24"]),
    ("bench/gpu_generate.py", {"b1_eager", "b1_static", "b1_compiled", "b1_Llava", "b8_compiled", "b8_Llava"}, []),
])
def test_gpu_benchmarks_run_tiny_on_the_cpu(script, keys, extra):
    result = subprocess.run([sys.executable, script, "--tiny", *extra], env=env(), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert keys <= set(figures), sorted(figures)
    if script.endswith("gpu_generate.py"):  # every decoding loop agrees with the eager one (fp32)
        assert all(figures[k]["agreement_with_eager"] == 1.0 for k in keys)
    elif "--budget_gib" in extra:  # LoRA and QLoRA settings both tried; the 4-bit LLM is smaller than fp32's
        assert figures["budget"]["best"] is not None and 0 < figures["qlora_llm_weights_gib"]
        assert "qlora, batch 1, checkpoint every 1" in result.stdout and "lora, batch 1" in result.stdout
    elif "--posttrain" in extra:  # both steps ran, every part timed
        assert set(figures["posttrain"]) == {"dpo", "grpo"}
        assert set(figures["posttrain"]["grpo"]["seconds"]) == {"generation", "reference", "policy forward + backward",
                                                                "optimizer"}
        assert all(v > 0 for step in figures["posttrain"].values() for v in step["seconds"].values())
    elif extra:  # padded vs packed: the packed rows carry (almost) no padding, and both run
        (_, _, padded_padding, *_), (_, _, packed_padding, *_) = figures["packing"]
        assert float(packed_padding.rstrip("%")) < float(padded_padding.rstrip("%"))
    else:
        assert all(figures[k]["ours_tokens_per_s"] > 0 and figures[k]["llava_tokens_per_s"] > 0 for k in keys)
