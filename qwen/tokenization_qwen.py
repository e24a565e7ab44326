"""QWenTokenizer: Qwen's byte-level BPE on tiktoken, with the 208 special tokens after the ranks."""

import base64
import json
import os
import shutil

import tiktoken
from transformers import PreTrainedTokenizer

VOCAB_FILES_NAMES = {"vocab_file": "qwen.tiktoken"}
# The pre-tokenisation regex of Qwen's published tokenizer.
PAT_STR = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""  # noqa: E501
ENDOFTEXT, IMSTART, IMEND = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IMSTART, IMEND) + tuple(f"<|extra_{i}|>" for i in range(205))
IMAGE_TOKEN = "<|extra_0|>"

# Qwen-7B-Chat's ChatML, with its default system prompt when the conversation has none.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def load_tiktoken_ranks(path: str) -> dict[bytes, int]:
    """Reads a `base64(token) rank` file, one pair per line."""
    with open(path, "rb") as f:
        lines = f.read().splitlines()
    return {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in lines if line)}


def write_byte_vocab(path: str) -> str:
    """Writes a Qwen-format vocabulary of the 256 single bytes: tiny, but every text still encodes."""
    with open(path, "w") as f:
        for i in range(256):
            f.write(f"{base64.b64encode(bytes([i])).decode()} {i}\n")
    return path


def write_bpe_vocab(path: str, words: list[str]) -> str:
    """Writes a Qwen-format vocabulary fitted to `words` (each counted once): the 256 bytes, then byte-pair merges
    learned by the `tokenizers` library's BPE trainer, after Qwen's own pre-tokenisation, until every word is one
    token. The ranks follow the merge order, which is what tiktoken's encoder needs to merge as the trainer did. A
    text of words that are not in the list still encodes, in smaller pieces: "黑色和黄色" is "黑色", "和", "黄色" when
    those are the words."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(PAT_STR), behavior="isolated"),
                                                 byte_level])
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(sorted(set(words)), trainers.BpeTrainer(
        vocab_size=len(alphabet) + sum(len(w.encode()) for w in set(words)), initial_alphabet=alphabet,
        show_progress=False))
    # ByteLevel spells each byte as a printable character (GPT-2's table); map them back to bytes
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    to_byte = {chr(b): b for b in printable} | {chr(256 + n): b for n, b in enumerate(others)}
    ranks = {bytes([i]): i for i in range(256)}
    for merge in json.loads(bpe.to_str())["model"]["merges"]:
        left, right = merge if isinstance(merge, list) else merge.split(" ")
        ranks.setdefault(bytes(to_byte[c] for c in left + right), len(ranks))
    with open(path, "w") as f:
        f.writelines(f"{base64.b64encode(token).decode()} {rank}\n" for token, rank in ranks.items())
    return path


class QWenTokenizer(PreTrainedTokenizer):
    vocab_files_names = VOCAB_FILES_NAMES
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file, errors="replace", eos_token=ENDOFTEXT, pad_token=ENDOFTEXT, **kwargs):
        self.vocab_file = vocab_file
        self.errors = errors  # how decode treats bytes that are not valid UTF-8
        self.mergeable_ranks = load_tiktoken_ranks(vocab_file)
        self.special_tokens = {tok: len(self.mergeable_ranks) + i for i, tok in enumerate(SPECIAL_TOKENS)}
        self.tokenizer = tiktoken.Encoding(
            "qwen", pat_str=PAT_STR, mergeable_ranks=self.mergeable_ranks, special_tokens=self.special_tokens
        )
        assert self.tokenizer.n_vocab == len(self.mergeable_ranks) + len(self.special_tokens), (
            f"{vocab_file}: ranks are not contiguous from 0"
        )
        self.decoder = {rank: token for token, rank in self.mergeable_ranks.items()}
        self.decoder.update({i: tok.encode() for tok, i in self.special_tokens.items()})
        kwargs.setdefault("chat_template", CHATML_TEMPLATE)
        super().__init__(errors=errors, eos_token=eos_token, pad_token=pad_token, **kwargs)
        # Register the specials as added tokens so the base class splits them out of text as single tokens.
        self._add_tokens([t for t in SPECIAL_TOKENS if t not in self._added_tokens_encoder], special_tokens=True)

    def __getstate__(self):  # DataLoader workers pickle the tokenizer; rebuild tiktoken there
        state = self.__dict__.copy()
        del state["tokenizer"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.tokenizer = tiktoken.Encoding(
            "qwen", pat_str=PAT_STR, mergeable_ranks=self.mergeable_ranks, special_tokens=self.special_tokens
        )

    @property
    def vocab_size(self):
        return self.tokenizer.n_vocab

    def get_vocab(self):
        vocab = {**self.mergeable_ranks, **self.special_tokens}
        vocab.update(self._added_tokens_encoder)
        return vocab

    def _tokenize(self, text, **kwargs):
        # The base class has already split out special and added tokens, so this text is ordinary.
        return [self.decoder[t] for t in self.tokenizer.encode_ordinary(text)]

    def _convert_token_to_id(self, token):
        if isinstance(token, bytes):
            return self.mergeable_ranks[token]
        if token in self.special_tokens:
            return self.special_tokens[token]
        raise ValueError(f"unknown token {token!r}")

    def _convert_id_to_token(self, index):
        if index in self.decoder:
            return self.decoder[index]
        raise ValueError(f"unknown token id {index}")

    def convert_tokens_to_string(self, tokens):
        data = b"".join(t if isinstance(t, bytes) else t.encode() for t in tokens)
        return data.decode("utf-8", errors=self.errors)

    def _decode(self, token_ids, skip_special_tokens=False, errors=None, **kwargs):
        ids = [token_ids] if isinstance(token_ids, int) else [int(i) for i in token_ids]
        if skip_special_tokens:
            skip = set(self.special_tokens.values()) | set(self.all_special_ids)
            ids = [i for i in ids if i not in skip]
        return b"".join(self._bytes_of(i) for i in ids).decode("utf-8", errors=errors or self.errors)

    def _bytes_of(self, index: int) -> bytes:
        if index in self.decoder:
            return self.decoder[index]
        if index in self._added_tokens_decoder:
            return self._added_tokens_decoder[index].content.encode()
        return b""  # ids in the padding of the embedding matrix (151851..151935 for Qwen-7B) have no text

    def save_vocabulary(self, save_directory, filename_prefix=None):
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        target = os.path.join(save_directory, prefix + VOCAB_FILES_NAMES["vocab_file"])
        if os.path.abspath(target) != os.path.abspath(self.vocab_file):
            shutil.copyfile(self.vocab_file, target)
        return (target,)
