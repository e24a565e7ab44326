"""Export a trained checkpoint: LoRA merged into a standalone folder, or a transformers Llava checkpoint.

    python -m model.export CHECKPOINT OUTPUT                  # merged: our layout, loadable by test.py
    python -m model.export CHECKPOINT OUTPUT --format llava   # LlavaForConditionalGeneration (+ processor)
    python -m model.export CHECKPOINT OUTPUT --dtype bf16     # the weights in bf16 (default fp32)

A qlora checkpoint (LoRA on an NF4 base) is dequantised first, then merged: the LoRA update is added to the
dequantised weights it was trained against, in --dtype, and the output is an ordinary full-precision model.

`--format llava` follows the checkpoint's image layout: `square` and `pad` give LlavaForConditionalGeneration
(with `pad`, its processor is LlavaImageProcessor(do_pad=True)); `anyres` gives LlavaNextForConditionalGeneration
with the same grid pinpoints, its newline vector and LlavaNextProcessor; `anyres_max_N`, and any checkpoint trained on
videos, gives LlavaOnevisionForConditionalGeneration with LlavaOnevisionProcessor (images, several images, videos).

The Llava format needs an LLM that transformers supports natively (Qwen2, Llama, ...) or our QWen, which
is converted to Qwen2 (weights and a fast tokenizer with identical ids; exact within its seq_length), a
CLIP or SigLIP tower and the mlp2x_gelu projector. The weights use the key layout vLLM and SGLang read,
and the chat template takes OpenAI-style list content, so `vllm serve OUTPUT` serves it as trained.
"""

import argparse
import json
import logging
import os
import sys
from dataclasses import replace

from common import exits_on
from common.quiet import hide_weight_loading_bar, quiet_libraries
from model.config import CONFIG_NAME
from visual.families import is_open_clip

DTYPE_NAMES = ("bf16", "fp32")
DEMO_HINT = "for the CPU demo, python -m demo.run --vision vit makes one"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a checkpoint folder (ours or the original project's)")
    parser.add_argument("output", help="folder to write; replaced atomically")
    parser.add_argument("--format", choices=["merged", "llava"], default="merged")
    parser.add_argument("--base_language_model", help="override the base LLM the checkpoint names")
    parser.add_argument("--base_vision_model", help="override the base vision encoder the checkpoint names")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default="fp32", help="the exported weights' dtype")
    return parser.parse_args(argv)


def llava_problems(vision: str, projector_type: str, post_layernorm: bool, aspect: str = "square",
                   videos: bool = False, video_pooling: int = 2) -> list[str]:
    """Why a VLM cannot become a Llava checkpoint, from its config alone (before any weight loads)."""
    problems = []
    if videos and not aspect.startswith("anyres_max_"):
        problems.append(f"its videos export to LlavaOnevision, which lays single images out as anyres_max_N, not "
                        f"{aspect}: train a video model with --image_aspect_ratio anyres_max_9 to export it")
    if videos and video_pooling != 2:
        problems.append(f"LlavaOnevision pools frame features by 2, not --video_pooling {video_pooling}")
    if aspect == "native":
        problems.append("its images keep their own aspect ratio in a SigLIP2 NaFlex tower (--image_aspect_ratio "
                        "native), and Llava and LlavaNext feed their towers fixed-size images, so no Llava format vLLM "
                        "serves holds it; test.py, eval.py, the web UI and lmms-eval --model vlm serve it as trained")
    if is_open_clip(vision):
        problems.append(f"its vision tower is open_clip ({vision}), not a transformers CLIP/SigLIP model: train with "
                        f"a CLIP/SigLIP hub id or folder as --base_vision_model ({DEMO_HINT})")
    if projector_type == "pixel_shuffle_mlp":
        problems.append("Llava has no pixel shuffle, and Idefics3/SmolVLM, which have one, follow it with a single "
                        "bias-free linear layer and split images into tiles with tokens of their own, so no format "
                        "vLLM serves holds a pixel_shuffle_mlp model")
    elif projector_type != "mlp2x_gelu":
        problems.append(f"Llava's projector is mlp2x_gelu, not {projector_type}")
    if post_layernorm:
        problems.append("Llava cannot apply the vision post-layernorm to the selected layer")
    return problems


@exits_on(FileNotFoundError, ValueError)
def preflight(argv=None) -> None:
    """The flags, the checkpoint folder and, for --format llava, its config: checked before torch loads."""
    args = parse_args(argv)
    if not os.path.isdir(args.checkpoint):
        raise FileNotFoundError(f"checkpoint folder not found: {args.checkpoint}")
    config = os.path.join(args.checkpoint, CONFIG_NAME)
    if args.format == "llava" and os.path.isfile(config):  # (the original project's layout has no config)
        with open(config, encoding="utf-8") as f:
            saved = json.load(f)
        problems = llava_problems(args.base_vision_model or saved["vision"], saved.get("projector_type", "mlp2x_gelu"),
                                  saved.get("post_layernorm", False), saved.get("image_aspect_ratio", "square"),
                                  saved.get("videos", False), saved.get("video_pooling", 2))
        if problems:
            raise ValueError(f"cannot export {args.checkpoint} to Llava: " + "; ".join(problems))


if __name__ == "__main__":
    code = preflight()  # --help, bad flags and a checkpoint Llava cannot take answer before torch loads
    if code:
        sys.exit(code)
    quiet_libraries()
    hide_weight_loading_bar()

import torch
from peft import PeftModel
from transformers import (
    GenerationConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    LlavaProcessor,
)

from common import atomic_folder
from qwen import QWenLMHeadModel
from qwen.convert import inexact_features, to_fast_tokenizer, to_qwen2
from visual.hf_tower import HFVisionTower

from .checkpoint import load_checkpoint, save_checkpoint
from .model import VisionLanguageModel

logger = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def merge_lora(model: VisionLanguageModel) -> VisionLanguageModel:
    """Folds the LoRA adapter into the LLM weights; the model then saves as a full (standalone) one."""
    if isinstance(model.llm, PeftModel):
        model.llm = model.llm.merge_and_unload()
    model.vision_tower.merge_lora()
    model.config = replace(model.config, llm_mode="full", vision_mode="full")
    return model


def llava_strategy(model: VisionLanguageModel) -> str:
    """Llava's "default" drops the first token of the selected layer; "full" keeps them all."""
    dropped = {"patch": model.vision_tower.prefix_tokens, "cls_patch": 0, "all_but_first": 1}
    n = dropped[model.config.select_feature]
    if n not in (0, 1):
        raise ValueError(f"cannot export to Llava: the vision tower has {n} tokens before its patch grid (a CLS token "
                         f"and registers, as DINOv2-with-registers and DINOv3), and Llava can drop only the first")
    return "default" if n == 1 else "full"


def list_content_template(template: str, image_token: str, system_prompt: str | None = None) -> str:
    """The training chat template, taking OpenAI-style content too: a list of text parts and image parts
    (what vLLM's chat API and OpenAI server send) is joined in order, each image part becoming the image
    token, so `[image, text]` renders exactly as the training format's `<image>question`. The checkpoint's
    system prompt goes first when the conversation brings none, as our processor does."""
    system = (f"{{%- if messages | length == 0 or messages[0]['role'] != 'system' -%}}"
              f"{{%- set ns.messages = [{{'role': 'system', 'content': {json.dumps(system_prompt)}}}] -%}}"
              f"{{%- endif -%}}") if system_prompt is not None else ""
    return (
        "{%- set ns = namespace(messages=[], text='') -%}" + system +
        "{%- for message in messages -%}"
        "{%- if message['content'] is string -%}{%- set ns.text = message['content'] -%}"
        "{%- else -%}{%- set ns.text = '' -%}"
        "{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'text' -%}{%- set ns.text = ns.text + part['text'] -%}"
        f"{{%- elif part['type'] in ['image', 'image_url', 'image_pil'] -%}}{{%- set ns.text = ns.text + "
        f"{json.dumps(image_token)} -%}}"
        "{%- endif -%}{%- endfor -%}{%- endif -%}"
        "{%- set ns.messages = ns.messages + [{'role': message['role'], 'content': ns.text}] -%}"
        "{%- endfor -%}{%- set messages = ns.messages -%}" + template
    )


def native_llm(model: VisionLanguageModel):
    """The LLM (LoRA merged) and its tokenizer as transformers-native classes: our QWen becomes Qwen2."""
    llm = model.llm.merge_and_unload() if isinstance(model.llm, PeftModel) else model.llm
    if not isinstance(llm, QWenLMHeadModel):
        return llm, model.tokenizer
    inexact = inexact_features(llm.config)
    if inexact:
        logger.warning("%s uses %s past seq_length (%d tokens) and Qwen2 has neither: the export equals it within "
                       "%d tokens, and its max_position_embeddings is %d", model.config.llm, " and ".join(inexact),
                       llm.config.seq_length, llm.config.seq_length, llm.config.seq_length)
    return to_qwen2(llm), to_fast_tokenizer(model.tokenizer)


def to_llava(model: VisionLanguageModel):
    """The Llava (or, for anyres, LlavaNext) model, weights shared with ours, not copied, and its processor."""
    cfg = model.config
    llava, tokenizer = to_llava_model(model)
    template = list_content_template(cfg.chat_template or tokenizer.chat_template, cfg.image_token, cfg.system_prompt)
    tokenizer.chat_template = template
    vision = model.vision_tower.vision_model
    if isinstance(llava, LlavaOnevisionForConditionalGeneration):
        videos = model.image_inputs.videos
        video_processor = videos.processor if videos else LlavaOnevisionVideoProcessor(
            **{k: getattr(model.image_inputs.processor, k) for k in ("size", "resample", "image_mean", "image_std")})
        processor = LlavaOnevisionProcessor(
            image_processor=model.image_inputs.processor, video_processor=video_processor, tokenizer=tokenizer,
            num_image_tokens=cfg.num_image_tokens + (llava.config.vision_feature_select_strategy == "default"),
            vision_feature_select_strategy=llava.config.vision_feature_select_strategy, image_token=cfg.image_token,
            video_token=cfg.video_token if cfg.videos else cfg.image_token, chat_template=template,
            vision_aspect_ratio=cfg.image_aspect_ratio)
        return llava, processor
    processor_class = LlavaNextProcessor if cfg.image_aspect_ratio == "anyres" else LlavaProcessor
    image_processor = model.vision_tower.image_processor.processor if cfg.image_aspect_ratio == "square" else \
        model.image_inputs.processor  # LlavaImageProcessor(do_pad=True) or LlavaNextImageProcessor, as we process
    processor = processor_class(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=vision.config.patch_size,
        vision_feature_select_strategy=llava.config.vision_feature_select_strategy, image_token=cfg.image_token,
        num_additional_image_tokens=model.vision_tower.prefix_tokens, chat_template=template,
    )
    return llava, processor


def to_llava_model(model: VisionLanguageModel):
    """LlavaForConditionalGeneration (LlavaNextForConditionalGeneration for anyres) with our weights, and the
    transformers tokenizer that goes with it."""
    cfg = model.config
    problems = llava_problems(cfg.vision, cfg.projector_type, cfg.post_layernorm, cfg.image_aspect_ratio, cfg.videos,
                              cfg.video_pooling)
    if not problems and not isinstance(model.vision_tower, HFVisionTower):
        problems.append("the vision tower is not a transformers CLIP/SigLIP model")
    if problems:
        raise ValueError("cannot export to Llava: " + "; ".join(problems))
    llm, tokenizer = native_llm(model)
    model.vision_tower.merge_lora()
    if not type(llm).__module__.startswith("transformers."):
        raise ValueError(f"cannot export to Llava: the LLM {type(llm).__name__} is not a transformers model")
    vision = model.vision_tower.vision_model
    common = dict(vision_config=vision.config, text_config=llm.config, image_token_id=model.image_token_id,
                  projector_hidden_act="gelu", vision_feature_layer=cfg.select_layer,
                  vision_feature_select_strategy=llava_strategy(model), image_seq_length=cfg.num_image_tokens,
                  multimodal_projector_bias=True)
    anyres = cfg.image_aspect_ratio.startswith("anyres")
    if cfg.image_aspect_ratio.startswith("anyres_max_"):  # OneVision: images, several images and videos
        model_class = LlavaOnevisionForConditionalGeneration
        video = model.video_token_id if cfg.videos else model.image_token_id  # no videos: none ever comes
        config = LlavaOnevisionConfig(image_grid_pinpoints=cfg.image_grid_pinpoints, video_token_id=video,
                                      vision_aspect_ratio=cfg.image_aspect_ratio, **common)
    elif anyres:
        config_class, model_class = LlavaNextConfig, LlavaNextForConditionalGeneration
        config = config_class(image_grid_pinpoints=cfg.image_grid_pinpoints, **common)
    else:
        config_class, model_class = LlavaConfig, LlavaForConditionalGeneration
        config = config_class(**common)
    base = getattr(llm, llm.base_model_prefix)
    state = {f"model.vision_tower.{k}": v for k, v in vision.state_dict().items()}
    state |= {f"model.language_model.{k}": v for k, v in base.state_dict().items()}
    state |= {f"model.multi_modal_projector.linear_{i}.{p}": getattr(model.projector[j], p)
              for i, j in ((1, 0), (2, 2)) for p in ("weight", "bias")}
    if anyres:
        state["model.image_newline"] = model.projector.image_newline
    state["lm_head.weight"] = llm.get_output_embeddings().weight
    with torch.device("meta"):
        llava = model_class(config)
    # strict: every Llava weight comes from ours and nothing is left over
    llava.load_state_dict({k: v.detach().contiguous() for k, v in state.items()}, strict=True, assign=True)
    # buffers that no state dict holds (position ids, rotary frequencies) come from our modules too
    ours = {f"model.vision_tower.{k}": v for k, v in vision.named_buffers()}
    ours |= {f"model.language_model.{k}": v for k, v in base.named_buffers()}
    for name, buffer in list(llava.named_buffers()):
        if buffer.is_meta:
            owner, _, leaf = name.rpartition(".")
            llava.get_submodule(owner)._buffers[leaf] = ours[name]
    llava.generation_config = GenerationConfig(eos_token_id=model.stop_token_ids, pad_token_id=tokenizer.pad_token_id)
    end_of_turn = model.processor.end_of_turn_id
    if end_of_turn is not None and tokenizer.eos_token_id != end_of_turn:
        # a chat model's reply ends there, so that is its EOS (as in Qwen2-Instruct's tokenizer): tools that stop at
        # tokenizer.eos_token_id rather than the generation config (lmms-eval's llava_hf) stop after the answer too
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(end_of_turn)
    return llava, tokenizer


SERVED_TOWERS = ("clip_vision_model", "siglip_vision_model")  # the towers vLLM's and SGLang's Llava build


def serving_state_dict(llava) -> dict:
    """Llava's weights in the key layout that vLLM and SGLang read: a CLIP or SigLIP tower's as
    `vision_tower.vision_model.*` (the original Llava checkpoints' layout); transformers reads it too. Other towers
    (DINOv2, AIMv2), which transformers' Llava takes but those servers do not, keep transformers' layout."""
    if llava.config.vision_config.model_type not in SERVED_TOWERS:
        logger.warning("the %s vision tower exports to a Llava checkpoint that transformers loads; vLLM and SGLang "
                       "serve Llava with CLIP or SigLIP towers only", llava.config.vision_config.model_type)
        return llava.state_dict()
    tower = "model.vision_tower."
    return {f"{tower}vision_model.{k[len(tower):]}" if k.startswith(tower) else k: v
            for k, v in llava.state_dict().items()}


def export(checkpoint: str, output: str, fmt: str = "merged", llm=None, vision=None, dtype=torch.float32):
    model = load_checkpoint(checkpoint, llm=llm, vision=vision, dtype=dtype, dequantize=True)
    if model.config.llm_mode == "qlora":
        logger.warning("%s: the LLM's NF4 weights are dequantised to %s, then LoRA is merged into them", checkpoint,
                       str(dtype).removeprefix("torch."))
    if fmt == "merged":
        save_checkpoint(merge_lora(model), output)
        return
    llava, processor = to_llava(model)
    with atomic_folder(output) as tmp:
        llava.save_pretrained(tmp, state_dict=serving_state_dict(llava))  # written once, sharded as usual
        processor.save_pretrained(tmp)


@exits_on(FileNotFoundError, ValueError)
def main(argv=None) -> int:
    code = preflight(argv)
    if code:
        return code
    args = parse_args(argv)
    export(args.checkpoint, args.output, args.format, args.base_language_model, args.base_vision_model,
           DTYPES[args.dtype])
    print(f"wrote {args.output}")


if __name__ == "__main__":
    sys.exit(main())
