"""QWenTokenizer on the real Qwen-7B vocabulary and on a tiny byte vocabulary."""

import json
import pickle

import pytest
from transformers import AutoTokenizer

import qwen

VERIFIED = {
    "Hello world": [9707, 1879],
    "这幅图像描述了什么？": [43288, 99708, 107553, 53481, 34187, 99245, 11319],
    "使用语言描述一下图中出现了那些颜色<|extra_0|>":
        [37029, 102064, 53481, 100158, 28029, 15946, 104423, 103928, 102284, 151646],
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n":
        [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198],
}
ROUND_TRIP = [
    "Hello world", "这幅图像描述了什么？", "emoji 🎉👩‍👩‍👧 mixed 中文 and  double  spaces",
    "tabs\t\tand\n\n\nnewlines   \n  ", "   leading and trailing   ", "<|im_start|>user\nhi<|im_end|>",
    "numbers 1234567 and 'quotes' don't", "",
]


@pytest.mark.parametrize("text", list(VERIFIED))
def test_real_vocabulary_ids(qwen_tokenizer, text):
    assert qwen_tokenizer.encode(text) == VERIFIED[text]


def test_special_tokens(qwen_tokenizer):
    assert len(qwen_tokenizer) == 151851
    ids = qwen_tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|extra_0|>",
                                                "<|extra_204|>"])
    assert ids == [151643, 151644, 151645, 151646, 151850]
    assert qwen_tokenizer.convert_tokens_to_ids(qwen.IMAGE_TOKEN) == 151646


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_decode_round_trip(qwen_tokenizer, text):
    assert qwen_tokenizer.decode(qwen_tokenizer.encode(text)) == text


def test_skip_special_tokens(qwen_tokenizer):
    ids = qwen_tokenizer.encode("<|im_start|>assistant\n红色<|im_end|>")
    assert qwen_tokenizer.decode(ids, skip_special_tokens=True) == "assistant\n红色"


def test_chat_template_is_qwen_chatml(qwen_tokenizer):
    messages = [{"role": "user", "content": "这是什么？<|extra_0|>"}, {"role": "assistant", "content": "猫"}]
    text = qwen_tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n这是什么？<|extra_0|><|im_end|>\n"
        "<|im_start|>assistant\n猫<|im_end|>\n"
    )
    prompt = qwen_tokenizer.apply_chat_template(
        [{"role": "system", "content": "你是一位图像理解助手。"}, messages[0]], tokenize=False,
        add_generation_prompt=True,
    )
    assert prompt == (
        "<|im_start|>system\n你是一位图像理解助手。<|im_end|>\n"
        "<|im_start|>user\n这是什么？<|extra_0|><|im_end|>\n<|im_start|>assistant\n"
    )
    assert qwen_tokenizer.encode(text)[:11] == VERIFIED["<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"]


def test_save_and_reload(qwen_tokenizer, tmp_path):
    qwen_tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "qwen.tiktoken").exists()
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(reloaded, qwen.QWenTokenizer)
    for text, ids in VERIFIED.items():
        assert reloaded.encode(text) == ids
    assert reloaded.chat_template == qwen_tokenizer.chat_template


def test_original_tokenizer_config_loads_without_remote_code(qwen_vocab_file, tmp_path):
    (tmp_path / "qwen.tiktoken").write_bytes(open(qwen_vocab_file, "rb").read())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": 8192, "tokenizer_class": "QWenTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_qwen.QWenTokenizer", None]},
    }))
    marker = tmp_path / "REMOTE_CODE_RAN"
    (tmp_path / "tokenization_qwen.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(tok, qwen.QWenTokenizer)
    assert tok.encode("Hello world") == [9707, 1879]
    assert not marker.exists()


def test_pickles_for_dataloader_workers(qwen_tokenizer):
    clone = pickle.loads(pickle.dumps(qwen_tokenizer))
    assert clone.encode("这幅图像描述了什么？") == VERIFIED["这幅图像描述了什么？"]


def test_tiny_byte_vocabulary(tmp_path):
    tok = qwen.QWenTokenizer(qwen.write_byte_vocab(str(tmp_path / "qwen.tiktoken")))
    assert len(tok) == 256 + 208
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>", "<|extra_0|>"]) == [256, 258, 259]
    text = "图中出现了哪些颜色？<|extra_0|> a red circle"
    ids = tok.encode(text)
    assert ids[:3] == list("图".encode())
    assert 259 in ids and tok.decode(ids) == text
