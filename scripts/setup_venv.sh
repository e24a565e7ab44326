#!/bin/sh
# Creates .venv in the repo root when it is missing and (re)installs the requirements when they change.
# Sourced by run_tests.sh and demo.sh; needs only python3.
set -e
REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV="$REPO_ROOT/.venv"
# One torch/torchvision pair installed together: a lone torchvision can pull a build that does not
# match torch ("operator torchvision::nms does not exist"). Override with TORCH_SPEC="torch==X torchvision==Y".
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup_venv: creating $VENV"
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import torch, torchvision" >/dev/null 2>&1; then
    echo "setup_venv: installing $TORCH_SPEC"
    # shellcheck disable=SC2086
    "$PY" -m pip install -q $TORCH_SPEC
fi
STAMP="$VENV/.requirements.sha256"
WANT=$(cat "$REPO_ROOT/requirements.txt" "$REPO_ROOT/requirements-dev.txt" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "setup_venv: installing requirements-dev.txt"
    "$PY" -m pip install -q -r "$REPO_ROOT/requirements-dev.txt"
    echo "$WANT" > "$STAMP"
fi
# DeepSpeed (ZeRO-2/3; its tests run on the CPU): a pure-Python build against the torch above, with no CUDA
# ops compiled here (they are built just in time on a GPU machine). Override with DEEPSPEED_SPEC=...
DEEPSPEED_SPEC=${DEEPSPEED_SPEC:-"deepspeed==0.19.8"}
if ! "$PY" -c "import deepspeed" >/dev/null 2>&1; then
    echo "setup_venv: installing $DEEPSPEED_SPEC (pure Python, DS_BUILD_OPS=0)"
    "$PY" -m pip install -q setuptools wheel
    # shellcheck disable=SC2086
    DS_BUILD_OPS=0 "$PY" -m pip install -q --no-build-isolation $DEEPSPEED_SPEC
fi
# math-verify, for GRPO's math reward (training/rewards.py), with the ANTLR runtime its LaTeX parser needs: installed
# on its own, as lmms-eval's latex2sympy2 (used only by a few of its math tasks) pins an older ANTLR, so one resolver
# run cannot hold both. Users who want the math reward: pip install math-verify.
if ! "$PY" -c "import math_verify.parser" >/dev/null 2>&1; then
    echo "setup_venv: installing math-verify (GRPO's math reward)"
    "$PY" -m pip install -q "math-verify==0.9.0" 2>&1 | grep -v -e "latex2sympy2 " -e "dependency resolver" \
        -e "^WARNING: Location" || true
    "$PY" -c "import math_verify.parser"  # fails the setup if that install did not take
fi
# The project itself, editable and without dependencies (requirements-dev.txt brought them): this registers the
# lmms_eval.models entry point, so `python -m lmms_eval --model vlm` finds evaluation/lmms_model.py.
if ! "$PY" -c "from importlib.metadata import entry_points as e; import sys; sys.exit(not e(group='lmms_eval.models', name='vlm'))" 2>/dev/null; then
    echo "setup_venv: registering the project with lmms-eval (pip install --no-deps -e .)"
    "$PY" -m pip install -q --no-deps --no-build-isolation -e "$REPO_ROOT"
fi
