"""Qwen (v1) language model and tokenizer, written for current transformers: no remote code runs."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from .configuration_qwen import QWenConfig
from .modeling_qwen import QWenLMHeadModel, QWenModel
from .tokenization_qwen import IMAGE_TOKEN, QWenTokenizer, write_bpe_vocab, write_byte_vocab

AutoConfig.register("qwen", QWenConfig, exist_ok=True)
AutoModel.register(QWenConfig, QWenModel, exist_ok=True)
AutoModelForCausalLM.register(QWenConfig, QWenLMHeadModel, exist_ok=True)
AutoTokenizer.register(QWenConfig, slow_tokenizer_class=QWenTokenizer, exist_ok=True)

__all__ = ["IMAGE_TOKEN", "QWenConfig", "QWenLMHeadModel", "QWenModel", "QWenTokenizer", "write_bpe_vocab",
           "write_byte_vocab"]
