#!/bin/sh
# The CPU demo: sets up .venv (first run only), then generates data, trains a tiny VLM through train.py,
# evaluates it on held-out images with eval.py and prints examples. Arguments go to demo/run.py
# (--seed N, --steps N, --quick). POSTTRAIN=1 adds the post-training stage (GRPO and DPO on the SFT model,
# timed apart: docs/demo.md).
set -e
cd "$(dirname "$0")"
sh scripts/setup_venv.sh
if [ -n "$POSTTRAIN" ] && [ "$POSTTRAIN" != 0 ]; then set -- --posttrain "$@"; fi
exec .venv/bin/python -m demo.run "$@"
