"""VisionLanguageModel: vision tower -> projector -> LLM.

The processor has already expanded each image marker into N image tokens, so the model only writes
the projected features into those positions (one masked_scatter on the input embeddings) and calls
the LLM with `inputs_embeds`. Labels, attention masks and positions never need re-aligning, and the
same code serves our QWen and any Hugging Face causal LM. This is the file to edit for a new design.
"""

from dataclasses import dataclass

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tokenizers import AddedToken
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import ModelOutput

import qwen  # noqa: F401  (registers model_type "qwen" with the Auto classes)
from common import IMAGE_MARKER, VIDEO_MARKER
from visual import FeatureSelection, load_vision_tower

from .anyres import ImageInputs, processor_settings
from .config import LORA_MODES, VLMConfig
from .decoding import DECODING_MODES, StaticDecoder
from .layouts import is_anyres
from .lora_targets import default_lora_targets
from .loss import causal_lm_loss, token_log_probs
from .loss import resolve as resolve_loss
from .native import spatial_shapes
from .pixel_shuffle import shuffled_tokens
from .processor import VLMProcessor
from .projector import build_projector
from .quantization import nf4_config, prepare_for_training
from .video import VideoInputs
from .zero3 import gathered


def add_image_token(tokenizer, llm, image_token: str, marker: str = IMAGE_MARKER) -> str:
    """The token that marks image (or, marker=VIDEO_MARKER, video) positions: the marker where the vocabulary has it
    (Qwen), else `image_token`, added as a special token."""
    vocab = tokenizer.get_vocab()
    if marker in vocab:
        return marker
    if image_token not in vocab:
        tokenizer.add_tokens([AddedToken(image_token, special=True, normalized=False)], special_tokens=True)
    old = llm.get_input_embeddings().num_embeddings
    if len(tokenizer) > old:  # many LLMs pad their embedding matrix, so often no resize is needed
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        weights = [emb.weight for emb in {llm.get_input_embeddings(), llm.get_output_embeddings()} - {None}]
        with torch.no_grad(), gathered(weights, modifier_rank=0):  # deterministic new rows, so a reloaded
            for weight in weights:  # model gives identical logits
                weight[old:] = weight[:old].mean(0)
    return image_token


@dataclass
class TokenLogProbs(ModelOutput):
    """forward(..., return_log_probs=True): each label's log-probability, (B, T - 1), 0 where there is no label."""

    log_probs: torch.Tensor | None = None


class VisionLanguageModel(nn.Module):
    def __init__(self, config: VLMConfig, vision_tower, llm, tokenizer):
        super().__init__()
        self.config = config
        self.vision_tower = vision_tower
        self.llm = llm
        self.tokenizer = tokenizer
        # trainable parts stay fp32 even under a bf16 LLM: it is tiny, and keeps AdamW exact
        self.projector = build_projector(config.projector_type, vision_tower.hidden_size, config.llm_hidden_size,
                                         config.pixel_shuffle)
        if is_anyres(config.image_aspect_ratio) or config.videos:  # LLaVA-NeXT's newline vector (also after each
            # video, as OneVision), trained and saved with the projector
            width = config.llm_hidden_size
            self.projector.register_parameter("image_newline", nn.Parameter(torch.randn(width) / width ** 0.5))
        self.projector.to(llm.device)
        self.image_token_id = tokenizer.convert_tokens_to_ids(config.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(config.video_token) if config.videos else None
        videos = None
        if config.videos:
            if config.image_aspect_ratio == "native":
                raise ValueError("videos need a square feature grid per frame, which native images do not have")
            videos = VideoInputs(processor_settings(vision_tower.image_processor), config.num_image_tokens,
                                 config.video_pooling, config.video_frames, config.video_fps)
        self.image_inputs = ImageInputs(vision_tower.image_processor, config.image_aspect_ratio,
                                        config.num_image_tokens, config.image_grid_pinpoints, videos)
        self.processor = VLMProcessor(tokenizer, vision_tower.image_processor, config.image_token,
                                      config.num_image_tokens, config.chat_template, config.system_prompt,
                                      self.image_inputs, config.video_token if config.videos else None)
        self.decoder = None  # see set_decoding
        self.loss_impl = "auto"  # see loss.py: the loss at labelled positions only, chunked
        self.checkpoint_every = 1  # with activation checkpointing: recompute every k-th LLM block

    @classmethod
    def build(cls, config: VLMConfig, dtype=torch.float32, device=None, llm_path=None, vision_path=None,
              vision_dtype=None, attn_implementation=None):
        """Base parts by name (hub ids or folders); fills in the config's derived fields. No modes applied.
        device=None leaves the weights where loading put them (the CPU; under ZeRO-3, partitioned)."""
        llm_path = llm_path or config.llm
        tokenizer = AutoTokenizer.from_pretrained(llm_path)
        llm_kwargs = {"dtype": dtype}
        if config.llm_mode == "qlora":  # linear layers in NF4, computing in `dtype` (quantization.py)
            llm_kwargs["quantization_config"] = nf4_config(dtype)
            if device is not None:  # 4-bit weights are quantised where they are loaded
                llm_kwargs["device_map"] = {"": device}
        if attn_implementation and AutoConfig.from_pretrained(llm_path).model_type != "qwen":  # QWen: always SDPA
            llm_kwargs["attn_implementation"] = attn_implementation
        selection = FeatureSelection(config.select_layer, config.select_feature, config.post_layernorm)
        # Loading draws random numbers or not, by path (ZeRO-3 initialises weights before loading them): the
        # projector and LoRA initialisations after it get the same draws either way.
        with torch.random.fork_rng(devices=[]):
            llm = AutoModelForCausalLM.from_pretrained(llm_path, **llm_kwargs)
            tower = load_vision_tower(vision_path or config.vision, selection, dtype=vision_dtype or dtype)
        if device is not None:
            if config.llm_mode != "qlora":
                llm.to(device)
            tower.to(device)
        config.image_token = add_image_token(tokenizer, llm, config.image_token)
        if config.videos:
            config.video_token = add_image_token(tokenizer, llm, config.video_token, VIDEO_MARKER)
        native = config.image_aspect_ratio == "native"
        if native != tower.native:
            raise ValueError(f"--image_aspect_ratio native needs a tower that takes variable patch counts (SigLIP2 "
                             f"NaFlex), {'and such a tower needs it' if tower.native else f'not {config.vision}'}")
        if native and config.projector_type == "pixel_shuffle_mlp":
            raise ValueError("pixel shuffle needs a square feature grid, which native images do not have")
        if native:  # the most patches an image may take
            config.num_image_tokens = config.max_image_tokens or tower.num_patches
        elif config.projector_type == "pixel_shuffle_mlp":
            config.num_image_tokens = shuffled_tokens(tower.num_patches, config.pixel_shuffle)
        else:
            config.num_image_tokens = tower.num_patches
        config.resolve_image_layout(tower.image_size)
        config.vision_hidden_size = tower.hidden_size
        config.llm_hidden_size = llm.config.get_text_config().hidden_size
        config.chat_template = config.chat_template or tokenizer.chat_template
        return cls(config, tower, llm, tokenizer)

    # ---- trainable parts ----

    def apply_trainable_modes(self):
        """vision frozen|lora|full, projector train|frozen, llm frozen|lora|qlora|full. Frozen parameters get
        requires_grad=False, so they receive no gradient and no optimizer state."""
        cfg = self.config
        if cfg.vision_mode == "lora":
            self.add_vision_lora()
        else:
            self.vision_tower.set_trainable(cfg.vision_mode == "full")
        self.projector.requires_grad_(cfg.projector_mode == "train")
        if cfg.llm_mode in LORA_MODES and not isinstance(self.llm, PeftModel):
            if cfg.target_modules == "auto":  # recorded resolved, so the checkpoint names its targets
                cfg.target_modules = default_lora_targets(self.llm.config.model_type)
            if cfg.llm_mode == "qlora":
                self.llm = prepare_for_training(self.llm)
            lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                              target_modules=cfg.lora_targets, task_type="CAUSAL_LM")
            try:
                self.llm = get_peft_model(self.llm, lora)
            except ValueError as e:
                message = f"LoRA target_modules {cfg.target_modules!r} match no module of {cfg.llm}: {e}"
                raise ValueError(message) from None
        elif cfg.llm_mode not in LORA_MODES:
            self.llm.requires_grad_(cfg.llm_mode == "full")
        return self

    def add_vision_lora(self):
        """--vision_mode lora: the tower's adapters at the LLM's LoRA rank, alpha and dropout, unless it has them."""
        if not self.vision_tower.lora_state_dict():
            cfg = self.config
            self.vision_tower.add_lora(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                                                  lora_dropout=cfg.lora_dropout))

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, **kwargs):
        """Recomputes the LLM's blocks in the backward pass (the Trainer calls this): every block, or every
        `checkpoint_every`-th one (selective checkpointing: less recomputation for more memory)."""
        kwargs_ = activation_checkpointing_kwargs or {"use_reentrant": False}
        if hasattr(self.llm, "activation_checkpointing_enable"):
            self.llm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs_, **kwargs)
        else:  # transformers before the rename
            self.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs_)
        if not self.vision_tower.frozen:  # a tower that trains (full or LoRA) recomputes its blocks too
            self.vision_tower.activation_checkpointing_enable(kwargs_)
        blocks = [m for m in self.llm.modules() if isinstance(m, GradientCheckpointingLayer)]
        for i, block in enumerate(blocks):
            block.gradient_checkpointing = i % self.checkpoint_every == 0
        # LoRA under reentrant checkpointing needs inputs that require grad, even with a frozen projector
        self.llm.enable_input_require_grads()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):  # the pre-5.x name
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs)

    @property
    def _no_split_modules(self) -> list[str]:
        """The blocks that FSDP shards one by one (accelerate's transformer wrap policy reads this name): the LLM's
        decoder blocks and the vision tower's layers, as each part's own model class names them."""
        parts = (m for part in (self.llm, self.vision_tower) for m in part.modules())
        return list(dict.fromkeys(name for m in parts for name in getattr(m, "_no_split_modules", None) or []))

    # ---- forward ----

    def image_features(self, pixel_values: torch.Tensor, image_sizes=None) -> torch.Tensor:
        """(views, 3, H, W) -> the features of every image and video token, in order (sum of tokens, D_llm): N per
        image, or with anyres each image's base view and its unpadded tile grid with a newline per row (anyres.py); a
        video's pooled frames and a newline (video.py); or with native each image's own patch grid (native.py;
        pixel_values are then (images, max patches, 3 * patch²))."""
        projector_dtype = next(self.projector.parameters()).dtype
        if self.config.image_aspect_ratio == "native":
            shapes = spatial_shapes(image_sizes.tolist(), self.image_inputs.patch_size, self.config.num_image_tokens)
            features = self.vision_tower(pixel_values, spatial_shapes=shapes)  # (images, max patches, D_vision)
            valid = torch.cat([f[:n] for f, n in zip(features, shapes.prod(-1).tolist(), strict=True)])
            return self.projector(valid[None].to(projector_dtype))[0]  # (sum of tokens, D_llm)
        features = self.vision_tower(pixel_values)  # (views, N, D_vision)
        features = self.projector(features.to(projector_dtype))  # (views, N, D_llm)
        if image_sizes is None or (not self.image_inputs.variable and image_sizes.shape[-1] == 2):
            return features.flatten(0, 1)
        rows = [tuple(r) for r in image_sizes.tolist()]
        inputs, newline = self.image_inputs, getattr(self.projector, "image_newline", None)
        per_row = features.split([inputs.tiles(r) for r in rows])
        return torch.cat([inputs.pack(f, r, newline) for f, r in zip(per_row, rows, strict=True)])

    def visual_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T): the image and video tokens' positions."""
        mask = input_ids == self.image_token_id
        return mask if self.video_token_id is None else mask | (input_ids == self.video_token_id)

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
              image_sizes: torch.Tensor | None = None) -> torch.Tensor:
        """Text embeddings with image and video features written over their tokens' positions, in order."""
        embeds = self.llm.get_input_embeddings()(input_ids)  # (B, T, C)
        image_mask = self.visual_mask(input_ids)  # (B, T)
        n_tokens = int(image_mask.sum())
        if pixel_values is None:
            n_images, n_features = 0, 0
        elif image_sizes is not None:
            n_images = len(image_sizes)
            n_features = sum(self.image_inputs.tokens(tuple(s)) for s in image_sizes.tolist())
        elif self.image_inputs.variable:
            raise ValueError(f"{self.config.image_aspect_ratio} needs the images' sizes (image_sizes) beside their "
                             "pixel values")
        else:
            n_images, n_features = pixel_values.shape[0], pixel_values.shape[0] * self.config.num_image_tokens
        if n_tokens != n_features:
            per_image = "at their own sizes" if image_sizes is not None else f"x {self.config.num_image_tokens}"
            raise ValueError(f"the batch holds {n_tokens} image tokens but {n_features} image features "
                             f"({n_images} images {per_image})")
        if n_images == 0:
            return embeds
        features = self.image_features(pixel_values, image_sizes).to(embeds.dtype)
        return embeds.masked_scatter(image_mask[..., None].expand_as(embeds), features)

    def forward(self, input_ids, attention_mask=None, pixel_values=None, labels=None, image_sizes=None,
                return_log_probs: bool = False, temperature: float = 1.0, **kwargs):
        """Padded batches carry an attention_mask. Packed rows (dataset/packing.py) carry position_ids that restart at
        every sample and no attention_mask: the LLM keeps attention within each sample (transformers' packed-sequence
        masks, flash-attention varlen; our QWen alike), and no label crosses a sample boundary.
        return_log_probs (post-training, training/dpo.py and grpo.py): each label's log-probability under the logits
        divided by `temperature`, instead of the loss."""
        inputs_embeds = self.embed(input_ids, pixel_values, image_sizes)  # (B, T, C)
        if labels is not None or (attention_mask is None and kwargs.get("position_ids") is not None):
            kwargs.setdefault("use_cache", False)  # a cache would also switch transformers' packed-row masks off
        if labels is None or (self.loss_impl == "plain" and not return_log_probs):
            return self.llm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **kwargs)
        # the loss at the labelled positions only (loss.py): the LLM's body, then its head on those rows
        causal_lm = self.llm.get_base_model() if isinstance(self.llm, PeftModel) else self.llm
        head = causal_lm.get_output_embeddings()
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        hidden = causal_lm.base_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                      **kwargs).last_hidden_state  # (B, T, C)
        if return_log_probs:
            return TokenLogProbs(log_probs=token_log_probs(hidden, labels, head, temperature))
        loss = causal_lm_loss(hidden, labels, head, resolve_loss(self.loss_impl, head), num_items_in_batch)
        return CausalLMOutputWithPast(loss=loss)

    # ---- generation ----

    @property
    def stop_token_ids(self) -> list[int]:
        """The chat template's end-of-turn token (<|im_end|> in ChatML) and the tokenizer's EOS."""
        ids = [self.processor.end_of_turn_id, self.tokenizer.eos_token_id]
        return list(dict.fromkeys(i for i in ids if i is not None))

    def set_decoding(self, mode: str = "eager"):
        """eager: transformers' generate (beam search included); static: a preallocated KV cache and a plain
        decode loop; compiled: that loop's step through torch.compile (CUDA graphs on a GPU). See decoding.py."""
        if mode not in DECODING_MODES:
            raise ValueError(f"decoding must be one of {DECODING_MODES}, not {mode!r}")
        self.decoder = None if mode == "eager" else StaticDecoder(self, compile=mode == "compiled")
        return self

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, pixel_values=None, image_sizes=None,
                 **generate_kwargs) -> torch.Tensor:
        """Greedy by default; sampling and beam search through the usual generate arguments, with the KV
        cache. Returns only the new tokens (B, new), each answer complete up to its stop token."""
        generate_kwargs.setdefault("eos_token_id", self.stop_token_ids)
        generate_kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id or self.stop_token_ids[0])
        generate_kwargs.setdefault("do_sample", False)
        if self.decoder is not None and generate_kwargs.get("num_beams", 1) == 1:
            return self.decoder.generate(input_ids, attention_mask, pixel_values, image_sizes=image_sizes,
                                         **generate_kwargs)
        embeds = self.embed(input_ids, pixel_values, image_sizes)
        return self.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs)

    def answer(self, conversations: list[list[dict]], images: list[list] | None = None, **generate_kwargs):
        """Answers the last user turn of each conversation (messages hold IMAGE_MARKERs; images are PIL)."""
        prompts = [self.processor.render(messages, add_generation_prompt=True) for messages in conversations]
        batch = self.processor(prompts, images, padding_side="left")
        device = self.llm.device
        out = self.generate(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                            None if batch["pixel_values"] is None else batch["pixel_values"].to(device),
                            image_sizes=batch["image_sizes"], **generate_kwargs)
        return [self.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in out]
