"""Qwen (v1) as transformers' native Qwen2: the model and a fast tokenizer with identical ids.

Qwen-7B is architecturally a Qwen2 model: fused `c_attn` splits into q/k/v (with bias), `w2`/`w1` are the
SwiGLU gate/up, RMSNorm, rotary embeddings with base `rotary_emb_base`; its tiktoken vocabulary is the
byte-level BPE that Qwen2's tokenizer uses, plus its special tokens. Within `seq_length` the conversion
is exact. Past it our QWen applies dynamic NTK and LogN scaling at inference, and Qwen2 does not: the
converted config caps `max_position_embeddings` at `seq_length`, and `converts_exactly` says why not.
"""

import torch
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from transformers.convert_slow_tokenizer import TikTokenConverter

from .configuration_qwen import QWenConfig
from .modeling_qwen import QWenLMHeadModel
from .tokenization_qwen import ENDOFTEXT, PAT_STR, SPECIAL_TOKENS, QWenTokenizer


def inexact_features(config: QWenConfig) -> list[str]:
    """What of this QWen a Qwen2 does not do: applies only past seq_length, at inference."""
    return [name for name, on in (("dynamic NTK", config.use_dynamic_ntk), ("LogN", config.use_logn_attn)) if on]


def qwen2_config(config: QWenConfig) -> Qwen2Config:
    problems = []
    if config.rotary_pct != 1.0:
        problems.append(f"rotary_pct {config.rotary_pct} (Qwen2 rotates every channel)")
    if not config.no_bias:
        problems.append("biases on the output projections (Qwen2 has them on q/k/v only)")
    if problems:
        raise ValueError("this QWen has no Qwen2 equivalent: " + "; ".join(problems))
    extra = {}
    if config.kv_channels * config.num_attention_heads != config.hidden_size:
        extra["head_dim"] = config.kv_channels
    return Qwen2Config(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size // 2,  # QWen's config counts both SwiGLU branches
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_attention_heads, hidden_act="silu",
        max_position_embeddings=config.seq_length,  # exact up to here: past it QWen rescales (NTK, LogN)
        rms_norm_eps=config.layer_norm_epsilon, tie_word_embeddings=config.tie_word_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": float(config.rotary_emb_base)},
        use_sliding_window=False, attention_dropout=config.attn_dropout_prob, **extra,
    )


def qwen2_state_dict(model: QWenLMHeadModel) -> dict[str, torch.Tensor]:
    """Our QWen's weights under Qwen2's names."""
    src = model.state_dict()
    out = {"model.embed_tokens.weight": src["transformer.wte.weight"],
           "model.norm.weight": src["transformer.ln_f.weight"], "lm_head.weight": src["lm_head.weight"]}
    for i in range(model.config.num_hidden_layers):
        h, layer = f"transformer.h.{i}.", f"model.layers.{i}."
        for kind in ("weight", "bias"):
            q, k, v = src[f"{h}attn.c_attn.{kind}"].chunk(3, dim=0)  # (3 * H * hd, ...) -> three (H * hd, ...)
            out |= {f"{layer}self_attn.q_proj.{kind}": q, f"{layer}self_attn.k_proj.{kind}": k,
                    f"{layer}self_attn.v_proj.{kind}": v}
        out |= {
            f"{layer}input_layernorm.weight": src[f"{h}ln_1.weight"],
            f"{layer}self_attn.o_proj.weight": src[f"{h}attn.c_proj.weight"],
            f"{layer}post_attention_layernorm.weight": src[f"{h}ln_2.weight"],
            f"{layer}mlp.gate_proj.weight": src[f"{h}mlp.w2.weight"],  # c_proj(w1(x) * silu(w2(x)))
            f"{layer}mlp.up_proj.weight": src[f"{h}mlp.w1.weight"],
            f"{layer}mlp.down_proj.weight": src[f"{h}mlp.c_proj.weight"],
        }
    return out


def to_qwen2(model: QWenLMHeadModel) -> Qwen2ForCausalLM:
    """A Qwen2ForCausalLM with the same weights (shared, not copied) and the same outputs within seq_length."""
    config = qwen2_config(model.config)
    with torch.device("meta"):
        qwen2 = Qwen2ForCausalLM(config)
    state = qwen2_state_dict(model)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight")
    qwen2.load_state_dict({k: v.contiguous() for k, v in state.items()}, strict=not config.tie_word_embeddings,
                          assign=True)
    if config.tie_word_embeddings:
        qwen2.tie_weights()
    # the rotary frequencies are a buffer computed from the config, in no state dict: build it for real
    with torch.device(model.device):
        qwen2.model.rotary_emb = type(qwen2.model.rotary_emb)(config=config)
    return qwen2.to(model.dtype)


def to_fast_tokenizer(tokenizer: QWenTokenizer, chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """A `tokenizers` BPE built from the same tiktoken ranks and pre-tokenisation regex, the special tokens
    at the same ids, and no normaliser (Qwen2's NFC would change ids): identical ids for every text."""
    backend = TikTokenConverter(vocab_file=tokenizer.vocab_file, pattern=PAT_STR,
                                extra_special_tokens=list(SPECIAL_TOKENS)).converted()
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=ENDOFTEXT, pad_token=ENDOFTEXT,
                                   chat_template=chat_template or tokenizer.chat_template)
    for token, expected in tokenizer.special_tokens.items():
        got = fast.convert_tokens_to_ids(token)
        assert got == expected, f"{token}: id {got} in the converted tokenizer, {expected} in Qwen's"
    return fast
