"""`python -m model.export --format llava`: our QWen becomes transformers' Qwen2 with identical logits and
token ids, the weights use the layout vLLM and SGLang read, and the chat template takes list content."""

import json
import logging

import pytest
import torch
from safetensors import safe_open
from test_model import image, logits, make_vlm
from tiny import save_tiny_clip, save_tiny_qwen2, tiny_qwen_config
from transformers import AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration

import qwen
from common import IMAGE_MARKER
from model import VisionLanguageModel, VLMConfig, save_checkpoint
from model.export import export, list_content_template

CORPUS = [
    "Hello, world! It's 2026; don't panic.", "你好，世界！这是一个测试。图中出现了哪些颜色？",
    "def f(x):\n    return x**2  # 平方\n\n\n", "emoji 😀👍🏽🇨🇳 and a ZWJ family 👨‍👩‍👧",
    "numbers 1234567 3.14159 1e-5", "  leading spaces\t\ttabs\r\nCRLF",
    "日本語のテキスト、한국어 텍스트, русский текст",
    "mixed中英文mixed 123abc", "café naïve ﬁ e\u0301", "a" * 300,
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n<|extra_0|>Q?<|im_end|>\n",
    "<|endoftext|><|extra_204|> specials in text",
]


@pytest.fixture(scope="module")
def qwen_export(tmp_path_factory, qwen_vocab_file):
    """A VLM on a tiny QWen with the real Qwen-7B vocabulary (NTK and LogN on, as Qwen-7B-Chat), LoRA
    perturbed, saved and exported to Llava."""
    root = tmp_path_factory.mktemp("qwen_export")
    torch.manual_seed(0)
    llm_dir = root / "qwen"
    qwen.QWenLMHeadModel(tiny_qwen_config(vocab_size=151936, seq_length=96, max_position_embeddings=96,
                                          use_dynamic_ntk=True, use_logn_attn=True)).save_pretrained(llm_dir)
    qwen.QWenTokenizer(qwen_vocab_file).save_pretrained(llm_dir)
    bases = {"qwen": str(llm_dir), "clip": save_tiny_clip(root / "clip")}
    model = make_vlm(bases, system_prompt="You are a careful assistant.")
    save_checkpoint(model, str(root / "ckpt"))
    return {"root": root, "model": model, "ckpt": str(root / "ckpt"), "out": root / "llava"}


def test_qwen_exports_to_llava_with_equal_logits(qwen_export, caplog):
    with caplog.at_level(logging.WARNING):
        export(qwen_export["ckpt"], str(qwen_export["out"]), fmt="llava")
    warnings = [r.message for r in caplog.records if "Qwen2 has neither" in r.message]
    assert len(warnings) == 1 and "dynamic NTK and LogN past seq_length (96 tokens)" in warnings[0]
    llava, info = LlavaForConditionalGeneration.from_pretrained(qwen_export["out"], output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    text_config = llava.config.text_config
    assert text_config.model_type == "qwen2" and text_config.max_position_embeddings == 96
    assert text_config.rope_parameters["rope_theta"] == 10000.0 and text_config.rms_norm_eps == 1e-6
    model = qwen_export["model"]
    texts = [model.processor.render([{"role": "user", "content": f"{IMAGE_MARKER}图中出现了哪些颜色？"}]),
             model.processor.render([{"role": "user", "content": f"What shapes, and where? 😀 {IMAGE_MARKER}"}])]
    batch = model.processor(texts, [[image(1)], [image(2)]], padding_side="right")
    assert batch["input_ids"].shape[1] <= 96  # within seq_length, where the conversion is exact
    with torch.no_grad():
        theirs = llava.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              pixel_values=batch["pixel_values"]).logits
    real = batch["attention_mask"].bool()  # padding positions are masked differently, and unused
    diff = (theirs - logits(model, batch))[real].abs().max().item()
    print(f"QWen VLM vs its Llava export (Qwen2), fp32: max |logit diff| = {diff:.2g}")
    assert diff <= 1e-5
    assert llava.generation_config.eos_token_id == model.stop_token_ids  # <|im_end|>, <|endoftext|>


def test_exported_tokenizer_gives_identical_ids(qwen_export, qwen_tokenizer):
    if not qwen_export["out"].exists():
        export(qwen_export["ckpt"], str(qwen_export["out"]), fmt="llava")
    fast = AutoTokenizer.from_pretrained(qwen_export["out"])
    assert type(fast).__name__.endswith("Fast") or "TokenizersBackend" in type(fast).__name__
    for text in CORPUS:
        ours = qwen_tokenizer.encode(text, add_special_tokens=False)
        assert fast.encode(text, add_special_tokens=False) == ours, text
        assert fast.decode(ours) == qwen_tokenizer.decode(ours), text
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *(f"<|extra_{i}|>" for i in (0, 1, 100, 204))]
    assert [fast.convert_tokens_to_ids(t) for t in specials] == [qwen_tokenizer.convert_tokens_to_ids(t)
                                                                 for t in specials]
    assert fast.convert_tokens_to_ids("<|im_end|>") == 151645 and len(fast) == 151851


@pytest.mark.parametrize("llm", ["qwen", "qwen2"])
def test_weights_use_the_serving_layout_and_still_load(qwen_export, tmp_path, llm):
    if llm == "qwen":
        out = qwen_export["out"]
        if not out.exists():
            export(qwen_export["ckpt"], str(out), fmt="llava")
    else:
        bases = {"qwen2": save_tiny_qwen2(tmp_path / "qwen2"), "clip": save_tiny_clip(tmp_path / "clip")}
        save_checkpoint(make_vlm(bases, llm="qwen2", llm_mode="full"), str(tmp_path / "ckpt"))
        out = tmp_path / "llava"
        export(str(tmp_path / "ckpt"), str(out), fmt="llava")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    prefixes = {".".join(k.split(".")[:2]) for k in keys}
    assert prefixes == {"vision_tower.vision_model", "language_model.model", "language_model.lm_head",
                        "multi_modal_projector.linear_1", "multi_modal_projector.linear_2"}, prefixes
    _, info = LlavaForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info


def test_chat_template_takes_string_and_list_content(qwen_export):
    out = qwen_export["out"]
    if not out.exists():
        export(qwen_export["ckpt"], str(out), fmt="llava")
    processor = AutoProcessor.from_pretrained(out)
    model = qwen_export["model"]
    forms = {
        "string": [{"role": "user", "content": f"{IMAGE_MARKER}图中出现了哪些颜色？"}],
        "list": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "图中出现了哪些颜色？"}]}],
        "openai": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///x.png"}},
                                                {"type": "text", "text": "图中出现了哪些颜色？"}]}],
    }
    ours_text = model.processor.render(forms["string"], add_generation_prompt=True)
    assert ours_text.startswith("<|im_start|>system\nYou are a careful assistant.<|im_end|>")
    ours = model.processor([ours_text], [[image(1)]])["input_ids"].tolist()
    for name, messages in forms.items():
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert text == ours_text, name
        assert processor(text=[text], images=[image(1)], return_tensors="pt")["input_ids"].tolist() == ours, name
    # the image after the question, and a multi-turn conversation with a system prompt of its own
    after = [{"role": "system", "content": "Be brief."},
             {"role": "user", "content": [{"type": "text", "text": "What shapes?"}, {"type": "image"}]},
             {"role": "assistant", "content": [{"type": "text", "text": "a red circle"}]},
             {"role": "user", "content": "And colours?"}]
    as_strings = [after[0], {"role": "user", "content": f"What shapes?{IMAGE_MARKER}"},
                  {"role": "assistant", "content": "a red circle"}, after[3]]
    assert processor.apply_chat_template(after, add_generation_prompt=True, tokenize=False) == (
        model.processor.render(as_strings, add_generation_prompt=True))


def test_list_content_template_wraps_any_template():
    template = list_content_template("{% for m in messages %}[{{ m['role'] }}:{{ m['content'] }}]{% endfor %}",
                                     "<image>", system_prompt="S")
    from jinja2 import Environment

    render = Environment().from_string(template).render
    parts = [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"}]
    assert render(messages=[{"role": "user", "content": parts}]) == "[system:S][user:a<image>b]"
    assert render(messages=[{"role": "system", "content": "T"}, {"role": "user", "content": "x"}]) == (
        "[system:T][user:x]")


def test_export_refuses_what_llava_cannot_hold(tmp_path):
    bases = {"qwen2": save_tiny_qwen2(tmp_path / "qwen2"), "clip": save_tiny_clip(tmp_path / "clip")}
    model = VisionLanguageModel.build(VLMConfig(llm=bases["qwen2"], vision=bases["clip"], post_layernorm=True,
                                                projector_type="linear", llm_mode="frozen"))
    save_checkpoint(model, str(tmp_path / "ckpt"))
    with pytest.raises(ValueError, match="mlp2x_gelu, not linear.*post-layernorm"):
        export(str(tmp_path / "ckpt"), str(tmp_path / "llava"), fmt="llava")
    assert not (tmp_path / "llava").exists()
    assert json.loads((tmp_path / "ckpt" / "vlm_config.json").read_text())["projector_type"] == "linear"


def test_llava_export_of_an_open_clip_checkpoint_is_refused_before_torch_loads(tmp_path):
    """The refusal reads the checkpoint's config only: with torch blocked from import it still comes, in one
    sentence that names the way to an exportable checkpoint, and nothing is written."""
    import subprocess
    import sys

    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "vlm_config.json").write_text(json.dumps({"llm": "x", "vision": "open_clip:RN50",
                                                            "projector_type": "mlp2x_gelu"}))
    blocked = ("import runpy, sys\nclass Block:\n    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] == 'torch': raise ImportError('torch is blocked')\n"
               "sys.meta_path.insert(0, Block())\nsys.argv = ['export'] + sys.argv[1:]\n"
               "runpy.run_module('model.export', run_name='__main__', alter_sys=True)\n")
    result = subprocess.run([sys.executable, "-c", blocked, str(checkpoint), str(tmp_path / "out"), "--format",
                             "llava"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (f"error: cannot export {checkpoint} to Llava: its vision tower is open_clip "
                             "(open_clip:RN50), not a transformers CLIP/SigLIP model: train with a CLIP/SigLIP hub id "
                             "or folder as --base_vision_model (for the CPU demo, python -m demo.run --vision vit "
                             "makes one)\n")
    assert not (tmp_path / "out").exists()
