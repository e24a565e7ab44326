"""Train a VLM: python train.py --base_language_model LLM --base_vision_model VISION --output_dir DIR [...]

Puts the pieces together (arguments, model, data, trainer) and calls trainer.train(). See train.sh for
the recipes and README.md for every flag.
"""

import importlib.util
import json
import os
import sys

import torch
from transformers import HfArgumentParser, set_seed
from transformers.trainer_utils import get_last_checkpoint

from dataset import VLMCollator, VLMDataset
from model import VisionLanguageModel, VLMConfig
from model.checkpoint import load_projector_file
from training.arguments import DataArguments, ModelArguments, VLMTrainingArguments
from training.plot import plot_loss
from training.trainer import VLMTrainer


def check_data(data: DataArguments):
    """Fails before any model is loaded when the data files are missing or empty."""
    for path in (data.image_map, data.captions_file):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"data file not found: {path} (run process_image.py first)")
    with open(data.captions_file, encoding="utf-8") as f:
        if not json.load(f):
            raise ValueError(f"{data.captions_file} holds no samples")


def resolve_precision(args: VLMTrainingArguments) -> torch.dtype:
    """Sets bf16/fp16 on the arguments and returns the dtype for the frozen weights."""
    choice = args.precision
    if choice == "auto":
        choice = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if torch.cuda.is_available() else "fp32"
    args.bf16, args.fp16 = choice == "bf16", choice == "fp16"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[choice]


def build_model(m: ModelArguments, data: DataArguments, dtype: torch.dtype) -> VisionLanguageModel:
    config = VLMConfig(
        llm=m.base_language_model, vision=m.base_vision_model, select_layer=m.select_layer,
        select_feature=m.select_feature, post_layernorm=m.post_layernorm, projector_type=m.projector_type,
        image_token=m.image_token, system_prompt=data.system_prompt, vision_mode=m.vision_mode,
        projector_mode=m.projector_mode, llm_mode=m.llm_mode, lora_rank=m.lora_rank, lora_alpha=m.lora_alpha,
        lora_dropout=m.lora_dropout, target_modules=m.target_modules,
    )
    # A part trained in full keeps fp32 master weights; frozen and LoRA-adapted weights use the half dtype.
    llm_dtype = torch.float32 if m.llm_mode == "full" else dtype
    flash = importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()
    model = VisionLanguageModel.build(config, dtype=llm_dtype, vision_dtype=torch.float32 if m.vision_mode == "full"
                                      else dtype, attn_implementation="flash_attention_2" if flash else None)
    if m.init_projector:  # stage 2 starts from the stage-1 projector
        load_projector_file(model, m.init_projector)
    return model.apply_trainable_modes()


def main(argv=None, callbacks=None) -> int:
    parser = HfArgumentParser((ModelArguments, DataArguments, VLMTrainingArguments))
    model_args, data_args, args = parser.parse_args_into_dataclasses(args=argv)
    try:
        check_data(data_args)
        dtype = resolve_precision(args)
        set_seed(args.seed)  # the projector and LoRA initialisations are random too: a run must be repeatable
        model = build_model(model_args, data_args, dtype)
        dataset = VLMDataset(data_args.image_map, data_args.captions_file, model.processor, data_args.max_length,
                             seed=args.seed)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.activation_checkpointing is None:  # on by default for LLMs of 1B parameters and more
        args.activation_checkpointing = sum(p.numel() for p in model.llm.parameters()) >= 1e9
    if args.report_to == [] and "--report_to" not in (argv or sys.argv) and importlib.util.find_spec("tensorboard"):
        args.report_to = ["tensorboard"]

    trainer = VLMTrainer(model=model, args=args, train_dataset=dataset, callbacks=callbacks,
                         data_collator=VLMCollator(model.tokenizer.pad_token_id or model.stop_token_ids[0]))
    resume = args.resume_from_checkpoint
    if resume is None and args.auto_resume and os.path.isdir(args.output_dir):
        resume = get_last_checkpoint(args.output_dir)
        if resume:
            print(f"resuming from {resume}", file=sys.stderr)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(args.output_dir)
    if trainer.is_world_process_zero():
        trainer.state.save_to_json(os.path.join(args.output_dir, "trainer_state.json"))
        try:
            print(f"loss curve: {plot_loss(args.output_dir)}", file=sys.stderr)
        except ValueError as e:  # a run too short to log a loss still succeeds
            print(f"no loss curve: {e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
