"""The training speed levers against the plain path, fp32 on the CPU: the loss at labelled positions only
(model/loss.py: labelled, chunked) and selective activation checkpointing give the same loss and the same
gradients within 1e-5."""

import pytest
import torch
from runs import argv, max_loss_diff, tiny_setup
from test_model import image
from tiny import save_tiny_clip, save_tiny_qwen, save_tiny_qwen2

import train
from common import IMAGE_MARKER
from dataset import VLMCollator, encode_conversation
from model import VisionLanguageModel, VLMConfig
from model import loss as loss_module
from model.loss import resolve

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("levers")
    return {"qwen": save_tiny_qwen(root / "qwen"), "qwen2_tied": save_tiny_qwen2(root / "qwen2", True),
            "clip": save_tiny_clip(root / "clip")}


def make(bases, llm, mode):
    torch.manual_seed(1)
    targets = "c_attn|w1|w2" if llm == "qwen" else "all-linear"
    return VisionLanguageModel.build(VLMConfig(llm=bases[llm], vision=bases["clip"], llm_mode=mode, lora_rank=4,
                                               target_modules=targets)).apply_trainable_modes()


def batch_of(model):
    items = []
    for q, a in (("what colour?", "red"), ("a longer question, so the batch is padded", "a longer answer, in words")):
        ids, labels = encode_conversation(model.processor, [{"role": "user", "content": IMAGE_MARKER + q},
                                                            {"role": "assistant", "content": a}])
        items.append({"id": q, "input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                      "pixel_values": model.processor.image_processor([image(len(q))])})
    batch = VLMCollator(model.tokenizer.pad_token_id or 0)(items)
    return {k: v for k, v in batch.items() if k not in ("sample_ids", "skipped")}


def loss_and_grads(model, batch, **kwargs):
    model.zero_grad()
    torch.manual_seed(5)  # the same LoRA dropout masks on every path
    loss = model(**batch, **kwargs).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("llm,mode", [("qwen", "lora"), ("qwen", "full"), ("qwen2_tied", "full")])
@pytest.mark.parametrize("impl", ["labelled", "chunked"])
def test_labelled_loss_equals_the_plain_loss(bases, llm, mode, impl, monkeypatch):
    monkeypatch.setattr(loss_module, "CHUNK", 3)  # several chunks, and a short last one
    model = make(bases, llm, mode)
    batch = batch_of(model)
    for extra in ({}, {"num_items_in_batch": torch.tensor(17)}):  # the Trainer's count across accumulation
        model.loss_impl = "plain"
        ref_loss, ref_grads = loss_and_grads(model, batch, **extra)
        model.loss_impl = impl
        loss, grads = loss_and_grads(model, batch, **extra)
        assert abs(loss - ref_loss) < TOLERANCE
        assert grads.keys() == ref_grads.keys() and len(grads) > 0
        worst = max((grads[n] - ref_grads[n]).abs().max().item() for n in grads)
        assert worst < TOLERANCE, (impl, extra, worst)
    if mode == "full":  # the output layer is trained: its gradient came through the chunked function
        assert any("lm_head" in n or "embed_tokens" in n or "wte" in n for n in grads)


def test_selective_checkpointing_keeps_the_gradients(bases):
    model = make(bases, "qwen", "full")
    model.train()
    batch = batch_of(model)
    _, reference = loss_and_grads(model, batch)
    blocks = list(model.llm.transformer.h)
    for every in (1, 2):
        model.checkpoint_every = every
        model.activation_checkpointing_enable()
        assert [b.gradient_checkpointing for b in blocks] == [i % every == 0 for i in range(len(blocks))]
        _, grads = loss_and_grads(model, batch)
        assert max((grads[n] - reference[n]).abs().max().item() for n in grads) < TOLERANCE, every


def test_choices_are_checked(bases):
    head = make(bases, "qwen", "lora").llm.get_output_embeddings()
    assert resolve("auto", head) == "chunked" and resolve("plain", head) == "plain"
    with pytest.raises(ValueError, match="loss_impl must be one of"):
        resolve("fused", head)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="liger needs a CUDA GPU"):
            resolve("liger", head)


def test_train_py_losses_match_across_loss_paths(tmp_path):
    setup = tiny_setup(tmp_path)
    for impl in ("plain", "auto"):
        assert train.main(argv(setup, tmp_path / impl, "--loss_impl", impl, "--checkpoint_every", "2",
                               "--activation_checkpointing", "true", steps=6)) == 0
    assert max_loss_diff(tmp_path / "plain", tmp_path / "auto") < TOLERANCE
    assert train.main(argv(setup, tmp_path / "bad", "--checkpoint_every", "0", steps=1)) == 2
