"""Padding-free packing is exact: inside a packed row every sample gets the numbers it gets alone.

Logits per sample (our QWen, transformers' Qwen2 and Llama; sdpa and eager), no contamination across samples, the
loss and every gradient of a packed batch against the same samples padded, position ids and labels at the
boundaries, QWen's NTK and LogN past seq_length, the plan, bad samples in a row, resume and DeepSpeed."""

import json

import pytest
import torch
from runs import argv, losses, max_loss_diff, tiny_setup, torchrun
from test_model import image
from test_training import CrashAfterSave
from tiny import save_tiny_clip, save_tiny_llama, save_tiny_qwen, save_tiny_qwen2

import train
from common import IMAGE_MARKER
from dataset import IGNORE_INDEX, PackedDataset, VLMCollator, VLMDataset, encode_conversation, plan_rows
from model import VisionLanguageModel, VLMConfig

LOGITS_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("packing")
    return {"qwen": save_tiny_qwen(root / "qwen"), "qwen2": save_tiny_qwen2(root / "qwen2"),
            "llama": save_tiny_llama(root / "llama"), "clip": save_tiny_clip(root / "clip"),
            "qwen_ntk": save_tiny_qwen(root / "qwen_ntk", seq_length=64, use_dynamic_ntk=True, use_logn_attn=True)}


def make(bases, llm, attn=None, mode="full"):
    torch.manual_seed(1)
    config = VLMConfig(llm=bases[llm], vision=bases["clip"], llm_mode=mode, lora_rank=4,
                       target_modules="c_attn|w1|w2" if llm.startswith("qwen") and llm != "qwen2" else "all-linear")
    return VisionLanguageModel.build(config, attn_implementation=attn).apply_trainable_modes()


CONVERSATIONS = [  # (user turn, reply, number of images): images in several samples of one row
    (f"{IMAGE_MARKER}what colour is it?", "red", 1),
    ("no image: how are you?", "fine, thank you", 0),
    (f"first {IMAGE_MARKER} then {IMAGE_MARKER}: which is brighter?", "the second one, by far", 2),
    ("a short one", "ok", 0),
]


def items(model, seed=0, conversations=CONVERSATIONS):
    out = []
    for k, (question, answer, n_images) in enumerate(conversations):
        ids, labels = encode_conversation(model.processor, [{"role": "user", "content": question},
                                                            {"role": "assistant", "content": answer}])
        pixels = model.processor.image_processor([image(10 * k + j + seed) for j in range(n_images)]) if n_images \
            else None
        out.append({"id": str(k), "input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                    "pixel_values": pixels})
    return out


def model_inputs(batch):
    return {k: v for k, v in batch.items() if k not in ("sample_ids", "skipped", "num_tokens")}


def alone(model, item) -> torch.Tensor:
    batch = VLMCollator(0)([item])
    with torch.no_grad():
        return model(**{k: v for k, v in model_inputs(batch).items() if k != "labels"}).logits[0]  # (T, V)


def packed_logits(model, rows) -> list[torch.Tensor]:
    """Each sample's logits, cut out of the packed rows."""
    batch = VLMCollator(0)(rows)
    assert "attention_mask" not in batch
    with torch.no_grad():
        logits = model(**{k: v for k, v in model_inputs(batch).items() if k != "labels"}).logits
    out = []
    for r, row in enumerate(rows):
        start = 0
        for item in row:
            out.append(logits[r, start:start + len(item["input_ids"])])
            start += len(item["input_ids"])
    return out


CASES = [("qwen", None), ("qwen2", "sdpa"), ("qwen2", "eager"), ("llama", "sdpa"), ("llama", "eager")]


@pytest.mark.parametrize("llm,attn", CASES)
def test_every_sample_in_a_pack_has_its_logits_alone(bases, llm, attn):
    model = make(bases, llm, attn).eval()
    samples = items(model)
    reference = [alone(model, s) for s in samples]
    # two rows of different lengths: the second is padded at its end, and its padding is a sequence of its own
    got = packed_logits(model, [samples[:3], samples[3:]])
    diffs = [(a - b).abs().max().item() for a, b in zip(reference, got, strict=True)]
    print(f"{llm} {attn}: max |logits packed - alone| per sample = {[f'{d:.1e}' for d in diffs]}")
    assert max(diffs) <= LOGITS_TOLERANCE


@pytest.mark.parametrize("llm,attn", [("qwen", None), ("qwen2", "sdpa"), ("llama", "eager")])
def test_no_contamination_between_samples(bases, llm, attn):
    model = make(bases, llm, attn).eval()
    samples = items(model)
    before = packed_logits(model, [samples[:3]])
    changed = items(model, seed=99)  # other pixels for every image
    changed[0]["input_ids"] = changed[0]["input_ids"].clone()
    text = (changed[0]["input_ids"] != model.image_token_id).nonzero()[5:12, 0]
    changed[0]["input_ids"][text] = (changed[0]["input_ids"][text] + 1) % 200  # other tokens in sample A
    after = packed_logits(model, [[changed[0], samples[1], samples[2]]])
    assert (before[0] - after[0]).abs().max() > 1e-3  # sample A itself did change
    for b in (1, 2):
        assert (before[b] - after[b]).abs().max().item() <= 1e-6, f"sample {b} moved when sample A changed"


@pytest.mark.parametrize("llm,mode", [("qwen", "full"), ("qwen", "lora"), ("qwen2", "full")])
@pytest.mark.parametrize("loss_impl", ["chunked", "plain"])
def test_loss_and_gradients_equal_the_padded_batch(bases, llm, mode, loss_impl):
    model = make(bases, llm, "sdpa" if llm != "qwen" else None, mode)
    model.loss_impl = loss_impl
    model.llm.config.use_cache = True  # a cache would switch packed masks off: the model must not build one
    samples = items(model)

    def loss_and_grads(batch):
        model.zero_grad()
        torch.manual_seed(5)  # the same LoRA dropout masks
        loss = model(**model_inputs(batch), num_items_in_batch=torch.tensor(batch_labels)).loss
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    padded = VLMCollator(0)(samples)
    packed = VLMCollator(0)([samples[:2], samples[2:]])
    batch_labels = int((padded["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert batch_labels == int((packed["labels"][:, 1:] != IGNORE_INDEX).sum())  # the Trainer's count agrees
    if mode == "lora":
        model.llm.train(False)  # dropout draws depend on the tensor shapes; compare without it
    loss_padded, grads_padded = loss_and_grads(padded)
    loss_packed, grads_packed = loss_and_grads(packed)
    assert loss_packed == pytest.approx(loss_padded, rel=1e-5)
    assert grads_padded.keys() == grads_packed.keys() and len(grads_padded) > 4
    worst = max(((grads_packed[n] - g).norm() / g.norm().clamp(min=1e-12)).item() for n, g in grads_padded.items())
    print(f"{llm} {mode} {loss_impl}: loss {loss_padded:.6f} vs {loss_packed:.6f}; "
          f"worst relative gradient diff {worst:.1e}")
    assert worst <= 1e-5


def test_positions_restart_and_no_label_crosses_a_boundary(bases):
    model = make(bases, "qwen")
    samples = items(model)
    samples[1]["labels"] = samples[1]["input_ids"].clone()  # a sample labelled from its first token on
    batch = VLMCollator(0)([samples[:3], samples[3:]])
    lengths = [len(s["input_ids"]) for s in samples]
    row0 = batch["position_ids"][0]
    starts = [0, lengths[0], lengths[0] + lengths[1]]
    assert all(row0[s].item() == 0 for s in starts) and row0[starts[1] - 1].item() == lengths[0] - 1
    assert torch.equal(row0[: lengths[0]], torch.arange(lengths[0]))
    # the padded end of row 1 restarts too: a sequence of its own, without labels
    row1, width = batch["position_ids"][1], batch["input_ids"].shape[1]
    assert row1[lengths[3]].item() == 0 and torch.equal(row1[lengths[3]:], torch.arange(width - lengths[3]))
    assert (batch["labels"][1, lengths[3]:] == IGNORE_INDEX).all()
    # at every boundary the first token is no target: the previous sample's last token predicts nothing there,
    # even where the sample itself labels its first token
    for s in starts:
        assert batch["labels"][0, s].item() == IGNORE_INDEX
    assert torch.equal(batch["labels"][0, starts[1] + 1:starts[2]], samples[1]["input_ids"][1:])
    # and elsewhere the labels are each sample's own
    assert torch.equal(batch["labels"][0, 1:lengths[0]], samples[0]["labels"][1:])
    assert batch["num_tokens"] == sum(lengths) and batch["sample_ids"] == ["0", "1", "2", "3"]
    assert batch["pixel_values"].shape[0] == 3  # the images of samples 0 and 2, in order


def test_qwen_past_seq_length_in_a_pack_is_as_alone(bases):
    """Dynamic NTK and LogN (inference) follow each sample's own length: a sample over twice QWen's seq_length
    (64) packed beside a shorter one gets exactly its logits alone, and so does the other, though the three lengths
    (each, and the row's) give three different NTK factors (7, 3 and 15)."""
    model = make(bases, "qwen_ntk").eval()
    long = (f"{IMAGE_MARKER}" + "tell me everything about this picture, " * 3, "it is red", 1)
    samples = items(model, conversations=[long, CONVERSATIONS[3]])
    seq_length = model.llm.config.seq_length
    assert len(samples[0]["input_ids"]) > 2 * seq_length and seq_length < len(samples[1]["input_ids"]) < 2 * seq_length
    reference = [alone(model, s) for s in samples]
    got = packed_logits(model, [samples])
    diffs = [(a - b).abs().max().item() for a, b in zip(reference, got, strict=True)]
    assert max(diffs) <= LOGITS_TOLERANCE, diffs


# ---- the plan ----

def test_the_plan_packs_whole_samples_first_fit_decreasing():
    lengths = [300, 50, 1200, 700, 100, 990, 5000, 20, 480, 610]
    rows = plan_rows(lengths, max_length=1024, buffer=4, seed=3)
    assert rows == plan_rows(lengths, 1024, 4, 3)  # a pure function of the seed: a resumed run packs the same
    assert rows != plan_rows(lengths, 1024, 4, 4)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))  # every sample once
    assert all(sum(min(lengths[i], 1024) for i in row) <= 1024 for row in rows)
    assert [6] in rows  # longer than max_length: a row of its own (truncated, as without packing)
    one_window = plan_rows(lengths, 1024, buffer=100, seed=3)
    # first-fit decreasing in one window: 6 rows, the fewest the 5,298 tokens (long ones cut to 1,024) can take
    assert sorted(map(sorted, one_window)) == [[0, 3], [1, 4, 9], [2], [5, 7], [6], [8]]
    assert len(one_window) <= len(rows)


def test_a_bad_sample_in_a_row_is_replaced_by_one_that_fits(tmp_path, bases):
    from tiny import write_color_dataset

    image_map, captions = write_color_dataset(tmp_path / "data", n=12)
    model = make(bases, "qwen")
    data = VLMDataset(image_map, captions, model.processor, max_length=200)
    packed = PackedDataset.plan(data, max_length=200, buffer=100, seed=0)
    row = packed.rows[0]
    assert len(row) >= 2 and sum(packed.sample_lengths[i] for i in row) == packed.lengths[0] <= 200
    (tmp_path / "data" / "red.png").write_bytes(b"not an image")  # samples c0, c4, c8 go bad
    items_ = [packed[r] for r in range(len(packed))]
    skipped = {rec[0] for row_items in items_ for item in row_items for rec in item["skipped"]}
    assert skipped == {"c0", "c4", "c8"}
    for row_items in items_:
        kept = [it for it in row_items if "input_ids" in it]
        assert sum(len(it["input_ids"]) for it in kept) <= 200  # a replacement always fits its row
        assert not {it["id"] for it in kept} & {"c0", "c4", "c8"}


# ---- through train.py ----

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("packing_runs"))


PACKED = ("--packing", "--max_length", "300", "--per_device_train_batch_size", "2", "--llm_mode", "full")


def test_a_packed_run_learns_logs_throughput_and_resumes_exactly(setup, tmp_path, capsys):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train.main(argv(setup, straight, *PACKED, "--save_steps", "3", steps=6)) == 0
    err = capsys.readouterr().err
    assert "packing: 32 samples" in err and "rows of at most 300 tokens" in err
    history = json.loads((straight / "trainer_state.json").read_text())["log_history"]
    logged = [h for h in history if "loss" in h]
    assert len(logged) == 6
    for h in logged:  # every log line: samples/s, tokens/s (real tokens) and the padding between rows
        assert 0 <= h["padding_fraction"] < 0.2, h
        assert 80 < h["tokens_per_second"] / h["samples_per_second"] < 100, h  # these samples have 88-94 tokens
    assert losses(straight)[-1] < losses(straight)[0]
    # killed right after saving checkpoint-3: the same command resumes and ends with the same losses
    with pytest.raises(KeyboardInterrupt):
        train.main(argv(setup, resumed, *PACKED, "--save_steps", "3", steps=6), callbacks=[CrashAfterSave(3)])
    assert train.main(argv(setup, resumed, *PACKED, "--save_steps", "3", steps=6)) == 0
    diff = max_loss_diff(straight, resumed)
    print(f"packed run killed at step 3 and resumed: max |loss diff| over 6 steps = {diff}")
    assert diff == 0


def test_zero2_with_packing_equals_the_plain_packed_run(setup, tmp_path):
    plain, zero = tmp_path / "plain", tmp_path / "zero2"
    common = ("--packing", "--max_length", "300", "--llm_mode", "full", "--save_strategy", "no")
    assert train.main(argv(setup, plain, *common, "--per_device_train_batch_size", "2", steps=4)) == 0
    result = torchrun(2, argv(setup, zero, *common, "--per_device_train_batch_size", "1", "--use_cpu", "true",
                              "--deepspeed", "configs/zero2.json", steps=4))
    assert result.returncode == 0, result.stderr[-3000:]
    diff = max_loss_diff(plain, zero)
    print(f"ZeRO-2 (2 processes x 1 row) vs plain (1 x 2 rows), packed: max |loss diff| = {diff:.2g}")
    assert diff < 1e-4
