"""Export a trained checkpoint: LoRA merged into a standalone folder, or a transformers Llava checkpoint.

    python -m model.export CHECKPOINT OUTPUT                  # merged: our layout, loadable by test.py
    python -m model.export CHECKPOINT OUTPUT --format llava   # LlavaForConditionalGeneration (+ processor)

The Llava format needs an LLM that transformers supports natively (Qwen2, Llama, ...), a CLIP or SigLIP
tower and the mlp2x_gelu projector; plain transformers, vLLM and SGLang can then serve the model.
For our QWen (Qwen-7B), the export is the merged folder, loaded with `qwen/` through test.py.
"""

import argparse
import sys
from dataclasses import replace

import torch
from peft import PeftModel
from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

from common import atomic_folder, exits_on
from visual.hf_tower import HFVisionTower

from .checkpoint import load_checkpoint, save_checkpoint
from .model import VisionLanguageModel


def merge_lora(model: VisionLanguageModel) -> VisionLanguageModel:
    """Folds the LoRA adapter into the LLM weights; the model then saves as a full (standalone) one."""
    if isinstance(model.llm, PeftModel):
        model.llm = model.llm.merge_and_unload()
    model.config = replace(model.config, llm_mode="full", vision_mode="full")
    return model


def llava_strategy(model: VisionLanguageModel) -> str:
    """Llava's "default" drops the first token of the selected layer; "full" keeps them all."""
    dropped = {"patch": model.vision_tower.prefix_tokens, "cls_patch": 0, "all_but_first": 1}
    n = dropped[model.config.select_feature]
    if n not in (0, 1):
        raise ValueError(f"a tower with {n} prefix tokens has no Llava feature-select strategy")
    return "default" if n == 1 else "full"


def to_llava(model: VisionLanguageModel) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    cfg = model.config
    llm = model.llm.merge_and_unload() if isinstance(model.llm, PeftModel) else model.llm
    problems = []
    if not type(llm).__module__.startswith("transformers."):
        problems.append(f"the LLM {type(llm).__name__} is not a native transformers model (export it merged)")
    if not isinstance(model.vision_tower, HFVisionTower):
        problems.append("the vision tower is not a transformers CLIP/SigLIP model")
    if cfg.projector_type != "mlp2x_gelu":
        problems.append(f"Llava's projector is mlp2x_gelu, not {cfg.projector_type}")
    if cfg.post_layernorm:
        problems.append("Llava cannot apply the vision post-layernorm to the selected layer")
    if problems:
        raise ValueError("cannot export to Llava: " + "; ".join(problems))
    vision = model.vision_tower.vision_model
    config = LlavaConfig(
        vision_config=vision.config, text_config=llm.config, image_token_id=model.image_token_id,
        projector_hidden_act="gelu", vision_feature_layer=cfg.select_layer,
        vision_feature_select_strategy=llava_strategy(model), image_seq_length=cfg.num_image_tokens,
        multimodal_projector_bias=True,
    )
    base = getattr(llm, llm.base_model_prefix)
    state = {f"model.vision_tower.{k}": v for k, v in vision.state_dict().items()}
    state |= {f"model.language_model.{k}": v for k, v in base.state_dict().items()}
    state |= {f"model.multi_modal_projector.linear_{i}.{p}": getattr(model.projector[j], p)
              for i, j in ((1, 0), (2, 2)) for p in ("weight", "bias")}
    state["lm_head.weight"] = llm.get_output_embeddings().weight
    with torch.device("meta"):
        llava = LlavaForConditionalGeneration(config)
    # strict: every Llava weight comes from ours and nothing is left over
    llava.load_state_dict({k: v.detach().contiguous() for k, v in state.items()}, strict=True, assign=True)
    processor = LlavaProcessor(
        image_processor=model.vision_tower.image_processor.processor, tokenizer=model.tokenizer,
        patch_size=vision.config.patch_size, vision_feature_select_strategy=config.vision_feature_select_strategy,
        image_token=cfg.image_token, num_additional_image_tokens=model.vision_tower.prefix_tokens,
        chat_template=cfg.chat_template,
    )
    return llava, processor


def export(checkpoint: str, output: str, fmt: str = "merged", llm=None, vision=None):
    model = load_checkpoint(checkpoint, llm=llm, vision=vision)
    if fmt == "merged":
        save_checkpoint(merge_lora(model), output)
        return
    llava, processor = to_llava(model)
    with atomic_folder(output) as tmp:
        llava.save_pretrained(tmp)
        processor.save_pretrained(tmp)


@exits_on(FileNotFoundError, ValueError)
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a checkpoint folder (ours or the original project's)")
    parser.add_argument("output", help="folder to write; replaced atomically")
    parser.add_argument("--format", choices=["merged", "llava"], default="merged")
    parser.add_argument("--base_language_model", help="override the base LLM the checkpoint names")
    parser.add_argument("--base_vision_model", help="override the base vision encoder the checkpoint names")
    args = parser.parse_args(argv)
    export(args.checkpoint, args.output, args.format, args.base_language_model, args.base_vision_model)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    sys.exit(main())
