"""Builders of tiny random models, shared by the tests."""

import qwen


def tiny_qwen_config(**overrides):
    kwargs = dict(
        vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, kv_channels=16,
        intermediate_size=256, seq_length=32, max_position_embeddings=32,
    )
    kwargs.update(overrides)
    return qwen.QWenConfig(**kwargs)


def save_tiny_clip(folder, full=False):
    """A CLIP vision tower (32 px, patch 8: 16 patches + CLS, width 32, 3 layers) with its processor.
    full=True saves a whole CLIPModel, text tower included, as hub CLIP checkpoints are."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionConfig, CLIPVisionModel

    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=16)
    if full:
        config = CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=4, vocab_size=100, max_position_embeddings=16),
                            vision_config=vision.to_dict(), projection_dim=16)
        CLIPModel(config).save_pretrained(folder)
    else:
        CLIPVisionModel(vision).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


def save_tiny_siglip(folder):
    """A SigLIP vision tower (32 px, patch 8: 16 patches, no CLS, width 32, 3 layers) with its processor."""
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                image_size=32, patch_size=8)
    SiglipVisionModel(config).save_pretrained(folder)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 32, "head_width": 8, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 4, "layers": 1},
}


def register_tiny_open_clip(folder) -> str:
    """Registers an open_clip ViT of the same size as the tiny CLIP and returns its tower name."""
    import json

    import open_clip

    path = folder / "TinyViT.json"
    path.write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(path)
    return "open_clip:TinyViT"


def save_tiny_qwen(folder, **overrides):
    """A tiny QWen with the 256-byte Qwen-format vocabulary and the official special tokens."""
    import os

    import torch

    os.makedirs(folder, exist_ok=True)
    tokenizer = qwen.QWenTokenizer(qwen.write_byte_vocab(os.path.join(folder, "qwen.tiktoken")))
    torch.manual_seed(0)
    qwen.QWenLMHeadModel(tiny_qwen_config(vocab_size=512, **overrides)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def save_tiny_qwen2(folder, tie_word_embeddings=False):
    """A tiny transformers Qwen2 (natively supported, so it exports to Llava) with a byte-level tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from demo.bases import byte_level_tokenizer

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=272, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256,
                         tie_word_embeddings=tie_word_embeddings)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    byte_level_tokenizer().save_pretrained(folder)
    return str(folder)


def save_tiny_llama(folder):
    """A tiny transformers Llama (grouped-query attention) with the byte-level tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from demo.bases import byte_level_tokenizer

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=272, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256)
    LlamaForCausalLM(config).save_pretrained(folder)
    byte_level_tokenizer().save_pretrained(folder)
    return str(folder)


COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40)}


def write_color_dataset(folder, n=32):
    """A learnable toy set in the project's schema: a solid-colour image, "What colour?" -> its name."""
    import json
    import os

    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    image_map, samples = {}, []
    for name, rgb in COLORS.items():
        path = os.path.join(folder, f"{name}.png")
        Image.new("RGB", (40, 40), rgb).save(path)
        image_map[name] = {"path": path}
    names = list(COLORS)
    for i in range(n):
        color = names[i % len(names)]
        samples.append({"id": f"c{i}", "source": "colors", "images": [color], "conversations": [
            {"role": "user", "content": "<|extra_0|>What colour?"}, {"role": "assistant", "content": color}]})
    with open(os.path.join(folder, "image_map.json"), "w") as f:
        json.dump(image_map, f)
    with open(os.path.join(folder, "captions.json"), "w") as f:
        json.dump(samples, f)
    return os.path.join(folder, "image_map.json"), os.path.join(folder, "captions.json")


# The LLM families of the model matrix (tests/test_families.py): each tiny, with the detail that breaks naive glue.
TINY_TEXT = dict(vocab_size=272, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, max_position_embeddings=256, bos_token_id=None, eos_token_id=None)


def llm_family_configs() -> dict:
    """model_type -> a tiny config of that family (fp32, random weights)."""
    from transformers import (
        Gemma3TextConfig,
        LlamaConfig,
        MistralConfig,
        Olmo2Config,
        Phi3Config,
        Qwen3Config,
        Qwen3MoeConfig,
        SmolLM3Config,
    )

    return {
        "llama": LlamaConfig(**TINY_TEXT),
        "qwen3": Qwen3Config(**TINY_TEXT, head_dim=16, tie_word_embeddings=True),  # tied, as Qwen3-0.6B to 4B
        "qwen3_moe": Qwen3MoeConfig(**TINY_TEXT, head_dim=16, num_experts=4, num_experts_per_tok=2,
                                    moe_intermediate_size=32, decoder_sparse_step=1),
        # tied and scaled embeddings; a sliding-window layer (window 6) beside a global one
        "gemma3_text": Gemma3TextConfig(**TINY_TEXT, head_dim=16, sliding_window=6,
                                        layer_types=["sliding_attention", "full_attention"]),
        "smollm3": SmolLM3Config(**TINY_TEXT, no_rope_layers=[1, 0], pad_token_id=0),  # layer 2 without RoPE (NoPE)
        "phi3": Phi3Config(**TINY_TEXT, pad_token_id=0),  # fused qkv_proj and gate_up_proj
        "mistral": MistralConfig(**TINY_TEXT, sliding_window=6),  # every layer sliding
        "olmo2": Olmo2Config(**TINY_TEXT, pad_token_id=0),  # q/k norms, norms after the blocks
    }


def save_tiny_llm(folder, family: str) -> str:
    """A tiny transformers LLM of `family` (a key of llm_family_configs) with the byte-level tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    from demo.bases import byte_level_tokenizer

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(llm_family_configs()[family]).save_pretrained(folder)
    byte_level_tokenizer().save_pretrained(folder)
    return str(folder)


TINY_VIT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, patch_size=8)


def save_tiny_tower(folder, family: str) -> str:
    """A tiny vision tower of `family` with its processor, 32 px images in 16 patches of 8 px: dinov2 (a CLS token;
    its 64 px position grid interpolated to the 32 px crop, as DINOv2's 518 px one is to 224 px),
    dinov2_with_registers and dinov3_vit (CLS + 4 registers; DINOv3 with RoPE), aimv2 (no CLS)."""
    import torch
    from transformers import (
        Aimv2VisionConfig,
        Aimv2VisionModel,
        BitImageProcessor,
        CLIPImageProcessor,
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
        DINOv3ViTConfig,
        DINOv3ViTImageProcessor,
        DINOv3ViTModel,
    )

    torch.manual_seed(0)
    crop = dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    model, processor = {
        "dinov2": lambda: (Dinov2Model(Dinov2Config(**TINY_VIT, image_size=64)), BitImageProcessor(**crop)),
        "dinov2_with_registers": lambda: (
            Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**TINY_VIT, image_size=32, num_register_tokens=4)),
            BitImageProcessor(**crop)),
        "dinov3_vit": lambda: (DINOv3ViTModel(DINOv3ViTConfig(**TINY_VIT, image_size=32, num_register_tokens=4)),
                               DINOv3ViTImageProcessor(size={"height": 32, "width": 32})),
        "aimv2": lambda: (Aimv2VisionModel(Aimv2VisionConfig(**TINY_VIT, image_size=32)), CLIPImageProcessor(**crop)),
    }[family]()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def save_tiny_siglip2(folder, max_num_patches: int = 16) -> str:
    """A SigLIP2 NaFlex vision tower (patch 8, up to `max_num_patches` patches an image at its own aspect ratio, a
    4 x 4 position grid interpolated to each image's) with its processor."""
    import torch
    from transformers import Siglip2ImageProcessor, Siglip2VisionConfig, Siglip2VisionModel

    torch.manual_seed(0)
    Siglip2VisionModel(Siglip2VisionConfig(**TINY_VIT, num_patches=16)).save_pretrained(folder)
    Siglip2ImageProcessor(patch_size=8, max_num_patches=max_num_patches).save_pretrained(folder)
    return str(folder)
