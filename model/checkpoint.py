"""Checkpoint folders: writing them atomically, and loading ours or the original project's layout.

Our layout (one self-contained folder, loadable from its path alone):
    vlm_config.json          VLMConfig: base models, feature selection, image token, N, dims, template, modes
    projector.safetensors    projector weights
    adapter_config.json      \\ llm_mode=lora or qlora: the peft adapter (qlora: on the base loaded in NF4)
    adapter_model.safetensors/
    llm/                     llm_mode=full: the whole LLM and its tokenizer
    vision/                  vision_mode=full: the whole vision tower and its processor
    vision_adapter.safetensors  vision_mode=lora: the tower's LoRA weights (its rank and alpha are the LLM's)
The original project's layout: adapter_config.json, adapter_model.bin, other_params.bin (projector).
"""

import json
import logging
import os
from dataclasses import dataclass, replace

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoConfig

from common import atomic_folder

from .config import CONFIG_NAME, LORA_MODES, VLMConfig
from .model import VisionLanguageModel

PROJECTOR_WEIGHTS = "projector.safetensors"
LLM_DIR, VISION_DIR, VISION_ADAPTER = "llm", "vision", "vision_adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
LEGACY_PROJECTOR, LEGACY_ADAPTER = "other_params.bin", "adapter_model.bin"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LegacyCheckpoint:
    """What the original project's released checkpoints (SIGLIP_Qwen_epoch19000/36000) were trained with:
    SigLIP's last_hidden_state (after its post-layernorm) minus the first token, 728 features per image."""

    llm: str = "Qwen/Qwen-7B-Chat"
    vision: str = "google/siglip-so400m-patch14-384"
    system_prompt: str = "你是一位图像理解助手。"
    select_layer: int = -1
    select_feature: str = "all_but_first"
    post_layernorm: bool = True


def save_checkpoint(model: VisionLanguageModel, folder: str, state_dict: dict | None = None):
    """Writes `folder` atomically. `state_dict` (the VLM's weights by name: `projector.*`, `llm.*`, `vision_tower.*`)
    replaces the model's own tensors where those are shards, as under FSDP: the whole weights, gathered."""
    cfg = model.config

    def part(prefix: str) -> dict | None:
        return None if state_dict is None else {k[len(prefix):]: v for k, v in state_dict.items()
                                                if k.startswith(prefix)}

    with atomic_folder(folder) as tmp:
        cfg.save(tmp)
        save_file({k: v.contiguous() for k, v in (part("projector.") or model.projector.state_dict()).items()},
                  os.path.join(tmp, PROJECTOR_WEIGHTS))
        if cfg.llm_mode in LORA_MODES:
            # the image-token rows added to the embeddings are deterministic, so they need not be saved
            model.llm.save_pretrained(tmp, save_embedding_layers=False, state_dict=part("llm."))
        elif cfg.llm_mode == "full":
            model.llm.save_pretrained(os.path.join(tmp, LLM_DIR), state_dict=part("llm."))
            model.tokenizer.save_pretrained(os.path.join(tmp, LLM_DIR))
        if cfg.vision_mode == "full":
            model.vision_tower.save_pretrained(os.path.join(tmp, VISION_DIR), part("vision_tower."))
        elif cfg.vision_mode == "lora":
            state = part("vision_tower.") or model.vision_tower.lora_state_dict()
            save_file({k: v.contiguous() for k, v in state.items() if "lora_" in k}, os.path.join(tmp, VISION_ADAPTER))


def load_vision_adapter(model: VisionLanguageModel, folder: str):
    """--vision_mode lora: the tower's adapters, added where missing, and their weights from `folder`."""
    require(folder, VISION_ADAPTER)
    model.add_vision_lora()
    tower = model.vision_tower
    state = load_file(os.path.join(folder, VISION_ADAPTER))
    result = tower.load_state_dict(state, strict=False)
    if result.unexpected_keys or set(tower.lora_state_dict()) != set(state):
        raise ValueError(f"the vision adapter in {folder} does not fit this tower: {sorted(state)[:3]}")


def require(folder: str, *names: str):
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"checkpoint folder not found: {folder}")
    for name in names:
        if not os.path.exists(os.path.join(folder, name)):
            raise FileNotFoundError(f"checkpoint {folder} is incomplete: {name} is missing")


def load_checkpoint(folder: str, llm: str | None = None, vision: str | None = None, dtype=torch.float32,
                    device="cpu", trainable: bool = False, dequantize: bool = False) -> VisionLanguageModel:
    """Loads a checkpoint folder (ours, or the original project's, told apart by their files).
    `llm`/`vision` override the base models the checkpoint names, e.g. with local copies. A qlora checkpoint loads
    onto its 4-bit base, or with `dequantize` onto that base's dequantised weights in `dtype` (for merging)."""
    require(folder)
    if os.path.exists(os.path.join(folder, LEGACY_PROJECTOR)) and not os.path.exists(
            os.path.join(folder, CONFIG_NAME)):
        return load_legacy_checkpoint(folder, llm, vision, dtype, device)
    require(folder, CONFIG_NAME, PROJECTOR_WEIGHTS)
    config = VLMConfig.load(folder)
    needed = {"lora": [ADAPTER_CONFIG], "qlora": [ADAPTER_CONFIG], "full": [os.path.join(LLM_DIR, "config.json")],
              "frozen": []}
    vision_needed = {"full": [VISION_DIR], "lora": [VISION_ADAPTER], "frozen": []}[config.vision_mode]
    require(folder, *needed[config.llm_mode], *vision_needed)
    llm_path = os.path.join(folder, LLM_DIR) if config.llm_mode == "full" else llm or config.llm
    vision_path = os.path.join(folder, VISION_DIR) if config.vision_mode == "full" else vision or config.vision
    if config.llm_mode == "full" and llm:
        logger.warning("checkpoint %s holds its whole LLM; the base LLM %s is not used", folder, llm)
    if config.vision_mode == "full" and vision:
        logger.warning("checkpoint %s holds its whole vision tower; %s is not used", folder, vision)
    if config.init_from:  # trained on top of another checkpoint: that one first, then this one's weights
        model = load_starting_point(config.init_from, config, dtype, device)
        model.config = config
        load_trainable_weights(model, folder)
        return model.eval()
    check_llm_matches(config, llm_path, folder)
    model = VisionLanguageModel.build(replace(config), dtype, device, llm_path, vision_path)
    check_vision_matches(config, model.config, vision_path, folder)
    load_projector_file(model, folder)
    if config.llm_mode == "qlora" and dequantize:
        model.llm = model.llm.dequantize(dtype=dtype)
    if config.llm_mode in LORA_MODES:
        model.llm = PeftModel.from_pretrained(model.llm, folder, is_trainable=trainable)
    if config.vision_mode == "lora":
        load_vision_adapter(model, folder)
        if not trainable:
            model.vision_tower.requires_grad_(False)
    return model.eval()


def load_starting_point(folder: str, config: VLMConfig, dtype=torch.float32, device="cpu") -> VisionLanguageModel:
    """Checkpoint `folder` as the start of another stage (train.py --init_from; DPO or GRPO after SFT): its base
    models, image layout and trained weights, its LoRA adapter merged into the LLM. `config` gives the new stage's
    modes (vision, projector, llm, LoRA), applied; its init_from is set to `folder` when the new stage's checkpoints
    do not hold everything `folder` changed (they then load it first)."""
    start = VLMConfig.load(folder) if os.path.exists(os.path.join(folder, CONFIG_NAME)) else None
    if start is not None and start.llm_mode == "qlora":
        raise ValueError(f"checkpoint {folder} is a QLoRA adapter on a 4-bit LLM, which cannot be merged to start "
                         "another stage: merge it with python -m model.export first, or train this stage from the "
                         "base models")
    if config.llm_mode == "qlora":
        raise ValueError("--llm_mode qlora loads the LLM in 4 bits from its files; with --init_from, use lora or full")
    model = load_checkpoint(folder, dtype=dtype, device=device)
    if isinstance(model.llm, PeftModel):
        model.llm = model.llm.merge_and_unload()
    model.vision_tower.merge_lora()
    saved = model.config
    changed_llm = saved.llm_mode != "frozen"
    changed_vision = saved.vision_mode != "frozen"
    holds_all = (config.llm_mode == "full" or not changed_llm) and (config.vision_mode == "full" or not changed_vision)
    modes = {f: getattr(config, f) for f in ("vision_mode", "projector_mode", "llm_mode", "lora_rank", "lora_alpha",
                                              "lora_dropout", "target_modules")}
    model.config = replace(saved, **modes, system_prompt=config.system_prompt or saved.system_prompt,
                           init_from=None if holds_all else os.path.abspath(folder))
    model.processor.system_prompt = model.config.system_prompt
    if config.llm_mode == "full":  # a part trained in full keeps fp32 master weights
        model.llm.float()
    if config.vision_mode == "full":
        model.vision_tower.float()
    return model.apply_trainable_modes()


def load_legacy_checkpoint(folder, llm, vision, dtype, device) -> VisionLanguageModel:
    require(folder, ADAPTER_CONFIG, LEGACY_ADAPTER, LEGACY_PROJECTOR)
    with open(os.path.join(folder, ADAPTER_CONFIG)) as f:
        adapter = json.load(f)
    legacy = LegacyCheckpoint()
    targets = adapter["target_modules"]
    config = VLMConfig(
        llm=legacy.llm, vision=legacy.vision, select_layer=legacy.select_layer,
        select_feature=legacy.select_feature, post_layernorm=legacy.post_layernorm,
        system_prompt=legacy.system_prompt, llm_mode="lora", lora_rank=adapter["r"],
        lora_alpha=adapter["lora_alpha"], lora_dropout=adapter.get("lora_dropout", 0.0),
        target_modules=targets if isinstance(targets, str) else "|".join(targets),
    )
    model = VisionLanguageModel.build(config, dtype, device, llm, vision)
    projector = torch.load(os.path.join(folder, LEGACY_PROJECTOR), map_location="cpu", weights_only=True)
    load_projector(model, projector, folder)
    model.llm = PeftModel.from_pretrained(model.llm, folder)  # peft reads adapter_model.bin with weights_only
    return model.eval()


def check_llm_matches(config: VLMConfig, llm_path: str, folder: str):
    hidden = AutoConfig.from_pretrained(llm_path).get_text_config().hidden_size
    if config.llm_hidden_size is not None and hidden != config.llm_hidden_size:
        raise ValueError(f"checkpoint {folder} was trained on {config.llm} (hidden size {config.llm_hidden_size}), "
                         f"but the base LLM {llm_path} has hidden size {hidden}")


def check_vision_matches(saved: VLMConfig, built: VLMConfig, vision_path: str, folder: str):
    want = (saved.vision_hidden_size, saved.num_image_tokens)
    got = (built.vision_hidden_size, built.num_image_tokens)
    if saved.vision_hidden_size is not None and want != got:
        raise ValueError(f"checkpoint {folder} was trained on {saved.vision} ({want[1]} features of size {want[0]}), "
                         f"but the vision encoder {vision_path} gives {got[1]} features of size {got[0]}")


def load_projector_file(model: VisionLanguageModel, folder: str):
    """The projector of one of our checkpoint folders (resume, stage-2 start, loading)."""
    require(folder, PROJECTOR_WEIGHTS)
    load_projector(model, load_file(os.path.join(folder, PROJECTOR_WEIGHTS)), folder)


def load_projector(model: VisionLanguageModel, state: dict, folder: str):
    expected = {k: tuple(v.shape) for k, v in model.projector.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        raise ValueError(f"the projector in {folder} has shapes {found}, but these base models need {expected}")
    model.projector.load_state_dict(state)


def load_trainable_weights(model: VisionLanguageModel, folder: str):
    """Restores, in place, the weights a checkpoint of this model's own run holds (resume)."""
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    cfg = model.config
    load_projector_file(model, folder)
    if cfg.llm_mode in LORA_MODES:
        result = set_peft_model_state_dict(model.llm, load_peft_weights(folder))
        assert not result.unexpected_keys, f"{folder}: adapter weights not in the model: {result.unexpected_keys[:3]}"
    elif cfg.llm_mode == "full":
        load_llm_state(model.llm, load_sharded(os.path.join(folder, LLM_DIR)), folder)
    if cfg.vision_mode == "full":
        from visual import load_vision_tower

        saved = load_vision_tower(os.path.join(folder, VISION_DIR), model.vision_tower.selection)
        model.vision_tower.load_state_dict(saved.state_dict())
    elif cfg.vision_mode == "lora":
        load_vision_adapter(model, folder)


def load_llm_state(llm, state: dict, folder: str):
    """load_state_dict, except that a tied weight (lm_head = embeddings) may be absent: save_pretrained
    writes it once, under one of its names."""
    result = llm.load_state_dict(state, strict=False)
    names_by_tensor = {}
    for name, tensor in llm.state_dict(keep_vars=True).items():
        names_by_tensor.setdefault(id(tensor), []).append(name)
    restored = {n for names in names_by_tensor.values() if any(x in state for x in names) for n in names}
    missing = [k for k in result.missing_keys if k not in restored]
    if missing or result.unexpected_keys:
        raise ValueError(f"the LLM weights in {folder} do not fit this model: missing {missing[:3]}, "
                         f"unexpected {result.unexpected_keys[:3]}")


def load_sharded(folder: str) -> dict:
    """All tensors of a save_pretrained folder's safetensors files, one or sharded."""
    files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    require(folder, *files[:1] or ["model.safetensors"])
    state = {}
    for f in files:
        state.update(load_file(os.path.join(folder, f)))
    return state
