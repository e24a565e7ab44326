"""QWen architecture: parity with independent references, loading, caching, padding, checkpointing, dtypes."""

import json
import math

import pytest
import torch
from tiny import tiny_qwen_config
from transformers import AutoConfig, AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

import qwen


def to_qwen2(model: qwen.QWenLMHeadModel) -> Qwen2ForCausalLM:
    """The same weights in transformers' own Qwen2: fused QKV split, w2 is the gated (SiLU) branch."""
    cfg = model.config
    width = cfg.kv_channels * cfg.num_attention_heads
    ref = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size // 2, rms_norm_eps=cfg.layer_norm_epsilon,
        rope_theta=cfg.rotary_emb_base, max_position_embeddings=cfg.seq_length, tie_word_embeddings=False,
    ))
    sd = model.state_dict()
    new = {
        "model.embed_tokens.weight": sd["transformer.wte.weight"],
        "model.norm.weight": sd["transformer.ln_f.weight"],
        "lm_head.weight": sd["lm_head.weight"],
    }
    for i in range(cfg.num_hidden_layers):
        src, dst = f"transformer.h.{i}.", f"model.layers.{i}."
        for j, name in enumerate("qkv"):
            new[dst + f"self_attn.{name}_proj.weight"] = sd[src + "attn.c_attn.weight"][j * width:(j + 1) * width]
            new[dst + f"self_attn.{name}_proj.bias"] = sd[src + "attn.c_attn.bias"][j * width:(j + 1) * width]
        new[dst + "self_attn.o_proj.weight"] = sd[src + "attn.c_proj.weight"]
        new[dst + "mlp.gate_proj.weight"] = sd[src + "mlp.w2.weight"]
        new[dst + "mlp.up_proj.weight"] = sd[src + "mlp.w1.weight"]
        new[dst + "mlp.down_proj.weight"] = sd[src + "mlp.c_proj.weight"]
        new[dst + "input_layernorm.weight"] = sd[src + "ln_1.weight"]
        new[dst + "post_attention_layernorm.weight"] = sd[src + "ln_2.weight"]
    ref.load_state_dict(new, strict=True)
    return ref.eval()


def formula_logits(model: qwen.QWenLMHeadModel, ids: list[int], alpha: float | None = None) -> torch.Tensor:
    """One sequence in float64, written from the published formulas (RMSNorm, rotate-half RoPE with
    dynamic NTK, LogN query scaling, causal softmax attention, c_proj(w1(x) * silu(w2(x))))."""
    cfg = model.config
    sd = {k: v.double() for k, v in model.state_dict().items()}
    T, H, hd = len(ids), cfg.num_attention_heads, cfg.kv_channels
    if alpha is None:
        alpha = max(2 ** math.ceil(math.log2(T / cfg.seq_length) + 1) - 1, 1) if cfg.use_dynamic_ntk else 1
    base = cfg.rotary_emb_base * alpha ** (hd / (hd - 2))
    half = hd // 2
    angle = torch.tensor([[p / base ** (2 * i / hd) for i in range(half)] for p in range(T)], dtype=torch.float64)
    cos, sin = angle.cos(), angle.sin()  # (T, hd/2)

    def rope(x):  # (H, T, hd)
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    def rms(x, w):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.layer_norm_epsilon) * w

    logn = torch.tensor([
        math.log(p) / math.log(cfg.seq_length) if (cfg.use_logn_attn and p > cfg.seq_length) else 1.0
        for p in range(1, T + 1)
    ], dtype=torch.float64)[None, :, None]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    x = sd["transformer.wte.weight"][torch.tensor(ids)]
    for i in range(cfg.num_hidden_layers):
        p = f"transformer.h.{i}."
        h = rms(x, sd[p + "ln_1.weight"])
        qkv = h @ sd[p + "attn.c_attn.weight"].T + sd[p + "attn.c_attn.bias"]
        q, k, v = (t.view(T, H, hd).transpose(0, 1) for t in qkv.split(H * hd, dim=-1))
        q, k = rope(q) * logn, rope(k)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        att = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v  # (H, T, hd)
        x = x + att.transpose(0, 1).reshape(T, H * hd) @ sd[p + "attn.c_proj.weight"].T
        h = rms(x, sd[p + "ln_2.weight"])
        a1, a2 = h @ sd[p + "mlp.w1.weight"].T, h @ sd[p + "mlp.w2.weight"].T
        x = x + (a1 * torch.nn.functional.silu(a2)) @ sd[p + "mlp.c_proj.weight"].T
    return rms(x, sd["transformer.ln_f.weight"]) @ sd["lm_head.weight"].T


def test_matches_transformers_qwen2(tiny_qwen):
    ids = torch.randint(0, 300, (2, 24))
    diff = (tiny_qwen(ids).logits - to_qwen2(tiny_qwen)(ids).logits).abs().max().item()
    print(f"max |logit diff| vs transformers Qwen2: {diff:.3g}")
    assert diff < 1e-5


@pytest.mark.parametrize("length", [20, 80])  # within seq_length, and 2.5x past it (NTK alpha 7 + LogN)
def test_matches_published_formulas(tiny_qwen, length):
    ids = torch.randint(0, 300, (length,)).tolist()
    ours = tiny_qwen(torch.tensor([ids])).logits[0].double()
    diff = (ours - formula_logits(tiny_qwen, ids)).abs().max().item()
    print(f"length {length}: max |logit diff| vs formulas: {diff:.3g}")
    assert diff < 1e-4


def test_cached_decoding_keeps_the_prefill_ntk_alpha(tiny_qwen):
    # prefill 64 = 2 x seq_length gives alpha 3; a fresh pass over 65 tokens would choose alpha 7
    ids = torch.randint(0, 300, (65,)).tolist()
    out = tiny_qwen(torch.tensor([ids[:64]]), use_cache=True)
    step = tiny_qwen(torch.tensor([ids[64:]]), cache=out.cache, use_cache=True).logits[0, -1].double()
    assert (step - formula_logits(tiny_qwen, ids, alpha=3)[-1]).abs().max() < 1e-4
    assert (step - formula_logits(tiny_qwen, ids, alpha=7)[-1]).abs().max() > 1e-3


def test_training_mode_uses_plain_rope_and_no_logn(tiny_qwen):
    ids = torch.randint(0, 300, (1, 80))
    tiny_qwen.train()  # dropout probabilities are 0, so only the NTK/LogN switches differ
    train_logits = tiny_qwen(ids).logits[0].double()
    tiny_qwen.config.use_dynamic_ntk = tiny_qwen.config.use_logn_attn = False
    assert (train_logits - formula_logits(tiny_qwen, ids[0].tolist())).abs().max() < 1e-4


def test_inputs_embeds_equal_input_ids(tiny_qwen):
    ids = torch.randint(0, 300, (2, 16))
    embeds = tiny_qwen.get_input_embeddings()(ids)
    assert torch.equal(tiny_qwen(ids).logits, tiny_qwen(inputs_embeds=embeds).logits)
    with pytest.raises(ValueError, match="exactly one"):
        tiny_qwen(input_ids=ids, inputs_embeds=embeds)


def test_save_and_sharded_reload_give_identical_logits(tiny_qwen, tmp_path):
    ids = torch.randint(0, 300, (2, 16))
    tiny_qwen.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, qwen.QWenLMHeadModel)
    assert torch.equal(reloaded(ids).logits, tiny_qwen(ids).logits)


def write_original_checkpoint(model, folder):
    """A folder as the hub has it: original config.json with auto_map, sharded .bin weights, remote code."""
    cfg = {
        "architectures": ["QWenLMHeadModel"],
        "auto_map": {"AutoConfig": "configuration_qwen.QWenConfig",
                     "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
        "attn_dropout_prob": 0.0, "bf16": False, "emb_dropout_prob": 0.0, "fp16": False, "fp32": False,
        "hidden_size": 64, "intermediate_size": 256, "initializer_range": 0.02, "kv_channels": 16,
        "layer_norm_epsilon": 1e-06, "max_position_embeddings": 32, "model_type": "qwen", "no_bias": True,
        "num_attention_heads": 4, "num_hidden_layers": 2, "onnx_safe": None, "rotary_emb_base": 10000,
        "rotary_pct": 1.0, "scale_attn_weights": True, "seq_length": 32, "softmax_in_fp32": False,
        "tie_word_embeddings": False, "tokenizer_class": "QWenTokenizer", "transformers_version": "4.32.0",
        "use_cache": True, "use_cache_kernel": False, "use_cache_quantization": False, "use_dynamic_ntk": True,
        "use_flash_attn": "auto", "use_logn_attn": True, "vocab_size": 300,
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    # remote code that must never run: it would leave a marker file
    marker = folder / "REMOTE_CODE_RAN"
    for name in ("configuration_qwen.py", "modeling_qwen.py"):
        (folder / name).write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    state = model.state_dict()
    names = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
              "pytorch_model-00002-of-00002.bin": names[len(names) // 2:]}
    weight_map = {}
    for file, keys in shards.items():
        torch.save({k: state[k].clone() for k in keys}, folder / file)
        weight_map.update(dict.fromkeys(keys, file))
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return marker


def test_original_format_loads_without_remote_code(tiny_qwen, tmp_path):
    marker = write_original_checkpoint(tiny_qwen, tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, qwen.QWenConfig) and config.kv_channels == 16
    model = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(model, qwen.QWenLMHeadModel)
    ids = torch.randint(0, 300, (1, 12))
    assert torch.equal(model(ids).logits, tiny_qwen(ids).logits)
    assert not marker.exists(), "the checkpoint's own Python files were executed"


def test_greedy_generation_with_and_without_cache(tiny_qwen):
    ids = torch.randint(0, 300, (1, 10))
    cached = tiny_qwen.generate(ids, max_new_tokens=15, do_sample=False, use_cache=True)
    uncached = tiny_qwen.generate(ids, max_new_tokens=15, do_sample=False, use_cache=False)
    assert cached.shape == (1, 25)
    assert torch.equal(cached, uncached)


def test_left_padded_batch_equals_single_sequences(tiny_qwen):
    a, b = torch.randint(1, 300, (12,)), torch.randint(1, 300, (7,))
    batch = torch.zeros(2, 12, dtype=torch.long)
    mask = torch.zeros(2, 12, dtype=torch.long)
    batch[0], mask[0] = a, 1
    batch[1, 5:], mask[1, 5:] = b, 1
    logits = tiny_qwen(batch, attention_mask=mask).logits
    assert torch.allclose(logits[0], tiny_qwen(a[None]).logits[0], atol=1e-5)
    assert torch.allclose(logits[1, 5:], tiny_qwen(b[None]).logits[0], atol=1e-5)
    assert torch.isfinite(logits).all()

    generated = tiny_qwen.generate(batch, attention_mask=mask, max_new_tokens=8, do_sample=False)
    alone = tiny_qwen.generate(b[None], max_new_tokens=8, do_sample=False)
    assert torch.equal(generated[1, 12:], alone[0, 7:])


def test_gradient_checkpointing_gives_the_same_gradients(tiny_qwen):
    ids = torch.randint(0, 300, (2, 16))

    def grads():
        tiny_qwen.zero_grad()
        tiny_qwen(ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in tiny_qwen.named_parameters()}

    tiny_qwen.train()
    plain = grads()
    tiny_qwen.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert tiny_qwen.transformer.h[0].gradient_checkpointing
    checkpointed = grads()
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6), name


def test_bf16_on_cpu(tiny_qwen):
    ids = torch.randint(0, 300, (2, 16))
    reference = tiny_qwen(ids).logits
    model = tiny_qwen.to(torch.bfloat16)
    logits = model(ids).logits
    assert logits.dtype == torch.bfloat16
    assert (logits.float() - reference).abs().max() < 0.1 * reference.abs().max()
    out = model.generate(ids[:1], max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 20)


def test_weight_names_match_the_official_checkpoints():
    model = qwen.QWenLMHeadModel(tiny_qwen_config(num_hidden_layers=1))
    assert set(model.state_dict()) == {
        "transformer.wte.weight", "transformer.ln_f.weight", "lm_head.weight",
        "transformer.h.0.ln_1.weight", "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.bias",
        "transformer.h.0.attn.c_proj.weight", "transformer.h.0.ln_2.weight", "transformer.h.0.mlp.w1.weight",
        "transformer.h.0.mlp.w2.weight", "transformer.h.0.mlp.c_proj.weight",
    }
    assert model.transformer.h[0].mlp.w1.out_features == 128  # intermediate_size // 2
