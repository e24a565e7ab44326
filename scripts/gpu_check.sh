#!/bin/sh
# GPU smoke check, for a fresh CUDA machine (about 5 minutes on one GPU): the CPU demo's --quick run on
# CUDA, train.sh stage 1 then stage 2 from its projector, stage 2 under DeepSpeed ZeRO-2 and ZeRO-3 and
# FSDP2 with the shipped configs, stage 2 as QLoRA, and eval.py on every checkpoint saved. Prints one table
# of PASS/FAIL with timings; exits 0 when every step passed. The logs stay in the work folder it names.
#
#   sh scripts/gpu_check.sh              # on a CUDA machine
#   sh scripts/gpu_check.sh --dry-run    # the same steps on the CPU, shortest runs (what CI runs)
#
# Needs torch, transformers, peft, accelerate, deepspeed, bitsandbytes, open_clip_torch, tiktoken and the rest
# of requirements.txt (docs/training.md "GPU smoke check" lists the wheels to bring to a machine without them).
# PYTHON picks the interpreter (default: .venv/bin/python when there is one, else python3); WORK the folder.
set -u
cd "$(dirname "$0")/.."

DRY_RUN=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        -h|--help) sed -n '2,12s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "error: unknown argument $arg (usage: sh scripts/gpu_check.sh [--dry-run])" >&2; exit 2 ;;
    esac
done
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHON
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}
mkdir -p "$WORK"

if [ "$DRY_RUN" = 1 ]; then
    # the CPU stands in for the GPU: DeepSpeed on gloo, one thread per process, the shortest runs
    export CUDA_VISIBLE_DEVICES="" DS_ACCELERATOR=cpu OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
    DEVICE_FLAGS="--use_cpu true"
    STEPS=4
    FSDP_PROCESSES=2  # FSDP shards over processes: two on the CPU (gloo)
else
    if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        echo "error: no CUDA GPU is visible to $PYTHON (use --dry-run to check the steps on the CPU)" >&2
        exit 2
    fi
    DEVICE_FLAGS=""
    STEPS=30
    FSDP_PROCESSES=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
fi

TABLE="$WORK/results.txt"
: > "$TABLE"
FAILED=0
N=0

# step NAME COMMAND...: runs the command with its output in $WORK/NN-name.log, and records PASS or FAIL
step() {
    name=$1
    shift
    N=$((N + 1))
    log="$WORK/$(printf %02d "$N")-$(echo "$name" | tr -c 'a-zA-Z0-9\n' '_').log"
    printf '%-44s ' "$name"
    start=$(date +%s)
    if "$@" > "$log" 2>&1; then result=PASS; else result=FAIL; FAILED=$((FAILED + 1)); fi
    seconds=$(($(date +%s) - start))
    echo "$result ${seconds}s"
    printf '| %s | %s | %s s | %s |\n' "$name" "$result" "$seconds" "$log" >> "$TABLE"
}

environment() {
    "$PYTHON" - <<'EOF'
import importlib, torch
for name in ("torch", "transformers", "peft", "accelerate", "deepspeed", "bitsandbytes", "open_clip", "tiktoken"):
    print(name, importlib.import_module(name).__version__)
print("device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
      "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "")
EOF
}

BASE="$WORK/demo_base"
DATA="$WORK/data"
TRAIN_DATA="$DATA/train/processed"
TEST_DATA="$DATA/test/processed"

train_stage() {  # train_stage STAGE OUTPUT [VAR=value ...]: train.sh on the demo's tiny bases and data
    stage=$1 output=$2
    shift 2
    env NPROC_PER_NODE=1 "$@" STAGE="$stage" OUTPUT_DIR="$output" LLM="$BASE/llm" VISION="$BASE/vision" \
        IMAGE_MAP="$TRAIN_DATA/image_map.json" CAPTIONS="$TRAIN_DATA/captions.json" \
        MASTER_PORT=$((29600 + N)) \
        sh train.sh --max_steps "$STEPS" --save_steps "$STEPS" --logging_steps 1 --report_to none \
        --lora_rank 8 --per_device_train_batch_size 8 --dataloader_num_workers 2 $DEVICE_FLAGS
}

evaluate() {  # evaluate CHECKPOINT: eval.py on 40 held-out questions
    "$PYTHON" eval.py --model_weights "$1" --image_map "$TEST_DATA/image_map.json" \
        --captions_file "$TEST_DATA/captions.json" --limit 40 --max_new_tokens 16 --no_progress
}

echo "gpu_check: work folder $WORK"
step "environment" environment
step "demo --quick" "$PYTHON" -m demo.run --quick --data_dir "$DATA" --output_dir "$WORK/demo"
step "train.sh STAGE=1" train_stage 1 "$WORK/stage1"
step "eval.py stage 1" evaluate "$WORK/stage1"
step "train.sh STAGE=2 INIT_PROJECTOR=stage1" train_stage 2 "$WORK/stage2" INIT_PROJECTOR="$WORK/stage1"
step "eval.py stage 2" evaluate "$WORK/stage2"
step "train.sh DEEPSPEED=configs/zero2.json" train_stage 2 "$WORK/zero2" DEEPSPEED=configs/zero2.json
step "eval.py ZeRO-2 checkpoint-$STEPS" evaluate "$WORK/zero2/checkpoint-$STEPS"
step "train.sh DEEPSPEED=configs/zero3.json" train_stage 2 "$WORK/zero3" DEEPSPEED=configs/zero3.json
step "eval.py ZeRO-3 checkpoint-$STEPS" evaluate "$WORK/zero3/checkpoint-$STEPS"
step "train.sh FSDP=configs/fsdp2.json" train_stage 2 "$WORK/fsdp2" FSDP=configs/fsdp2.json \
    NPROC_PER_NODE="$FSDP_PROCESSES"
step "eval.py FSDP2 checkpoint-$STEPS" evaluate "$WORK/fsdp2/checkpoint-$STEPS"
step "train.sh QLORA=1" train_stage 2 "$WORK/qlora" QLORA=1
step "eval.py QLoRA" evaluate "$WORK/qlora"

echo
echo "| step | result | time | log |"
echo "| --- | --- | --- | --- |"
cat "$TABLE"
if [ "$FAILED" -gt 0 ]; then
    echo "gpu_check: $FAILED step(s) failed; see the logs above" >&2
    exit 1
fi
echo "gpu_check: all $N steps passed"
