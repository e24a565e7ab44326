"""Shared fixtures: tiny random models built from configs, and the real Qwen vocabulary from dashscope."""

import importlib.resources

import pytest
import torch
from tiny import tiny_qwen_config

import qwen


@pytest.fixture(scope="session")
def qwen_vocab_file():
    """The real 151,643-rank Qwen vocabulary, as shipped in the dashscope wheel."""
    path = importlib.resources.files("dashscope") / "resources" / "qwen.tiktoken"
    assert path.is_file(), "requirements-dev.txt installs dashscope for its qwen.tiktoken"
    return str(path)


@pytest.fixture(scope="session")
def qwen_tokenizer(qwen_vocab_file):
    return qwen.QWenTokenizer(qwen_vocab_file)


@pytest.fixture
def tiny_qwen():
    torch.manual_seed(0)
    return qwen.QWenLMHeadModel(tiny_qwen_config()).eval()
