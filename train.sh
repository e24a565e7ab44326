#!/bin/sh
# Train a VLM on CUDA GPUs: one GPU, several, or several nodes. Extra arguments pass through to train.py.
#   sh train.sh                       # stage 2 of the original recipe (LoRA on Qwen-7B-Chat + projector)
#   STAGE=1 sh train.sh               # stage 1: projector alignment only, everything else frozen
#   STAGE=2 INIT_PROJECTOR=./weights/stage1 sh train.sh
#   DEEPSPEED=configs/zero3.json sh train.sh
#   FSDP=configs/fsdp2.json sh train.sh   # FSDP2: the LLM's blocks and the tower's layers sharded (docs/training.md)
#   PACKING=1 sh train.sh             # padding-free packing: rows of --max_length tokens (docs/training.md)
#   QLORA=1 sh train.sh               # stage 2 as QLoRA: LoRA on the LLM loaded in 4-bit NF4 (one 24 GB card)
#   OBJECTIVE=dpo CAPTIONS=data/pairs/captions.json IMAGE_MAP=data/pairs/image_map.json sh train.sh
#                                     # DPO on preference pairs, from INIT_FROM (default ./weights/train_stage2)
#   OBJECTIVE=grpo CAPTIONS=data/prompts/captions.json IMAGE_MAP=data/prompts/image_map.json sh train.sh
#                                     # GRPO with rewards a program checks (docs/training.md), from INIT_FROM
#   CONFIG=configs/stage2.yaml sh train.sh   # the recipe from a config file (configs/); flags after it override it
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 sh train.sh   # on each node, its own NODE_RANK
set -e
cd "$(dirname "$0")"

# With CONFIG, the file holds the recipe, models, data and output folder; only the variables set here are added.
CONFIG_SET=""
for var in LLM VISION OUTPUT_DIR IMAGE_MAP CAPTIONS; do
    if eval "[ -n \"\${$var+x}\" ]"; then CONFIG_SET="$CONFIG_SET $var"; fi
done
LLM=${LLM:-Qwen/Qwen-7B-Chat}
VISION=${VISION:-google/siglip-so400m-patch14-384}
STAGE=${STAGE:-2}
OBJECTIVE=${OBJECTIVE:-sft}
if [ "$OBJECTIVE" = sft ]; then RUN_NAME=stage${STAGE}; else RUN_NAME=$OBJECTIVE; fi
OUTPUT_DIR=${OUTPUT_DIR:-./weights/train_${RUN_NAME}}
IMAGE_MAP=${IMAGE_MAP:-data/image_map.json}
CAPTIONS=${CAPTIONS:-data/captions.json}

if [ "$OBJECTIVE" = dpo ]; then
    # DPO after SFT (TRL's and LLaMA-Factory's defaults: beta 0.1, sigmoid loss, 1 epoch): a new LoRA on the SFT model
    # (its adapter merged in), the projector frozen, so the reference is that model with the adapter switched off.
    RECIPE="--objective dpo --init_from ${INIT_FROM:-./weights/train_stage2} --llm_mode lora --lora_rank 64
            --target_modules c_attn|w1|w2 --projector_mode frozen --beta 0.1 --learning_rate 5e-6
            --num_train_epochs 1 --per_device_train_batch_size 2 --gradient_accumulation_steps 8"
elif [ "$OBJECTIVE" = grpo ]; then
    # GRPO (R1-V / VLM-R1 style): 8 completions per prompt, exact-match and format rewards, KL weight 0.04.
    RECIPE="--objective grpo --init_from ${INIT_FROM:-./weights/train_stage2} --llm_mode lora --lora_rank 64
            --target_modules c_attn|w1|w2 --projector_mode frozen --reward_funcs exact_match,format --beta 0.04
            --num_generations 8 --max_completion_length 512 --temperature 1.0 --learning_rate 1e-5
            --num_train_epochs 1 --per_device_train_batch_size 2 --gradient_accumulation_steps 4"
elif [ "$STAGE" = 1 ]; then
    # LLaVA-1.5 pretrain (scripts/v1_5/pretrain.sh): projector only, lr 1e-3, 1 epoch, warmup 3%, cosine.
    RECIPE="--llm_mode frozen --projector_mode train --learning_rate 1e-3 --num_train_epochs 1
            --warmup_steps 0.03 --lr_scheduler_type cosine --weight_decay 0"
else
    # The original project's train.sh: LoRA r=128, dropout 0.1 on c_attn|w1|w2, lr 3e-5, projector lr 1e-4,
    # 2 epochs. (LLaVA-1.5's finetune_lora.sh uses r=128, alpha=256, lr 2e-4, projector lr 2e-5, 1 epoch.)
    RECIPE="--llm_mode lora --lora_rank 128 --lora_dropout 0.1 --target_modules c_attn|w1|w2
            --learning_rate 3e-5 --feature_proj_lr 1e-4 --num_train_epochs 2"
    if [ -n "$QLORA" ] && [ "$QLORA" != 0 ]; then RECIPE=$(echo "$RECIPE" | sed 's/--llm_mode lora/--llm_mode qlora/'); fi
    if [ -n "$INIT_PROJECTOR" ]; then RECIPE="$RECIPE --init_projector $INIT_PROJECTOR"; fi
fi
if [ -n "$DEEPSPEED" ]; then RECIPE="$RECIPE --deepspeed $DEEPSPEED"; fi
if [ -n "$FSDP" ]; then RECIPE="$RECIPE --fsdp --fsdp_config $FSDP"; fi
if [ -n "$PACKING" ] && [ "$PACKING" != 0 ]; then RECIPE="$RECIPE --packing"; fi

# One process per visible GPU.
if [ -n "$CUDA_VISIBLE_DEVICES" ]; then
    NPROC=$(echo "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c .)
elif command -v nvidia-smi >/dev/null 2>&1; then
    NPROC=$(nvidia-smi -L | grep -c GPU)
else
    NPROC=1
fi
NPROC=${NPROC_PER_NODE:-$NPROC}

# The repo's .venv when there is one, else PYTHON or python3 (a conda env, say).
if [ -z "$PYTHON" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
LAUNCH="$PYTHON -m torch.distributed.run --nnodes ${NNODES:-1} --node_rank ${NODE_RANK:-0} --nproc_per_node $NPROC
    --master_addr ${MASTER_ADDR:-127.0.0.1} --master_port ${MASTER_PORT:-29500}"
if [ -n "$CONFIG" ]; then
    FLAGS=""
    for var in $CONFIG_SET; do
        case $var in
            LLM) FLAGS="$FLAGS --base_language_model $LLM" ;;
            VISION) FLAGS="$FLAGS --base_vision_model $VISION" ;;
            OUTPUT_DIR) FLAGS="$FLAGS --output_dir $OUTPUT_DIR" ;;
            IMAGE_MAP) FLAGS="$FLAGS --image_map $IMAGE_MAP" ;;
            CAPTIONS) FLAGS="$FLAGS --captions_file $CAPTIONS" ;;
        esac
    done
    SWITCHES=""
    if [ -n "$QLORA" ] && [ "$QLORA" != 0 ]; then SWITCHES="$SWITCHES --llm_mode qlora"; fi
    if [ -n "$DEEPSPEED" ]; then SWITCHES="$SWITCHES --deepspeed $DEEPSPEED"; fi
    if [ -n "$FSDP" ]; then SWITCHES="$SWITCHES --fsdp --fsdp_config $FSDP"; fi
    if [ -n "$PACKING" ] && [ "$PACKING" != 0 ]; then SWITCHES="$SWITCHES --packing"; fi
    # shellcheck disable=SC2086
    exec $LAUNCH train.py "$CONFIG" $FLAGS $SWITCHES "$@"
fi
# shellcheck disable=SC2086
exec "$PYTHON" -m torch.distributed.run --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" --nproc_per_node "$NPROC" \
    --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
    train.py \
    --base_language_model "$LLM" --base_vision_model "$VISION" \
    --image_map "$IMAGE_MAP" --captions_file "$CAPTIONS" \
    --output_dir "$OUTPUT_DIR" \
    --per_device_train_batch_size 4 \
    --save_steps 1000 --save_total_limit 5 --logging_steps 100 --seed 42 \
    --dataloader_num_workers 4 --train_sampling_strategy group_by_length \
    $RECIPE "$@"
