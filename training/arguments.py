"""Typed command-line arguments of train.py, parsed with HfArgumentParser, from the command line or a config file.

Every flag of the original train.sh keeps its meaning: --lora_rank, --lora_dropout, --feature_proj_lr,
--target_modules, --image_map, --captions_file, and the standard TrainingArguments flags.

A config file (YAML or JSON, as `trl sft --config` and LLaMA-Factory take) maps flag names to values; `base:
other.yaml` reads another file first (a path relative to this one), whose values this one's override. Flags on the
command line override the file.
"""

import json
import os
from dataclasses import dataclass, field

import yaml
from transformers.training_args import TrainingArguments  # its defining module: training/help.py reads it

from dataset.packing import DEFAULT_BUFFER


@dataclass
class ModelArguments:
    base_language_model: str | None = field(default=None, metadata={
        "help": "hub id or folder of the LLM (AutoModelForCausalLM); with --init_from, the checkpoint's"})
    base_vision_model: str | None = field(default=None, metadata={
        "help": "CLIP/SigLIP hub id or folder, or open_clip:ARCH/TAG; with --init_from, the checkpoint's"})
    init_from: str | None = field(default=None, metadata={
        "help": "start from this checkpoint folder of ours (SFT before DPO or GRPO): its base models, layout and "
                "trained weights (a LoRA adapter merged in); this run's modes then apply (docs/training.md)"})
    select_layer: int = field(default=-2, metadata={"help": "vision hidden state: -2 is the penultimate block"})
    select_feature: str = field(default="patch", metadata={"help": "patch | cls_patch | all_but_first"})
    post_layernorm: bool = field(default=False, metadata={"help": "apply the vision post-layernorm"})
    projector_type: str = field(default="mlp2x_gelu", metadata={
        "help": "mlp2x_gelu | linear | pixel_shuffle_mlp (space-to-depth first: --pixel_shuffle² fewer image tokens)"})
    pixel_shuffle: int = field(default=1, metadata={
        "help": "pixel_shuffle_mlp: the factor (2 or 3); a grid it does not divide is zero-padded bottom and right"})
    image_aspect_ratio: str = field(default="square", metadata={
        "help": "square (the tower's resize and crop) | pad (LLaVA-1.5: padded to a square with the mean colour) | "
                "anyres (LLaVA-NeXT: tiles of the best-fitting grid plus a base view, docs/models.md) | anyres_max_N "
                "(LLaVA-OneVision: grids up to 6x6 tiles, features downsampled past N tiles' worth; the images of a "
                "several-image sample one view each) | native (SigLIP2 NaFlex: the image at its own aspect ratio, up "
                "to --max_image_tokens patches)"})
    image_grid_pinpoints: str | None = field(default=None, metadata={
        "help": "anyres: the grids, HxW in pixels, comma-separated (default: LLaVA-NeXT's 1x2, 2x1, 2x2, 3x1 and 1x3 "
                "tiles of the tower's size)"})
    max_image_tokens: int | None = field(default=None, metadata={
        "help": "anyres: leave out the grids whose images could take more image tokens than this; native: the most "
                "patches an image takes (default: the tower processor's max_num_patches)"})
    image_token: str = field(default="<image>", metadata={"help": "added for LLMs without <|extra_0|>"})
    video_frames: int = field(default=8, metadata={
        "help": "videos (in the data when image_map.json names video files or frame folders): frames sampled "
                "uniformly from each (fewer when a clip has fewer)"})
    video_fps: float | None = field(default=None, metadata={
        "help": "videos: sample this many frames a second instead of --video_frames (a frame folder counts as 1 fps)"})
    video_pooling: int = field(default=2, metadata={
        "help": "videos: each frame's feature grid pooled bilinearly by this stride, as LLaVA-OneVision (1: none)"})
    vision_mode: str = field(default="frozen", metadata={
        "help": "frozen | lora (LoRA on the tower's Linear layers, at --lora_rank and --lora_alpha) | full"})
    projector_mode: str = field(default="train", metadata={"help": "train | frozen"})
    llm_mode: str = field(default="lora", metadata={
        "help": "frozen | lora | qlora (LoRA on the LLM loaded in 4-bit NF4; needs bitsandbytes) | full"})
    lora_rank: int = field(default=128)
    lora_alpha: int | None = field(default=None, metadata={"help": "default: 2 x lora_rank"})
    lora_dropout: float = field(default=0.05)
    target_modules: str = field(default="auto", metadata={
        "help": "'|'-separated names, all-linear, or auto: by the LLM's family (model/lora_targets.py): qwen "
                "c_attn|w1|w2; phi3 qkv_proj|o_proj|gate_up_proj|down_proj; qwen3_moe q/k/v/o_proj; llama, qwen2, "
                "qwen3, mistral, gemma3, smollm3, olmo2 q/k/v/o_proj and gate/up/down_proj; others all-linear"})
    loss_impl: str = field(
        default="auto", metadata={"help": "auto (chunked; labelled under ZeRO-3) | chunked | labelled | liger (CUDA, "
                                          "pip install liger-kernel) | plain: where the LM loss is computed "
                                          "(docs/training.md)"}
    )
    checkpoint_every: int = field(
        default=1, metadata={"help": "with activation checkpointing, recompute every k-th LLM block only (1: all)"}
    )
    init_projector: str | None = field(
        default=None, metadata={"help": "stage 2: start from this stage-1 checkpoint folder's projector"}
    )


@dataclass
class DataArguments:
    image_map: str = field(default="data/image_map.json")
    captions_file: str = field(default="data/captions.json")
    data_mixture: str | None = field(default=None, metadata={
        "help": "a mixture YAML: several processed sources, each drawn by a rule and weight, instead of --image_map "
                "and --captions_file (docs/data.md)"})
    data_store: bool = field(default=True, metadata={
        "help": "read the samples through their memory-mapped store (captions.store/, built when missing or stale), "
                "shared by every worker and process; false: parse captions.json in every process"})
    max_length: int = field(default=2048, metadata={"help": "tokens per sample (per row with --packing), image tokens "
                                                             "included"})
    packing: bool = field(default=False, metadata={
        "help": "pack whole samples into rows of at most --max_length tokens, with no padding and no attention, "
                "position or label across samples; --per_device_train_batch_size then counts rows (docs/training.md)"})
    packing_buffer: int = field(default=DEFAULT_BUFFER, metadata={
        "help": "--packing: samples per first-fit-decreasing window of the shuffled order"})
    system_prompt: str | None = field(default=None, metadata={"help": "default: the chat template's own"})
    eval_image_map: str | None = field(default=None, metadata={
        "help": "held-out conversations (with --eval_captions_file) for evaluation during training: --eval_strategy "
                "steps --eval_steps N gives their loss, --eval_generate their answers' scores"})
    eval_captions_file: str | None = field(default=None, metadata={"help": "see --eval_image_map"})
    cache_images: bool = field(default=False, metadata={
        "help": "keep each image's processed pixels in memory once loaded, in every DataLoader worker (with "
                "--dataloader_persistent_workers true, across epochs): for data sets that fit in RAM"})


@dataclass
class VLMTrainingArguments(TrainingArguments):
    feature_proj_lr: float | None = field(
        default=None, metadata={"help": "learning rate of the projector (default: --learning_rate)"}
    )
    vision_lr: float | None = field(
        default=None, metadata={"help": "learning rate of the vision tower with --vision_mode full or lora "
                                        "(default: --learning_rate)"}
    )
    precision: str = field(
        default="auto",
        metadata={"help": "auto (bf16 where the GPU has it, else fp16; fp32 on CPU) | bf16 | fp16 | fp32"},
    )
    auto_resume: bool = field(
        default=True, metadata={"help": "resume from the newest complete checkpoint in output_dir when there is one"}
    )
    max_bad_samples: float = field(
        default=0.001,
        metadata={"help": "unusable samples (missing/corrupt image, too long) skipped before the run stops: "
                          "a count (>= 1) or a fraction of the training set (< 1); default 0.001 = 0.1%%"},
    )
    max_nonfinite_steps: int = field(
        default=5, metadata={"help": "steps in a row with a NaN/inf loss (each skipped) before the run stops"}
    )
    eval_generate: int = field(default=0, metadata={
        "help": "at each evaluation, answer the first N held-out conversations greedily and score them (exact match, "
                "BLEU-4/CIDEr/ROUGE-L with pycocoevalcap): eval_exact_match, ... (0: the loss only)"})
    eval_max_new_tokens: int = field(default=64, metadata={"help": "--eval_generate: the longest answer, in tokens"})
    objective: str = field(default="sft", metadata={
        "help": "sft (supervised: the reply tokens' loss) | dpo (preference pairs) | grpo (rewards on sampled "
                "completions); docs/training.md"})
    beta: float | None = field(default=None, metadata={
        "help": "dpo: the deviation from the reference (default 0.1; ipo: its tau); grpo: the KL weight (default 0: "
                "no reference model)"})
    loss_type: str | None = field(default=None, metadata={
        "help": "dpo: sigmoid (default) | ipo | hinge | robust; grpo: grpo (default) | bnpo | dr_grpo | dapo"})
    label_smoothing: float = field(default=0.0, metadata={
        "help": "dpo --loss_type robust: the chance a pair's labels are flipped, in [0, 0.5)"})
    num_generations: int = field(default=8, metadata={"help": "grpo: completions sampled per prompt (a group)"})
    max_completion_length: int = field(default=256, metadata={"help": "grpo: the longest completion, in tokens"})
    temperature: float = field(default=1.0, metadata={"help": "grpo: the sampling temperature"})
    top_p: float = field(default=1.0, metadata={"help": "grpo: nucleus sampling's probability mass"})
    reward_funcs: str = field(default="exact_match", metadata={
        "help": "grpo: reward functions, comma-separated: exact_match | choice | numeric | math | format, or "
                "module:function / file.py:function of your own (training/rewards.py)"})
    reward_weights: list[float] | None = field(default=None, metadata={
        "help": "grpo: one weight per reward function (default: 1 each)"})
    num_iterations: int = field(default=1, metadata={"help": "grpo: optimizer steps on each batch of rollouts"})
    epsilon: float = field(default=0.2, metadata={"help": "grpo: the clipping range below 1 (and above, by default)"})
    epsilon_high: float | None = field(default=None, metadata={
        "help": "grpo: the clipping range above 1 (DAPO's clip-higher: 0.28; default: --epsilon)"})
    scale_rewards: str = field(default="group", metadata={
        "help": "grpo: divide advantages by the group's std (group), the batch's (batch) or not at all (none)"})
    # the Trainer's defaults that do not fit a VLM
    remove_unused_columns: bool = field(default=False)


CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def read_config_file(path: str, seen: tuple[str, ...] = ()) -> dict:
    """{argument name: value} of a YAML or JSON config file, its `base:` chain read first."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    if os.path.abspath(path) in seen:
        raise ValueError(f"{path}: its base: chain comes back to it")
    with open(path, encoding="utf-8") as f:
        try:
            values = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            raise ValueError(f"{path} is not valid {'JSON' if path.endswith('.json') else 'YAML'}: "
                             f"{str(e).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must map argument names to values (name: value), not hold a {type(values).__name__}")
    values = {str(key).replace("-", "_"): value for key, value in values.items()}
    base = values.pop("base", None)
    if base is None:
        return values
    return {**read_config_file(os.path.join(os.path.dirname(path), base), (*seen, os.path.abspath(path))), **values}


def parse_arguments(parser, argv: list[str]) -> tuple:
    """`train.py [CONFIG.yaml|.json] [--flag value ...]` -> (ModelArguments, DataArguments, VLMTrainingArguments,
    the names given by the file or the command line). The file's values become the parser's defaults, converted
    as the command line's strings are, so the same flag on the command line overrides them."""
    argv = list(argv)
    values = {}
    if argv and argv[0].endswith(CONFIG_SUFFIXES):
        path = argv.pop(0)
        values = read_config_file(path)
        known = {action.dest for action in parser._actions}
        unknown = [key for key in values if key not in known]
        if unknown:
            raise ValueError(f"{path}: {unknown[0]!r} is not an argument of train.py (python train.py --help lists "
                             "them)")
        for action in parser._actions:  # a required flag the file gives is not required on the command line
            if action.dest in values:
                action.required = False
        parser.set_defaults(**values)
    given = set(values) | {token[2:].split("=")[0].replace("-", "_") for token in argv if token.startswith("--")}
    return (*parser.parse_args_into_dataclasses(args=argv), given)
