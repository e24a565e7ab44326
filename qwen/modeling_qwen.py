"""Qwen (v1) decoder: pre-norm RMSNorm blocks, fused-QKV attention with rotary embeddings, a SwiGLU MLP.

Parameter names match the official checkpoints (`transformer.h.{i}.attn.c_attn.weight`, ...), so
`from_pretrained` loads them as they are. Attention runs through `F.scaled_dot_product_attention`.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import find_packed_sequence_indices
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_qwen import QWenConfig

# transformers 5.x renamed the KV-cache argument and output field from `past_key_values` to `cache`.
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # normalise in fp32 so bf16 activations keep their precision, as the original does
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return x32.type_as(x) * self.weight


def ntk_alpha(true_lengths: torch.Tensor, seq_length: int) -> torch.Tensor:
    """Dynamic-NTK factor per sequence: max(2 ** ceil(log2(len / seq_length) + 1) - 1, 1)."""
    context = torch.log2(true_lengths.double() / seq_length) + 1
    return (2 ** torch.ceil(context) - 1).clamp(min=1)


class QWenRotaryEmbedding(nn.Module):
    """cos/sin tables for given positions, with one NTK alpha per sequence of the batch (B,), or per token
    (B, T) when several sequences are packed into one row."""

    def __init__(self, config: QWenConfig):
        super().__init__()
        self.dim = int(config.kv_channels * config.rotary_pct)
        self.base = config.rotary_emb_base

    def forward(self, position_ids: torch.Tensor, alpha: torch.Tensor):
        # position_ids (B, T), alpha (B,) or (B, T)
        alpha = alpha[:, None] if alpha.dim() == 1 else alpha  # (B, 1 or T)
        base = self.base * alpha.double() ** (self.dim / (self.dim - 2))
        exponents = torch.arange(0, self.dim, 2, device=position_ids.device, dtype=torch.float32) / self.dim
        inv_freq = 1.0 / base.float()[..., None] ** exponents  # (B, 1 or T, dim/2)
        freqs = position_ids[..., None].float() * inv_freq  # (B, T, dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, dim), broadcast over heads
        return emb.cos(), emb.sin()


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x, cos, sin):
    """Rotates the first `cos.shape[-1]` channels of x (B, H, T, hd) in fp32; the rest pass through."""
    rot_dim = cos.shape[-1]
    x_rot, x_pass = x[..., :rot_dim].float(), x[..., rot_dim:]
    x_rot = x_rot * cos + rotate_half(x_rot) * sin
    return torch.cat((x_rot.type_as(x), x_pass), dim=-1)


class QWenAttention(nn.Module):
    def __init__(self, config: QWenConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.kv_channels
        projection_size = config.kv_channels * config.num_attention_heads
        self.c_attn = nn.Linear(config.hidden_size, 3 * projection_size)  # fused QKV, always with bias
        self.c_proj = nn.Linear(projection_size, config.hidden_size, bias=not config.no_bias)
        self.scale = 1.0 / math.sqrt(self.head_dim) if config.scale_attn_weights else 1.0
        self.dropout = config.attn_dropout_prob

    def forward(self, x, rotary, logn_scale, attn_mask, cache):
        B, T, _ = x.shape
        # (B, T, 3, H, hd) -> three (B, H, T, hd)
        q, k, v = self.c_attn(x).view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        cos, sin = rotary
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (B, H, past + T, hd)
        if logn_scale is not None:
            q = q * logn_scale.type_as(q)
        if isinstance(attn_mask, PackedSpans):  # each packed sequence on its own: causal, no FLOP on the others
            rows = [torch.cat([self._sdpa(q[b:b + 1, :, s:e], k[b:b + 1, :, s:e], v[b:b + 1, :, s:e], None)
                               for s, e in spans], dim=2) for b, spans in enumerate(attn_mask)]
            y = torch.cat(rows)  # (B, H, T, hd)
        else:
            y = self._sdpa(q, k, v, attn_mask)  # (B, H, T, hd)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, -1))

    def _sdpa(self, q, k, v, attn_mask):
        return F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=attn_mask is None and q.shape[2] > 1,
            scale=self.scale,
        )


class QWenMLP(nn.Module):
    def __init__(self, config: QWenConfig):
        super().__init__()
        width = config.intermediate_size // 2  # the config counts both SwiGLU branches
        self.w1 = nn.Linear(config.hidden_size, width, bias=not config.no_bias)
        self.w2 = nn.Linear(config.hidden_size, width, bias=not config.no_bias)
        self.c_proj = nn.Linear(width, config.hidden_size, bias=not config.no_bias)

    def forward(self, x):
        return self.c_proj(self.w1(x) * F.silu(self.w2(x)))


class QWenBlock(GradientCheckpointingLayer):
    def __init__(self, config: QWenConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.attn = QWenAttention(config, layer_idx)
        self.ln_2 = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.mlp = QWenMLP(config)

    def forward(self, x, rotary=None, logn_scale=None, attn_mask=None, cache=None):
        x = x + self.attn(self.ln_1(x), rotary, logn_scale, attn_mask, cache)
        return x + self.mlp(self.ln_2(x))


class QWenPreTrainedModel(PreTrainedModel):
    config_class = QWenConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["QWenBlock"]
    _supports_sdpa = True

    def _init_weights(self, module):
        super()._init_weights(module)
        # GPT-2 style: output projections that feed the residual stream start smaller with depth.
        if isinstance(module, (QWenAttention, QWenMLP)):
            std = self.config.initializer_range / math.sqrt(2 * self.config.num_hidden_layers)
            init.normal_(module.c_proj.weight, mean=0.0, std=std)


def sdpa_mask(attention_mask, past: int, T: int, device):
    """Boolean (B, 1, T, past + T) mask, or None where SDPA's own `is_causal` (or no mask) is exact."""
    has_padding = attention_mask is not None and not bool(attention_mask.all())
    if not has_padding and (past == 0 or T == 1):
        return None
    kv_len = past + T
    q_pos = torch.arange(past, kv_len, device=device)[:, None]
    k_pos = torch.arange(kv_len, device=device)[None, :]
    mask = (k_pos <= q_pos)[None, None]  # (1, 1, T, kv)
    if has_padding:
        assert attention_mask.shape[-1] == kv_len, (
            f"attention_mask covers {attention_mask.shape[-1]} tokens but past + new tokens are {kv_len}"
        )
        mask = mask & attention_mask[:, None, None, :].bool()
        # A padding query would see no key at all and SDPA would return NaN there, which then leaks
        # through 0 * NaN in later layers; letting it see itself keeps every row finite.
        mask = mask | (k_pos == q_pos)[None, None]
    return mask


class PackedSpans(list):
    """Rows of packed sequences, as each row's [(start, end), ...] spans: attention runs causally within each span
    alone, which is a block-diagonal causal mask without computing its masked blocks."""

    @classmethod
    def of(cls, segments: torch.Tensor) -> "PackedSpans":
        """segments (B, T): the sequence each token belongs to (transformers' find_packed_sequence_indices)."""
        T, spans = segments.shape[-1], cls()
        for row in (segments[:, 1:] != segments[:, :-1]).tolist():
            starts = [0] + [t + 1 for t, change in enumerate(row) if change]
            spans.append(list(zip(starts, starts[1:] + [T], strict=True)))
        return spans


def segment_lengths(segments: torch.Tensor) -> torch.Tensor:
    """(B, T) sequence ids -> (B, T): the length of the sequence each token belongs to."""
    counts = torch.zeros_like(segments).scatter_add_(-1, segments, torch.ones_like(segments))
    return counts.gather(-1, segments)


def logn_attention_scale(position_ids: torch.Tensor, seq_length: int) -> torch.Tensor:
    """LogN scaling of the queries: log(p) / log(seq_length) for 1-based positions p past seq_length, else 1.
    (B, T) positions -> (B, 1, T, 1)."""
    p = (position_ids + 1).float()
    return torch.where(p > seq_length, p.log() / math.log(seq_length), 1.0)[:, None, :, None]


def static_sdpa_mask(attention_mask, q_pos):
    """(B, 1, T, max_len) for a preallocated (static) cache: each query sees the filled slots up to its own,
    padding excluded (but itself, so that a padding query stays finite). attention_mask covers every slot."""
    k_pos = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    causal = k_pos[None, :] <= q_pos[:, None]  # (T, max_len)
    itself = k_pos[None, :] == q_pos[:, None]
    return (causal[None, None] & attention_mask[:, None, None, :].bool()) | itself[None, None]


class QWenModel(QWenPreTrainedModel):
    def __init__(self, config: QWenConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.drop = nn.Dropout(config.emb_dropout_prob)
        self.rotary_emb = QWenRotaryEmbedding(config)
        self.h = nn.ModuleList([QWenBlock(config, i) for i in range(config.num_hidden_layers)])
        self.ln_f = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, value):
        self.wte = value

    def _ntk_alpha(self, attention_mask, cache, B, T, past, device, reuse: bool, segments=None):
        """Per-sequence NTK alpha, fixed at prefill and kept on the cache for the decode steps (reuse); per token
        for packed rows, each sequence's from its own length, as if it stood alone."""
        if self.training or not self.config.use_dynamic_ntk:
            return torch.ones(B, device=device)
        if reuse and hasattr(cache, "qwen_ntk_alpha"):
            return cache.qwen_ntk_alpha
        if segments is not None:
            lengths = segment_lengths(segments)  # (B, T)
        elif attention_mask is not None:
            lengths = attention_mask.sum(-1)
        else:
            lengths = torch.full((B,), past + T, device=device)
        alpha = ntk_alpha(lengths, self.config.seq_length).to(device)
        if cache is not None:
            cache.qwen_ntk_alpha = alpha
        return alpha

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache: Cache | None = None,
        inputs_embeds=None,
        use_cache=None,
        past_key_values: Cache | None = None,
        **kwargs,
    ):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
        cache = cache if cache is not None else past_key_values
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if not use_cache:
            cache = None
        elif cache is None:
            cache = DynamicCache(config=self.config)

        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        B, T = x.shape[:2]
        if cache is not None and getattr(cache, "is_compileable", False):
            return self._forward_static(x, attention_mask, position_ids, cache)
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            if attention_mask is not None:  # left padding: count real tokens only
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
            else:
                position_ids = torch.arange(past, past + T, device=x.device).expand(B, T)
        # Packed rows (training): position ids that restart mark where each sequence begins, as transformers
        # reads them; attention then stays within each sequence, and NTK / LogN follow each one's own length.
        segments = None
        if attention_mask is None and cache is None:
            segments = find_packed_sequence_indices(position_ids.expand(B, T))

        alpha = self._ntk_alpha(attention_mask, cache, B, T, past, x.device, past > 0, segments)
        rotary = self.rotary_emb(position_ids, alpha)
        logn_scale = None
        if self.config.use_logn_attn and not self.training and past + T > self.config.seq_length:
            logn_scale = logn_attention_scale(position_ids, self.config.seq_length)
        attn_mask = sdpa_mask(attention_mask, past, T, x.device) if segments is None else PackedSpans.of(segments)

        return self._blocks(x, rotary, logn_scale, attn_mask, cache)

    def _blocks(self, x, rotary, logn_scale, attn_mask, cache):
        x = self.drop(x)
        for block in self.h:
            x = block(x, rotary=rotary, logn_scale=logn_scale, attn_mask=attn_mask, cache=cache)
        x = self.ln_f(x)
        return BaseModelOutputWithPast(last_hidden_state=x, **{CACHE_FIELD: cache})

    def _forward_static(self, x, attention_mask, position_ids, cache):
        """With a preallocated cache (transformers' StaticCache), for compiled decoding: the same numbers as the
        dynamic path, with no Python branch on lengths. attention_mask spans every slot of the cache (B, max_len):
        1 for the tokens written so far and this call's, 0 for padding and free slots."""
        B, T = x.shape[:2]
        kv_len = cache.get_mask_sizes(T, 0)[0]
        if attention_mask is None or attention_mask.shape[-1] != kv_len:
            raise ValueError(f"a static cache of {kv_len} slots needs an attention_mask over all of them")
        offset = cache.get_query_offset(0)  # slots already written: a tensor, so that compiled code never recompiles
        q_pos = torch.arange(T, device=x.device) + offset  # (T,)
        if position_ids is None:  # left padding: count real tokens only
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, q_pos]  # (B, T)
        alpha = self._ntk_alpha(attention_mask, cache, B, T, 0, x.device, reuse=T == 1)
        rotary = self.rotary_emb(position_ids, alpha)
        logn_scale = None
        if self.config.use_logn_attn and not self.training:  # 1 wherever p <= seq_length, as the dynamic path
            logn_scale = logn_attention_scale(position_ids, self.config.seq_length)
        return self._blocks(x, rotary, logn_scale, static_sdpa_mask(attention_mask, q_pos), cache)


class QWenLMHeadModel(QWenPreTrainedModel, GenerationMixin):
    def __init__(self, config: QWenConfig):
        super().__init__(config)
        self.transformer = QWenModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.loss_type = "ForCausalLM"  # the class name predates transformers' naming rule for losses
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache: Cache | None = None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        logits_to_keep: int = 0,
        past_key_values: Cache | None = None,
        **kwargs,
    ):
        out = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
        )
        hidden = out.last_hidden_state
        if logits_to_keep:  # generate only needs the last position's logits
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)  # (B, T, V)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_FIELD: getattr(out, CACHE_FIELD)})
