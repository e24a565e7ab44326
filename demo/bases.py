"""The demo's tiny base models, built from configs with random weights and saved as ordinary model
folders, so train.py loads them through the same from_pretrained path as a hub id."""

import os

import torch
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

from qwen import QWenConfig, QWenLMHeadModel, QWenTokenizer, write_bpe_vocab, write_byte_vocab

# Qwen's ChatML without the default system block: on a byte vocabulary that block is 10% of each sample.
CHATML_NO_DEFAULT_SYSTEM = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_level_tokenizer(words: list[str] | None = None):
    """An HF fast tokenizer over the 256 byte symbols with ChatML specials, like Qwen2's but tiny: for base
    LLMs of transformers' own architectures (tests, benchmarks); with `words`, also the merges that make each of
    them one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    if words:  # the merges that make each word one token
        backend.train_from_iterator(sorted(set(words)), trainers.BpeTrainer(
            vocab_size=len(alphabet) + sum(len(w.encode()) for w in set(words)), initial_alphabet=alphabet,
            show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", chat_template=CHATML_NO_DEFAULT_SYSTEM)
    tokenizer.add_tokens(["<|im_start|>"], special_tokens=True)
    return tokenizer


def build_tiny_llm(folder: str, seed: int = 0, hidden_size: int = 128, layers: int = 2,
                   init_range: float = 0.02, words: list[str] | None = None) -> str:
    """Our QWen architecture with a Qwen-format vocabulary plus the 208 special tokens: the 256 bytes, and with
    `words` the byte-pair merges that make each of them one token (qwen.write_bpe_vocab), as a real LLM's tokenizer
    has its language's frequent words whole. init_range: the weights' std; about 1/sqrt(width) (0.08) learns the
    demo's answers much faster than 0.02."""
    os.makedirs(folder, exist_ok=True)
    vocab = os.path.join(folder, "qwen.tiktoken")
    vocab = write_bpe_vocab(vocab, words) if words else write_byte_vocab(vocab)
    tokenizer = QWenTokenizer(vocab, chat_template=CHATML_NO_DEFAULT_SYSTEM)
    torch.manual_seed(seed)
    config = QWenConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=layers,
                        num_attention_heads=4, kv_channels=hidden_size // 4, intermediate_size=4 * hidden_size,
                        seq_length=512, max_position_embeddings=512, use_dynamic_ntk=False, use_logn_attn=False,
                        initializer_range=init_range)
    QWenLMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_qwen2(folder: str, seed: int = 0, hidden_size: int = 128, layers: int = 2,
                     init_range: float = 0.02, words: list[str] | None = None) -> str:
    """transformers' own Qwen2 at the same size, with the byte-level fast tokenizer: the demo on an LLM that
    exports to Llava as it is (--llm qwen2)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = byte_level_tokenizer(words)
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=4, intermediate_size=4 * hidden_size,
                         max_position_embeddings=512, tie_word_embeddings=False, initializer_range=init_range)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_vision(folder: str, seed: int = 0, image_size: int = 64, patch_size: int = 16,
                      hidden_size: int = 128, layers: int = 2) -> str:
    """A CLIP-style ViT (random, and kept frozen in the demo) with CLIP's own image processor."""
    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=hidden_size, intermediate_size=4 * hidden_size, num_hidden_layers=layers,
                              num_attention_heads=4, image_size=image_size, patch_size=patch_size)
    CLIPVisionModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return folder
