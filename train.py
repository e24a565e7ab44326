"""Train a VLM: python train.py [CONFIG.yaml] --base_language_model LLM --base_vision_model VISION --output_dir DIR

Puts the pieces together (arguments, model, data, trainer) and calls trainer.train(). The arguments come from the
command line, or from a YAML or JSON file of them (configs/) with command-line flags overriding it. See train.sh for
the recipes and docs/training.md for every flag.
"""

import importlib.util
import os
import re
import sys

from common.quiet import quiet_libraries
from training.help import HELP_FLAGS, train_help

if __name__ == "__main__":
    if HELP_FLAGS & set(sys.argv[1:]):  # answered from the sources, before torch and transformers load (7 s -> 0.2 s)
        train_help(__doc__.splitlines()[0]).print_help()
        sys.exit(0)
    quiet_libraries()

import torch
from transformers import HfArgumentParser, IntervalStrategy, set_seed
from transformers.integrations import is_deepspeed_zero3_enabled

from common import read_json
from common.cli import fail
from common.images import image_ref
from common.store import build_store, open_samples, read_samples
from dataset import DataUnavailable, Mixture, PackedDataset, VLMCollator, VLMDataset, read_mixture
from dataset.preference import PreferenceCollator, PreferenceDataset, check_pairs
from dataset.prompts import PromptCollator, PromptDataset, check_prompts
from evaluation.conversations import eval_items
from model import VisionLanguageModel, VLMConfig
from model.checkpoint import load_projector_file, load_starting_point
from model.loss import resolve as resolve_loss
from model.zero3 import place_buffers
from training.arguments import DataArguments, ModelArguments, VLMTrainingArguments, parse_arguments
from training.checkpoints import incomplete_reason, latest_complete_checkpoint
from training.dpo import DPOTrainer
from training.grpo import GRPOTrainer
from training.health import PREEMPTED_EXIT, RunStopped, bad_sample_limit
from training.plot import plot_loss
from training.posttraining import refuse_sharded
from training.rewards import resolve as resolve_rewards
from training.trainer import VLMTrainer
from visual.video import is_video


def check_data(data: DataArguments, args: VLMTrainingArguments) -> list[dict]:
    """Fails before any model is loaded when the data files are missing or empty, or the held-out files are missing,
    malformed or not asked for consistently. Returns the held-out conversations to answer at each evaluation."""
    if data.data_mixture:
        read_mixture(data.data_mixture)
    else:
        for path in (data.image_map, data.captions_file):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"data file not found: {path} (run process_image.py first)")
        if data.data_store:  # a missing or stale store is built now: it reads and checks captions.json once
            build_store(data.image_map, data.captions_file)
        else:
            read_samples(data.image_map, data.captions_file)
    held_out = bool(data.eval_image_map or data.eval_captions_file)
    if held_out and not (data.eval_image_map and data.eval_captions_file):
        raise ValueError("--eval_image_map and --eval_captions_file go together")
    evaluates = args.eval_strategy != IntervalStrategy.NO
    if evaluates != held_out:
        raise ValueError("evaluation during training needs both --eval_strategy (steps or epoch) and held-out data "
                         "(--eval_image_map and --eval_captions_file)")
    if args.eval_generate and not held_out:
        raise ValueError("--eval_generate needs held-out data (--eval_image_map and --eval_captions_file)")
    if args.load_best_model_at_end and args.fsdp:
        raise ValueError("--load_best_model_at_end is not supported with --fsdp: pick the best checkpoint-N by its "
                         "eval metrics in trainer_state.json")
    return eval_items(data.eval_image_map, data.eval_captions_file)[: args.eval_generate] if held_out else []


OBJECTIVES = {"sft": (VLMDataset, VLMTrainer), "dpo": (PreferenceDataset, DPOTrainer),
              "grpo": (PromptDataset, GRPOTrainer)}


def check_objective(data: DataArguments, args: VLMTrainingArguments, mixture: Mixture | None) -> dict:
    """Post-training's flags and data (the mixture's samples, or those of --captions_file), before any model is loaded;
    returns the GRPO reward functions by name."""
    if args.objective not in OBJECTIVES:
        raise ValueError(f"--objective must be one of {', '.join(OBJECTIVES)}, not {args.objective!r}")
    if args.objective == "sft":
        return {}
    if data.packing:
        raise ValueError(f"--packing is for --objective sft; {args.objective} compares whole answers of one prompt")
    refuse_sharded(args, args.objective)
    args.beta = args.beta if args.beta is not None else {"dpo": 0.1, "grpo": 0.0}[args.objective]
    where = data.data_mixture or data.captions_file
    samples = mixture if mixture is not None else open_samples(data.image_map, data.captions_file, data.data_store,
                                                               progress=False)
    if args.objective == "dpo":
        check_pairs(samples, where)
        return {}
    check_prompts(samples, where)
    return resolve_rewards(args.reward_funcs)


def resolve_precision(args: VLMTrainingArguments) -> torch.dtype:
    """Sets bf16/fp16 on the arguments and returns the dtype for the frozen weights."""
    choice = args.precision
    if choice == "auto":
        choice = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if torch.cuda.is_available() else "fp32"
    args.bf16, args.fp16 = choice == "bf16", choice == "fp16"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[choice]


def data_has_videos(data: DataArguments, mixture: Mixture | None) -> bool:
    """Whether the training data names a video (a video file or a frame folder) in its image_map.json."""
    maps = [source.image_map for source in mixture.sources] if mixture is not None else [data.image_map]
    return any(is_video(image_ref(entry)) for path in maps for entry in read_json(path).values())


def build_model(m: ModelArguments, data: DataArguments, dtype: torch.dtype, videos: bool = False
                ) -> VisionLanguageModel:
    if not m.init_from and not (m.base_language_model and m.base_vision_model):
        raise ValueError("give --base_language_model and --base_vision_model, or --init_from a checkpoint folder")
    config = VLMConfig(
        llm=m.base_language_model or "", vision=m.base_vision_model or "", select_layer=m.select_layer,
        select_feature=m.select_feature, post_layernorm=m.post_layernorm, projector_type=m.projector_type,
        pixel_shuffle=m.pixel_shuffle,
        image_aspect_ratio=m.image_aspect_ratio, image_grid_pinpoints=m.image_grid_pinpoints,
        max_image_tokens=m.max_image_tokens,
        image_token=m.image_token, system_prompt=data.system_prompt, vision_mode=m.vision_mode,
        projector_mode=m.projector_mode, llm_mode=m.llm_mode, lora_rank=m.lora_rank, lora_alpha=m.lora_alpha,
        lora_dropout=m.lora_dropout, target_modules=m.target_modules, videos=videos, video_frames=m.video_frames,
        video_fps=m.video_fps, video_pooling=m.video_pooling,
    )
    if m.init_from:  # post-training: the SFT checkpoint, its trained weights merged in, this run's modes applied
        model = load_starting_point(m.init_from, config, dtype)
        model.loss_impl, model.checkpoint_every = m.loss_impl, m.checkpoint_every
        return model
    # A part trained in full keeps fp32 master weights; frozen and LoRA-adapted weights use the half dtype.
    llm_dtype = torch.float32 if m.llm_mode == "full" else dtype
    flash = importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()
    # qlora: the weights are quantised where they load, so each process loads onto its own GPU
    device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if m.llm_mode == "qlora" and torch.cuda.is_available() else None
    model = VisionLanguageModel.build(config, dtype=llm_dtype, vision_dtype=torch.float32 if m.vision_mode == "full"
                                      else dtype, attn_implementation="flash_attention_2" if flash else None,
                                      device=device)
    if m.init_projector:  # stage 2 starts from the stage-1 projector
        load_projector_file(model, m.init_projector)
    if m.checkpoint_every < 1:
        raise ValueError(f"--checkpoint_every must be 1 or more, not {m.checkpoint_every}")
    model.loss_impl, model.checkpoint_every = m.loss_impl, m.checkpoint_every
    model.apply_trainable_modes()
    resolve_loss(m.loss_impl, model.llm.get_output_embeddings())  # a bad choice fails before training starts
    return model


def resume_point(args: VLMTrainingArguments) -> str | None:
    """--resume_from_checkpoint when given (it must be complete), else with --auto_resume the newest complete
    checkpoint-N/ of the output folder. Incomplete ones are named in one line, and left where they are."""
    if args.resume_from_checkpoint:
        if not os.path.isdir(args.resume_from_checkpoint):
            raise FileNotFoundError(f"checkpoint folder not found: {args.resume_from_checkpoint}")
        why = incomplete_reason(args.resume_from_checkpoint)
        if why:
            raise ValueError(f"checkpoint {args.resume_from_checkpoint} is incomplete: {why}")
        return args.resume_from_checkpoint
    if not args.auto_resume:
        return None
    path, passed_over = latest_complete_checkpoint(args.output_dir)
    if args.process_index == 0 and (path or passed_over):
        skipped = f"; passed over incomplete {', '.join(passed_over)}" if passed_over else ""
        print(f"resuming from {path or 'the start'}{skipped}", file=sys.stderr)
    return path


def prepare(model_args: ModelArguments, data_args: DataArguments, args: VLMTrainingArguments, given: set[str],
            callbacks) -> tuple[VLMTrainer, str | None]:
    """Everything up to the first step; bad input raises FileNotFoundError or ValueError. `given`: the argument
    names the command line or the config file set."""
    heldout = check_data(data_args, args)
    mixture = Mixture.read(data_args.data_mixture, args.seed, data_args.data_store) if data_args.data_mixture else None
    reward_funcs = check_objective(data_args, args, mixture)
    bad_sample_limit(args.max_bad_samples, 1)  # validates the flag before any model is loaded
    if args.fsdp and model_args.llm_mode == "qlora":
        raise ValueError("--llm_mode qlora does not run under --fsdp (FSDP2 cannot shard bitsandbytes' 4-bit weights): "
                         "train QLoRA with one process per GPU")
    dtype = resolve_precision(args)
    if not torch.cuda.is_available():  # pinned memory serves only a GPU (torch warns of it on every DataLoader)
        args.dataloader_pin_memory = False
    set_seed(args.seed)  # the projector and LoRA initialisations are random too: a run must be repeatable
    if args.deepspeed:  # ZeRO-3 partitions weights at load: deepspeed.comm must know the processes by then
        import deepspeed

        deepspeed.init_distributed(dist_backend=args.ddp_backend)  # joins the group accelerate set up
    model = build_model(model_args, data_args, dtype, data_has_videos(data_args, mixture))
    if is_deepspeed_zero3_enabled():  # weights were partitioned at load; buffers are still on the CPU
        place_buffers(model, args.device)
    if mixture is not None and args.process_index == 0:
        print(mixture.summary(), file=sys.stderr)
    dataset_class, trainer_class = OBJECTIVES[args.objective]
    dataset = dataset_class(data_args.image_map, data_args.captions_file, model.processor, data_args.max_length,
                            seed=args.seed, cache_images=data_args.cache_images, store=data_args.data_store,
                            samples=mixture)
    if data_args.packing:  # the plan depends only on the seed and the lengths: every process makes the same
        dataset = PackedDataset.plan(dataset, data_args.max_length, data_args.packing_buffer, args.seed)
        if args.process_index == 0:
            grouped = args.train_sampling_strategy == "group_by_length"
            print(dataset.summary(args.per_device_train_batch_size, grouped), file=sys.stderr)
    if args.activation_checkpointing is None:  # on by default for LLMs of 1B parameters and more
        n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.llm.parameters())  # ZeRO-3: whole sizes
        args.activation_checkpointing = n_params >= 1e9
    if args.report_to == [] and "report_to" not in given and importlib.util.find_spec("tensorboard"):
        args.report_to = ["tensorboard"]
    eval_dataset = None
    if data_args.eval_captions_file:  # the held-out loss, at the labelled positions as the training loss
        eval_dataset = VLMDataset(data_args.eval_image_map, data_args.eval_captions_file, model.processor,
                                  data_args.max_length, seed=args.seed, cache_images=data_args.cache_images,
                                  store=data_args.data_store)
        args.prediction_loss_only = True
    pad = model.tokenizer.pad_token_id or model.stop_token_ids[0]
    collator = {"sft": VLMCollator(pad), "dpo": PreferenceCollator(pad),
                "grpo": PromptCollator(pad, args.num_generations)}[args.objective]
    extra = {"reward_funcs": reward_funcs} if args.objective == "grpo" else {}
    trainer = trainer_class(model=model, args=args, train_dataset=dataset, eval_dataset=eval_dataset, heldout=heldout,
                            callbacks=callbacks, data_collator=collator, eval_collator=VLMCollator(pad), **extra)
    return trainer, resume_point(args)


def one_sentence(error: Exception) -> str:
    """An error raised in a DataLoader worker arrives with the worker's traceback in its message."""
    lines = str(error).strip().splitlines()
    return re.sub(r"^[\w.]+: ", "", lines[-1]) if len(lines) > 1 else str(error)


def main(argv=None, callbacks=None) -> int:
    parser = HfArgumentParser((ModelArguments, DataArguments, VLMTrainingArguments),
                              description=__doc__.splitlines()[0])
    try:  # the Trainer's own checks of its flags (--load_best_model_at_end with unlike strategies...): one sentence
        model_args, data_args, args, given = parse_arguments(parser, sys.argv[1:] if argv is None else argv)
        trainer, resume = prepare(model_args, data_args, args, given, callbacks)
    except (FileNotFoundError, ValueError) as e:
        return fail(e)
    try:
        trainer.train(resume_from_checkpoint=resume)
    except (RunStopped, DataUnavailable) as e:  # raised on every process alike
        return fail(one_sentence(e))
    if trainer.preempted:
        if trainer.is_world_process_zero():
            print(f"preempted ({trainer.preempted}): saved checkpoint-{trainer.state.global_step} in "
                  f"{args.output_dir}; run the same command again to resume (exit {PREEMPTED_EXIT})", file=sys.stderr)
        return PREEMPTED_EXIT
    trainer.save_model(args.output_dir)
    if trainer.is_world_process_zero():
        trainer.save_run_state(args.output_dir)
        print(f"run summary: {trainer.health.summary()}", file=sys.stderr)
        try:
            print(f"loss curve: {plot_loss(args.output_dir)}", file=sys.stderr)
        except ValueError as e:  # a run too short to log a loss still succeeds
            print(f"no loss curve: {e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
