#!/bin/sh
# Answer a question about one image. Extra arguments pass through to test.py, e.g. --interactive.
#   sh test.sh                                                  # the CPU demo's checkpoint on test_img/1.jpg
#   MODEL_WEIGHTS=./weights/train_stage2/checkpoint-10000 PROMPT="这幅图像描述了什么？" sh test.sh
set -e
cd "$(dirname "$0")"
MODEL_WEIGHTS=${MODEL_WEIGHTS:-./weights/demo}
IMAGE=${IMAGE:-./test_img/1.jpg}
PROMPT=${PROMPT:-"图中出现了哪些颜色？<|extra_0|>"}
if [ -z "$PYTHON" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
# The original command line still works, e.g.:
#   python test.py --base_language_model Qwen/Qwen-7B-Chat --base_value_model openai/clip-vit-large-patch14 \
#     --model_weights ./weights/train_V1_5/checkpoint-10000/ --image_path ./test_img/1.jpg \
#     --prompt "使用语言描述一下图中出现了那些颜色<|extra_0|>"
exec "$PYTHON" test.py --model_weights "$MODEL_WEIGHTS" --image_path "$IMAGE" --prompt "$PROMPT" "$@"
