"""Fast decoding: a preallocated (static) KV cache and one compiled single-token step, gpt-fast style.

The image is projected and the prompt prefilled once, eagerly; then each new token is one call of the same
function on tensors of fixed shapes (batch, 1 token, max_len cache slots), which `torch.compile` turns into
one fused program (CUDA graphs too with mode="reduce-overhead"): no per-token Python dispatch, no growing
`torch.cat` of the cache. The LLM's own forward runs (our QWen or any transformers LM that takes a
StaticCache); nothing of it is re-implemented here. Greedy output equals transformers' `generate` token for
token (tests/test_decoding.py); sampling draws its own random numbers.

    decoder = StaticDecoder(vlm, compile=True)
    new_tokens = decoder.generate(input_ids, attention_mask, pixel_values, max_new_tokens=256)
"""

import logging
import math
import time

import torch
from transformers import StaticCache

from qwen.modeling_qwen import CACHE_FIELD

logger = logging.getLogger(__name__)
DECODING_MODES = ("eager", "static", "compiled")
SLOT_BUCKET = 128  # cache lengths are rounded up to this: one compiled program serves many prompt lengths


def next_tokens(logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float) -> torch.Tensor:
    """(B, V) logits -> (B,) tokens: argmax, or a draw from the temperature-scaled nucleus of mass top_p."""
    if not do_sample:
        return logits.argmax(-1)
    logits = logits.float() / max(temperature, 1e-5)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        outside = probs.cumsum(-1) - probs > top_p  # the smallest set whose mass reaches top_p stays
        logits = torch.full_like(logits, -math.inf).scatter(-1, order, sorted_logits.masked_fill(outside, -math.inf))
    return torch.multinomial(logits.softmax(-1), 1)[:, 0]


def decode_step(llm, tokens, attention_mask, position_ids, cache):
    """One token per sequence through the LLM: (B, 1) ids -> (B, V) logits. This is what gets compiled."""
    out = llm(input_ids=tokens, attention_mask=attention_mask, position_ids=position_ids, use_cache=True,
              **{CACHE_FIELD: cache})
    return out.logits[:, -1]


class StaticDecoder:
    def __init__(self, vlm, compile: bool = True, mode: str | None = None):
        self.vlm = vlm
        self.caches = {}  # (batch, slots) -> StaticCache, reused across calls of that shape
        self.step = decode_step
        self.compile_seconds = None  # the first compiled step's time, compilation included
        self.compiled = False
        if compile:
            try:
                mode = mode or ("reduce-overhead" if vlm.llm.device.type == "cuda" else None)
                self.step = torch.compile(decode_step, mode=mode, dynamic=False)
                self.compiled = True
            except Exception as e:  # torch.compile is unavailable on some platforms and Python versions
                logger.warning("torch.compile is unavailable (%s); decoding with the static cache, eagerly", e)

    def cache(self, batch: int, slots: int) -> StaticCache:
        key = (batch, slots)
        if key not in self.caches:
            self.caches[key] = StaticCache(config=self.vlm.llm.config, max_cache_len=slots)
        cache = self.caches[key]
        cache.reset()
        cache.__dict__.pop("qwen_ntk_alpha", None)  # our QWen keeps the prompt's NTK factor on the cache
        return cache

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, pixel_values=None, image_sizes=None, max_new_tokens: int = 128,
                 min_new_tokens: int = 0, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                 streamer=None, eos_token_id=None, pad_token_id=None, **ignored) -> torch.Tensor:
        """New tokens (B, <= max_new_tokens), each row complete up to its stop token (eos_token_id: one id or a
        list; None: none), then pad_token_id. min_new_tokens keeps the stop tokens out until then."""
        vlm = self.vlm
        B, T = input_ids.shape
        device = input_ids.device
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        eos = torch.tensor([] if eos_token_id is None else eos_token_id, dtype=torch.long, device=device).view(-1)
        pad = pad_token_id if pad_token_id is not None else (int(eos[0]) if len(eos) else 0)

        visual = [vlm.image_token_id] + ([] if vlm.video_token_id is None else [vlm.video_token_id])
        image = torch.tensor(visual, device=device)

        def pick(logits, step):
            logits = logits.index_fill(-1, image, -math.inf)  # image positions are written by the model, never sampled
            if step < min_new_tokens and len(eos):
                logits = logits.index_fill(-1, eos, -math.inf)
            return next_tokens(logits, do_sample, temperature, top_p)

        slots = math.ceil((T + max_new_tokens) / SLOT_BUCKET) * SLOT_BUCKET
        cache = self.cache(B, slots)
        mask = torch.zeros(B, slots, dtype=attention_mask.dtype, device=device)  # (B, slots)
        mask[:, :T] = attention_mask
        positions = attention_mask.long().cumsum(-1) - 1  # (B, T): left padding does not count
        if streamer is not None:
            streamer.put(input_ids.cpu())

        embeds = vlm.embed(input_ids, pixel_values, image_sizes)  # (B, T, C): the images are projected once
        out = vlm.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions.clamp(min=0),
                      use_cache=True, logits_to_keep=1, **{CACHE_FIELD: cache})
        token = pick(out.logits[:, -1], 0)  # (B,)
        position = positions[:, -1:] + 1  # (B, 1)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        generated = []
        for i in range(max_new_tokens):
            token = torch.where(done, pad, token)
            generated.append(token)
            if streamer is not None:
                streamer.put(token.cpu())
            done |= torch.isin(token, eos)
            if i == max_new_tokens - 1 or bool(done.all()):
                break
            mask[:, T + i] = 1
            start = time.perf_counter() if self.compiled and self.compile_seconds is None else None
            logits = self.step(vlm.llm, token[:, None], mask, position, cache)
            if start is not None:
                self.compile_seconds = time.perf_counter() - start
                logger.warning("compiled the decode step in %.1f s (once per process and shape)", self.compile_seconds)
            token = pick(logits, i + 1)
            position = position + 1
        if streamer is not None:
            streamer.end()
        return torch.stack(generated, dim=1)  # (B, new)
