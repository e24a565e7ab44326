"""The static-cache decoding loop (model/decoding.py) against transformers' generate: the same greedy tokens
for our QWen and for Qwen2, batch 1 and a left-padded batch, with and without images, past QWen's
seq_length (NTK, LogN) too; compiled; streaming; sampling."""

import threading

import pytest
import torch
from test_model import image
from tiny import save_tiny_clip, save_tiny_qwen, save_tiny_qwen2
from transformers import TextIteratorStreamer

from common import IMAGE_MARKER
from model import VisionLanguageModel, VLMConfig
from model.decoding import next_tokens
from model.device import pick_decoding

CONVERSATIONS = [
    ([{"role": "user", "content": f"{IMAGE_MARKER}what colour?"}], [image(1)]),
    ([{"role": "user", "content": "no image here: a longer question, so the batch is left-padded"}], []),
    ([{"role": "user", "content": f"compare {IMAGE_MARKER} and {IMAGE_MARKER}"}], [image(2), image(3)]),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoding")
    clip = save_tiny_clip(root / "clip")
    out = {}
    for name, llm in (("qwen", save_tiny_qwen(root / "qwen")), ("qwen2", save_tiny_qwen2(root / "qwen2"))):
        torch.manual_seed(0)
        out[name] = VisionLanguageModel.build(VLMConfig(llm=llm, vision=clip, llm_mode="frozen")).eval()
    return out


def new_tokens(model, mode, conversations, **kwargs):
    model.set_decoding(mode)
    prompts = [model.processor.render(m, add_generation_prompt=True) for m, _ in conversations]
    batch = model.processor(prompts, [imgs for _, imgs in conversations], padding_side="left")
    out = model.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                         image_sizes=batch["image_sizes"], **kwargs)
    model.set_decoding("eager")
    return out


@pytest.mark.parametrize("llm", ["qwen", "qwen2"])
@pytest.mark.parametrize("rows", [[0], [1], [0, 1, 2]], ids=["image", "text", "padded_batch_of_3"])
def test_static_greedy_equals_eager(models, llm, rows):
    conversations = [CONVERSATIONS[i] for i in rows]
    eager = new_tokens(models[llm], "eager", conversations, max_new_tokens=24)
    static = new_tokens(models[llm], "static", conversations, max_new_tokens=24)
    assert eager.shape[1] > 1 and torch.equal(static, eager)


def test_static_equals_eager_past_qwen_seq_length(models):
    """The tiny QWen's seq_length is 32: a 100-token prompt takes dynamic NTK and LogN on both paths."""
    long = [([{"role": "user", "content": IMAGE_MARKER + "describe it, " * 8}], [image(4)])]
    model = models["qwen"]
    assert model.processor([model.processor.render(long[0][0], add_generation_prompt=True)], [long[0][1]])[
        "input_ids"].shape[1] > 3 * model.llm.config.seq_length
    assert torch.equal(new_tokens(model, "static", long, max_new_tokens=16),
                       new_tokens(model, "eager", long, max_new_tokens=16))


def test_compiled_greedy_equals_eager(models):
    model = models["qwen"]
    eager = new_tokens(model, "eager", CONVERSATIONS, max_new_tokens=12)
    model.set_decoding("compiled")
    decoder = model.decoder
    prompts = [model.processor.render(m, add_generation_prompt=True) for m, _ in CONVERSATIONS]
    batch = model.processor(prompts, [imgs for _, imgs in CONVERSATIONS], padding_side="left")
    compiled = model.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], max_new_tokens=12)
    assert decoder.compiled and decoder.compile_seconds is not None
    assert torch.equal(compiled, eager)


def test_streaming_and_stop_tokens(models):
    model = models["qwen"].set_decoding("static")
    messages, images = CONVERSATIONS[0]
    streamer = TextIteratorStreamer(model.tokenizer, skip_prompt=True, skip_special_tokens=True)
    result = {}
    thread = threading.Thread(target=lambda: result.update(
        text=model.answer([messages], [images], streamer=streamer, max_new_tokens=24)[0]))
    thread.start()
    streamed = "".join(streamer)
    thread.join()
    assert streamed.strip() == result["text"] and result["text"] == (
        model.set_decoding("eager").answer([messages], [images], max_new_tokens=24)[0])
    # min_new_tokens keeps the stop token out; a row that stopped is padded
    forced = new_tokens(model, "static", CONVERSATIONS[:2], max_new_tokens=6, min_new_tokens=6, eos_token_id=None,
                        pad_token_id=0)
    assert forced.shape == (2, 6)


def test_sampling_draws_from_the_nucleus():
    logits = torch.tensor([[0.0, 3.0, 1.0, -2.0], [5.0, 0.0, 0.0, 0.0]])
    assert next_tokens(logits, False, 1.0, 1.0).tolist() == [1, 0]
    torch.manual_seed(0)
    assert next_tokens(logits, True, 1.0, 1e-6).tolist() == [1, 0]  # a nucleus of one token: the argmax
    draws = torch.stack([next_tokens(logits, True, 1.0, 0.9) for _ in range(200)])
    assert set(draws[:, 0].tolist()) <= {1, 2} and set(draws[:, 1].tolist()) == {0}  # p(0) = 0.98 > 0.9 alone
    hot = torch.stack([next_tokens(logits, True, 100.0, 1.0) for _ in range(400)])
    assert set(hot[:, 0].tolist()) == {0, 1, 2, 3}  # a high temperature flattens the distribution


def test_decoding_choice(models):
    assert pick_decoding("auto", torch.device("cuda")) == "compiled"
    assert pick_decoding("auto", torch.device("cpu")) == "static"
    assert pick_decoding("auto", torch.device("mps")) == "eager" and pick_decoding("eager", torch.device("cuda")) == (
        "eager")
    with pytest.raises(ValueError, match="decoding must be one of"):
        models["qwen"].set_decoding("fast")
