"""The VLM: projector, image-token merge, trainable parts, LoRA, checkpoints, export, generation."""

import json
import threading

import pytest
import torch
from PIL import Image
from tiny import save_tiny_clip, save_tiny_qwen, save_tiny_qwen2, save_tiny_siglip
from transformers import AutoProcessor, LlavaForConditionalGeneration, TextIteratorStreamer

from common import atomic_file
from model import IMAGE_MARKER, VisionLanguageModel, VLMConfig, build_projector, load_checkpoint, save_checkpoint
from model.checkpoint import load_trainable_weights
from model.export import export
from model.export import main as export_main


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    torch.manual_seed(0)
    return {
        "qwen": save_tiny_qwen(root / "qwen"),
        "qwen_wide": save_tiny_qwen(root / "qwen_wide", hidden_size=96, kv_channels=24),
        "qwen2": save_tiny_qwen2(root / "qwen2"),
        "qwen2_tied": save_tiny_qwen2(root / "qwen2_tied", tie_word_embeddings=True),
        "clip": save_tiny_clip(root / "clip"),
        "siglip": save_tiny_siglip(root / "siglip"),
    }


def make_vlm(bases, llm="qwen", vision="clip", perturb_lora=True, **overrides):
    kwargs = dict(llm=bases[llm], vision=bases[vision], lora_rank=4,
                  target_modules="c_attn|w1|w2" if llm.startswith("qwen") and llm != "qwen2" else "all-linear")
    kwargs.update(overrides)
    torch.manual_seed(1)
    model = VisionLanguageModel.build(VLMConfig(**kwargs)).apply_trainable_modes()
    if perturb_lora:  # peft starts B at zero; make the adapter matter so save/merge tests can fail
        with torch.no_grad():
            for name, p in model.llm.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
    return model.eval()


def image(seed):
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (40, 40, 3), generator=g, dtype=torch.uint8).numpy())


def mixed_samples(model):
    """Three prompts with 0, 1 and 2 images, and their images."""
    texts = [
        model.processor.render([{"role": "user", "content": "no image here, just text"}]),
        model.processor.render([{"role": "user", "content": f"{IMAGE_MARKER}what colour?"}]),
        model.processor.render([{"role": "user", "content": f"compare {IMAGE_MARKER} and {IMAGE_MARKER}"}]),
    ]
    return texts, [[], [image(1)], [image(2), image(3)]]


def mixed_batch(model, padding_side="right"):
    return model.processor(*mixed_samples(model), padding_side=padding_side)


def logits(model, batch):
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"]).logits


def test_projectors():
    mlp = build_projector("mlp2x_gelu", 32, 64)
    assert [k for k in mlp.state_dict()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert isinstance(mlp[1], torch.nn.GELU) and mlp(torch.zeros(2, 5, 32)).shape == (2, 5, 64)
    assert build_projector("linear", 32, 64)(torch.zeros(1, 3, 32)).shape == (1, 3, 64)
    with pytest.raises(ValueError, match="unknown projector 'mlp2x'"):
        build_projector("mlp2x", 32, 64)


def test_image_token_count_mismatch_names_both_numbers(bases):
    model = make_vlm(bases)
    batch = mixed_batch(model)
    with pytest.raises(ValueError, match=r"48 image tokens but 32 image features \(2 images x 16\)"):
        model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"][:2])
    with pytest.raises(ValueError, match="text 0 has 1 image tokens but 0 images"):
        model.processor([f"{IMAGE_MARKER} hi"], [[]])


@pytest.mark.parametrize("llm", ["qwen", "qwen2"])
def test_batch_mixing_0_1_and_2_images(bases, llm):
    model = make_vlm(bases, llm=llm)
    batch = mixed_batch(model)
    ids = batch["input_ids"]
    assert (ids == model.image_token_id).sum(1).tolist() == [0, 16, 32]
    embeds = model.embed(ids, batch["pixel_values"])
    features = model.image_features(batch["pixel_values"])  # (3 images x 16, C), in order of appearance
    assert torch.equal(embeds[1][ids[1] == model.image_token_id], features[:16])
    assert torch.equal(embeds[2][ids[2] == model.image_token_id], features[16:])
    text_only = embeds[0][batch["attention_mask"][0].bool()]
    assert torch.equal(text_only, model.llm.get_input_embeddings()(ids[0][batch["attention_mask"][0].bool()]))
    # each sample in the batch equals itself run alone
    out = logits(model, batch)
    for i, (text, imgs) in enumerate(zip(*mixed_samples(model), strict=True)):
        n = int(batch["attention_mask"][i].sum())
        alone = model.processor([text], [imgs])
        assert torch.allclose(out[i, :n], logits(model, alone)[0], atol=1e-5)


def test_image_token_added_for_llms_without_it(bases):
    a, b = make_vlm(bases, llm="qwen2"), make_vlm(bases, llm="qwen2")
    assert a.config.image_token == "<image>" and a.image_token_id == len(a.tokenizer) - 1
    assert torch.equal(a.llm.get_output_embeddings().weight, b.llm.get_output_embeddings().weight)
    assert make_vlm(bases).config.image_token == IMAGE_MARKER


def test_frozen_parts_unchanged_after_an_optimizer_step(bases):
    model = make_vlm(bases).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    batch = mixed_batch(model)
    model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], labels=batch["input_ids"]).loss.backward()
    optimizer.step()
    for name, p in model.named_parameters():
        changed = not torch.equal(before[name], p)
        learns = name.startswith("projector.") or "lora_" in name
        assert changed == learns, name
        assert (p.grad is not None) == learns, name
    assert len(optimizer.state) == len(trainable)


def test_lora_only_in_target_modules(bases):
    model = make_vlm(bases, target_modules="c_attn|w1|w2")
    lora = [n for n, p in model.named_parameters() if "lora_" in n]
    assert lora and all(any(f".{t}.lora_" in n for t in ("c_attn", "w1", "w2")) for n in lora)
    assert all(p.requires_grad == ("lora_" in n) for n, p in model.llm.named_parameters())
    assert model.config.lora_alpha == 8  # default 2 x rank
    with pytest.raises(ValueError, match="match no module"):
        make_vlm(bases, target_modules="q_proj|v_proj")


@pytest.mark.parametrize("modes", [dict(llm_mode="lora"), dict(llm_mode="full", vision_mode="full"),
                                   dict(llm_mode="frozen", projector_mode="train")])
def test_save_and_load_give_identical_logits(bases, tmp_path, modes):
    model = make_vlm(bases, **modes)
    if modes["llm_mode"] == "full":
        with torch.no_grad():
            model.llm.get_input_embeddings().weight.add_(0.01)  # a change only a full save keeps
    batch = mixed_batch(model)
    save_checkpoint(model, str(tmp_path / "ckpt"))
    reloaded = load_checkpoint(str(tmp_path / "ckpt"))
    assert torch.equal(logits(reloaded, batch), logits(model, batch))
    assert reloaded.config.num_image_tokens == 16 and reloaded.config.llm_mode == modes["llm_mode"]


def test_full_llm_with_tied_embeddings_resumes(bases, tmp_path):
    """save_pretrained writes a tied lm_head once; restoring the weights must accept that and keep the tie."""
    model = make_vlm(bases, llm="qwen2_tied", llm_mode="full")
    with torch.no_grad():
        model.llm.get_input_embeddings().weight.add_(0.01)
    save_checkpoint(model, str(tmp_path / "ckpt"))
    fresh = make_vlm(bases, llm="qwen2_tied", llm_mode="full")
    batch = mixed_batch(model)
    assert not torch.equal(logits(fresh, batch), logits(model, batch))
    load_trainable_weights(fresh, str(tmp_path / "ckpt"))
    assert torch.equal(logits(fresh, batch), logits(model, batch))
    assert fresh.llm.get_output_embeddings().weight is fresh.llm.get_input_embeddings().weight


def test_merged_lora_equals_unmerged(bases, tmp_path):
    model = make_vlm(bases)
    batch = mixed_batch(model)
    save_checkpoint(model, str(tmp_path / "ckpt"))
    assert export_main([str(tmp_path / "ckpt"), str(tmp_path / "merged")]) == 0
    merged = load_checkpoint(str(tmp_path / "merged"))
    assert merged.config.llm_mode == "full" and not hasattr(merged.llm, "peft_config")
    assert (logits(merged, batch) - logits(model, batch)).abs().max() < 1e-5


def test_llava_parity_through_the_export(bases, tmp_path):
    """Our VLM and transformers' LlavaForConditionalGeneration, same weights, padded batch: same logits."""
    model = make_vlm(bases, llm="qwen2", vision="clip", llm_mode="frozen")
    with torch.no_grad():
        for p in model.projector.parameters():
            p.normal_(0, 0.2)
    save_checkpoint(model, str(tmp_path / "ckpt"))
    export(str(tmp_path / "ckpt"), str(tmp_path / "llava"), fmt="llava")
    llava = LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava").eval()
    assert llava.config.vision_feature_layer == -2 and llava.config.vision_feature_select_strategy == "default"
    texts = [model.processor.render([{"role": "user", "content": f"{IMAGE_MARKER}what is it?"}]),
             model.processor.render([{"role": "user", "content": f"{IMAGE_MARKER}a much longer question, padded"}])]
    batch = model.processor(texts, [[image(1)], [image(2)]], padding_side="right")
    assert not batch["attention_mask"].all()
    with torch.no_grad():
        theirs = llava(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       pixel_values=batch["pixel_values"]).logits
    diff = (theirs - logits(model, batch)).abs().max().item()
    print(f"max |logit diff| vs transformers Llava: {diff:.3g}")
    assert diff < 1e-5
    # the saved LlavaProcessor expands <image> exactly as ours does
    processor = AutoProcessor.from_pretrained(tmp_path / "llava")
    prompt = texts[0].replace(IMAGE_MARKER, "<image>")
    ours = model.processor([texts[0]], [[image(1)]])
    assert processor(text=[prompt], images=[image(1)], return_tensors="pt")["input_ids"].tolist() == (
        ours["input_ids"].tolist())


def test_original_project_layout_loads(bases, tmp_path):
    """adapter_model.bin + adapter_config.json + other_params.bin, SigLIP last_hidden_state minus token 0."""
    from peft import get_peft_model_state_dict

    model = make_vlm(bases, vision="siglip", select_layer=-1, select_feature="all_but_first", post_layernorm=True,
                     target_modules="c_attn|w1|w2", lora_rank=4, lora_alpha=32)
    with torch.no_grad():
        for p in model.projector.parameters():
            p.normal_(0, 0.2)
    folder = tmp_path / "SIGLIP_Qwen_epoch19000"
    folder.mkdir()
    torch.save(get_peft_model_state_dict(model.llm), folder / "adapter_model.bin")
    adapter = model.llm.peft_config["default"].to_dict()
    adapter["target_modules"] = ["c_attn", "w1", "w2"]
    adapter["base_model_name_or_path"] = "/home/someone/Qwen-7B-Chat"
    (folder / "adapter_config.json").write_text(json.dumps(adapter, default=str))
    torch.save(model.projector.state_dict(), folder / "other_params.bin")

    loaded = load_checkpoint(str(folder), llm=bases["qwen"], vision=bases["siglip"])
    assert loaded.config.num_image_tokens == 15 and loaded.config.system_prompt == "你是一位图像理解助手。"
    assert loaded.config.llm == "Qwen/Qwen-7B-Chat"
    batch = mixed_batch(model)
    assert torch.equal(logits(loaded, batch), logits(model, batch))


def test_loading_onto_another_base_fails_with_one_sentence(bases, tmp_path):
    save_checkpoint(make_vlm(bases), str(tmp_path / "ckpt"))
    with pytest.raises(ValueError, match=r"trained on .*qwen \(hidden size 64\), but the base LLM .*qwen_wide has "
                                         r"hidden size 96"):
        load_checkpoint(str(tmp_path / "ckpt"), llm=bases["qwen_wide"])
    with pytest.raises(ValueError, match="gives 16 features of size 32"):
        save_checkpoint(make_vlm(bases, select_feature="cls_patch"), str(tmp_path / "cls"))
        load_checkpoint(str(tmp_path / "cls"), vision=bases["siglip"])


def test_missing_or_incomplete_checkpoint(bases, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint folder not found"):
        load_checkpoint(str(tmp_path / "nope"))
    save_checkpoint(make_vlm(bases), str(tmp_path / "ckpt"))
    (tmp_path / "ckpt" / "projector.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="projector.safetensors is missing"):
        load_checkpoint(str(tmp_path / "ckpt"))


def test_save_is_atomic(bases, tmp_path, monkeypatch):
    model = make_vlm(bases)
    save_checkpoint(model, str(tmp_path / "ckpt"))
    good = (tmp_path / "ckpt" / "projector.safetensors").read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("model.checkpoint.save_file", disk_full)
    with pytest.raises(OSError):
        save_checkpoint(model, str(tmp_path / "ckpt"))
    assert (tmp_path / "ckpt" / "projector.safetensors").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_atomic_file_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "grid.png"
    with atomic_file(str(target)) as tmp:
        assert tmp.endswith(".png")  # PIL and matplotlib pick the format from it
        Image.new("RGB", (4, 4), "red").save(tmp)
    good = target.read_bytes()
    with pytest.raises(OSError), atomic_file(str(target)) as tmp:
        Image.new("RGB", (4, 4), "blue").save(tmp)
        raise OSError(28, "No space left on device")
    assert target.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_gradient_checkpointing_with_lora(bases):
    model = make_vlm(bases, lora_dropout=0.0).train()  # dropout would draw different masks per run
    batch = mixed_batch(model)

    def lora_grads():
        model.zero_grad()
        model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
              labels=batch["input_ids"]).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = lora_grads()
    model.gradient_checkpointing_enable()
    checkpointed = lora_grads()
    assert plain.keys() == checkpointed.keys() and any("lora_A" in n for n in plain)
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6), name


def greedy_by_hand(model, batch, steps):
    """Token by token, no cache, full recompute: the reference for generate."""
    ids, mask, out = batch["input_ids"], batch["attention_mask"], []
    for _ in range(steps):
        with torch.no_grad():
            embeds = model.embed(ids, batch["pixel_values"])
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            out_logits = model.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
            nxt = int(out_logits[0, -1].argmax())
        out.append(nxt)
        if nxt in model.stop_token_ids:
            break
        ids, mask = torch.cat([ids, torch.tensor([[nxt]])], 1), torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], 1)
    return out


@pytest.mark.parametrize("llm", ["qwen", "qwen2"])
def test_generate_keeps_the_last_token_and_stops_at_end_of_turn(bases, llm):
    model = make_vlm(bases, llm=llm)
    if llm == "qwen":
        assert model.stop_token_ids == [model.tokenizer.convert_tokens_to_ids("<|im_end|>"),
                                        model.tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    prompt = model.processor.render([{"role": "user", "content": f"{IMAGE_MARKER}what?"}], add_generation_prompt=True)
    batch = model.processor([prompt], [[image(5)]])
    new = model.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], max_new_tokens=12)
    assert new[0].tolist() == greedy_by_hand(model, batch, 12)[: new.shape[1]]
    assert new.shape[1] == len(greedy_by_hand(model, batch, 12))  # nothing cut off at the end


def test_streamed_answer_equals_non_streamed(bases):
    model = make_vlm(bases)
    with torch.no_grad():  # a random model: keep it off special and padding ids so the answer has text
        model.llm.get_output_embeddings().weight[256:] = 0
    conversation = [[{"role": "user", "content": f"{IMAGE_MARKER}describe"}]]
    plain = model.answer(conversation, [[image(7)]], max_new_tokens=10)[0]
    streamer = TextIteratorStreamer(model.tokenizer, skip_prompt=True, skip_special_tokens=True)
    thread = threading.Thread(target=model.answer, args=(conversation, [[image(7)]]),
                              kwargs=dict(max_new_tokens=10, streamer=streamer))
    thread.start()
    streamed = "".join(streamer)
    thread.join()
    assert streamed.strip() == plain and plain


@pytest.mark.parametrize("llm", ["qwen", "qwen2"])
def test_batched_generation_equals_one_by_one(bases, llm):
    model = make_vlm(bases, llm=llm)
    conversations = [[{"role": "user", "content": f"{IMAGE_MARKER}short"}],
                     [{"role": "user", "content": f"a much longer question about {IMAGE_MARKER} this picture"}],
                     [{"role": "user", "content": "text only"}]]
    images = [[image(1)], [image(2)], []]
    batched = model.answer(conversations, images, max_new_tokens=8)
    alone = [model.answer([c], [i], max_new_tokens=8)[0] for c, i in zip(conversations, images, strict=True)]
    assert batched == alone


def test_sampling_and_beam_search_run(bases):
    model = make_vlm(bases)
    conversation, images = [[{"role": "user", "content": f"{IMAGE_MARKER}?"}]], [[image(3)]]
    torch.manual_seed(0)
    a = model.answer(conversation, images, max_new_tokens=6, do_sample=True, temperature=0.8, top_p=0.9)
    torch.manual_seed(0)
    assert model.answer(conversation, images, max_new_tokens=6, do_sample=True, temperature=0.8, top_p=0.9) == a
    assert len(model.answer(conversation, images, max_new_tokens=6, num_beams=3)) == 1
