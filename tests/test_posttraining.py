"""DPO and GRPO through train.py on the tiny models: the reference model, label masking, rollouts, learning, resume,
DDP, checkpoints that load as SFT ones, and bad input."""

import json
import os
from dataclasses import replace

import pytest
import torch
from runs import argv, losses, tiny_setup, torchrun
from tiny import COLORS
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

import train
from dataset.preference import PreferenceCollator, PreferenceDataset
from dataset.prompts import PromptCollator, PromptDataset
from model import load_checkpoint
from model.checkpoint import load_starting_point
from training.dpo import REFERENCE_FILE, answer_log_probs
from training.posttraining import disable_dropout, only_lora_trains
from training.rollouts import completion_mask, sample_completions

NAMES = list(COLORS)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("posttrain")
    s = tiny_setup(root)
    samples = json.load(open(s["captions"]))
    for sample in samples:  # the next colour as the rejected answer
        gold = sample["conversations"][-1]["content"]
        sample["conversations"][-1]["rejected"] = NAMES[(NAMES.index(gold) + 1) % len(NAMES)]
    s["pairs"] = str(root / "data" / "pairs.json")
    json.dump(samples, open(s["pairs"], "w"))
    # SFT checkpoints: a LoRA one, and a full one stopped early (it answers a few colours right: rewards to raise)
    s["sft_lora"], s["sft_full"] = str(root / "sft_lora"), str(root / "sft_full")
    assert train.main(argv(s, s["sft_lora"], steps=12)) == 0
    assert train.main(argv(s, s["sft_full"], "--llm_mode", "full", "--learning_rate", "1e-2", steps=40)) == 0
    return s


def post_argv(setup, out, objective, init, *extra, steps=8, data=None):
    base = argv(setup, out, steps=steps)
    base = base[base.index("--image_map"):]
    if data:
        base[base.index(setup["captions"])] = data
    return ["--init_from", init, "--objective", objective, *base, *extra]


def batch_inputs(batch):
    return {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "pixel_values", "image_sizes")}


def test_reference_is_the_sft_model_and_only_answers_are_labelled(setup):
    sft = load_checkpoint(setup["sft_lora"])
    start = load_starting_point(setup["sft_lora"], replace(sft.config, lora_rank=4, projector_mode="frozen"))
    assert only_lora_trains(start)  # so DPO takes its reference from the adapter switched off
    for model in (sft, start):
        disable_dropout(model)
        model.train()
    dataset = PreferenceDataset(setup["image_map"], setup["pairs"], start.processor, 512)
    items = [dataset[i] for i in range(6)]
    batch = PreferenceCollator(0)(items)
    with torch.no_grad():
        ours = answer_log_probs(sft, batch_inputs(batch))[0]
        with start.llm.disable_adapter():
            reference = answer_log_probs(start, batch_inputs(batch))[0]
        policy = answer_log_probs(start, batch_inputs(batch))[0]  # a new adapter starts at zero: the same model
    assert torch.allclose(reference, ours, atol=1e-5) and torch.allclose(policy, ours, atol=1e-5)
    # chosen rows first, then rejected; labels on the answer and its end-of-turn token only
    tokenizer, end = start.tokenizer, start.processor.end_of_turn_id
    for labels in batch["labels"]:
        answer = labels[labels != -100].tolist()
        assert answer[-1] == end and tokenizer.decode(answer[:-1]).strip() in NAMES
    chosen = [tokenizer.decode([t for t in batch["labels"][r].tolist() if t not in (-100, end)]).strip()
              for r in range(12)]
    assert all(NAMES[(NAMES.index(c) + 1) % 4] == r for c, r in zip(chosen[:6], chosen[6:], strict=True))
    for r in range(6):  # a pair's two rows share their prompt, up to the first labelled token
        first = [int((batch["labels"][row] != -100).nonzero()[0]) for row in (r, r + 6)]
        assert first[0] == first[1] and torch.equal(batch["input_ids"][r][:first[0]],
                                                    batch["input_ids"][r + 6][:first[0]])


def test_rollouts_greedy_limit_seeds_and_stop_masks(setup):
    model = load_checkpoint(setup["sft_full"])
    dataset = PromptDataset(setup["image_map"], setup["captions"], model.processor, 512)
    batch = PromptCollator(0, 3)([dataset[i] for i in range(4)])
    assert batch["input_ids"].shape[0] == 12 and batch["solutions"][:3] == [dataset[0]["solution"]] * 3
    greedy = model.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], max_new_tokens=6)
    cold, _ = sample_completions(model, batch, 6, temperature=1e-6)
    assert torch.equal(cold, greedy)  # temperature -> 0 is greedy decoding
    torch.manual_seed(3)
    a, mask = sample_completions(model, batch, 6, temperature=1.5)
    torch.manual_seed(3)
    b, _ = sample_completions(model, batch, 6, temperature=1.5)
    assert torch.equal(a, b)  # seeded rollouts are reproducible
    assert not torch.equal(a[0::3], a[1::3]) or not torch.equal(a[1::3], a[2::3])  # a group's draws differ
    stops = model.stop_token_ids
    for ids, m in zip(a, mask, strict=True):
        kept = ids[m.bool()].tolist()
        assert all(t not in stops for t in kept[:-1])  # nothing after the first stop token counts
        assert len(kept) == len(ids) or kept[-1] in stops
    assert completion_mask(torch.tensor([[5, 9, 1, 9, 2]]), [9]).tolist() == [[1, 1, 0, 0, 0]]


def test_dpo_raises_preference_accuracy_and_its_checkpoints_load(setup, tmp_path):
    for mode, init in (("lora", setup["sft_lora"]), ("full", setup["sft_full"])):
        out = tmp_path / mode
        extra = ("--llm_mode", mode, "--learning_rate", "1e-2" if mode == "lora" else "1e-3",
                 *(("--projector_mode", "frozen") if mode == "lora" else ()))
        assert train.main(post_argv(setup, str(out), "dpo", init, *extra, steps=12, data=setup["pairs"])) == 0
        history = json.load(open(out / "trainer_state.json"))["log_history"]
        logged = [h for h in history if "rewards/accuracies" in h]
        assert logged[0]["rewards/margins"] == pytest.approx(0, abs=1e-6)  # step 1: the policy is the reference
        assert sum(h["rewards/margins"] for h in logged[-3:]) / 3 > 0.05, [h["rewards/margins"] for h in logged]
        assert sum(h["rewards/accuracies"] for h in logged[-3:]) / 3 >= 0.9
        assert (out / REFERENCE_FILE).exists() == (mode == "full")  # LoRA: the adapter switched off instead
        model = load_checkpoint(str(out))  # test.py's and eval.py's loading path
        config = json.load(open(out / "vlm_config.json"))
        assert (config["init_from"] is not None) == (mode == "lora")  # a LoRA on the merged SFT LoRA names it
        answers = model.answer([[{"role": "user", "content": "<|extra_0|>What colour?"}]],
                               [[__import__("PIL.Image").Image.open(setup["root"] / "data" / "red.png")]],
                               max_new_tokens=4)
        assert isinstance(answers[0], str)


def test_grpo_raises_the_reward(setup, tmp_path):
    out = tmp_path / "grpo"
    assert train.main(post_argv(setup, str(out), "grpo", setup["sft_full"], "--llm_mode", "full",
                                "--num_generations", "8", "--max_completion_length", "8", "--learning_rate", "5e-4",
                                "--per_device_train_batch_size", "8", steps=40)) == 0
    history = json.load(open(out / "trainer_state.json"))["log_history"]
    rewards = [h["reward"] for h in history if "reward" in h]
    print(f"GRPO mean reward per step: {[round(r, 2) for r in rewards]}")
    first, last = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    assert last > 2 * first and last > first + 0.04, (first, last)
    assert {"rewards/exact_match/mean", "rewards/exact_match/std", "completions/mean_length",
            "completions/clipped_ratio", "clip_ratio/region_mean", "frac_reward_zero_std"} <= set(history[0])
    load_checkpoint(str(out))


def test_grpo_with_kl_several_iterations_and_a_resume_that_continues_exactly(setup, tmp_path):
    from test_training import CrashAfterSave

    extra = ("--llm_mode", "lora", "--projector_mode", "frozen", "--num_generations", "4", "--max_completion_length",
             "4", "--beta", "0.04", "--num_iterations", "2", "--loss_type", "dapo", "--save_steps", "2")
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    assert train.main(post_argv(setup, str(straight), "grpo", setup["sft_lora"], *extra, steps=4)) == 0
    with pytest.raises(KeyboardInterrupt):
        train.main(post_argv(setup, str(crashed), "grpo", setup["sft_lora"], *extra, steps=4),
                   callbacks=[CrashAfterSave(2)])
    assert train.main(post_argv(setup, str(crashed), "grpo", setup["sft_lora"], *extra, steps=4)) == 0
    a, b = losses(straight), losses(crashed)
    assert len(a) == len(b) == 4 and max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-6, (a, b)
    history = json.load(open(straight / "trainer_state.json"))["log_history"]
    assert all("kl" in h for h in history if "loss" in h)


@pytest.mark.parametrize("launcher", [["--ddp_backend", "gloo"], ["--deepspeed", "configs/zero2.json"]],
                         ids=["ddp", "zero2"])
def test_dpo_on_two_processes_equals_one(setup, tmp_path, launcher):
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    result = torchrun(2, post_argv(setup, str(ddp), "dpo", setup["sft_full"], "--llm_mode", "full", *launcher,
                                   "--use_cpu", "true", "--per_device_train_batch_size", "2", steps=4,
                                   data=setup["pairs"]))
    assert result.returncode == 0, result.stderr[-3000:]
    assert train.main(post_argv(setup, str(single), "dpo", setup["sft_full"], "--llm_mode", "full", steps=4,
                                data=setup["pairs"])) == 0
    a, b = losses(ddp), losses(single)
    print(f"DPO, 2 processes ({launcher[-1]}) vs 1: losses {a} vs {b}")
    assert len(a) == 4 and max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4


def test_bad_input_one_sentence_exit_2_nothing_written(setup, tmp_path, capsys):
    out = tmp_path / "bad"
    samples = json.load(open(setup["pairs"]))
    same = [dict(s) for s in samples]
    same[3] = {**same[3], "conversations": [same[3]["conversations"][0], {**same[3]["conversations"][1],
                                                                        "rejected": same[3]["conversations"][1][
                                                                            "content"]}]}
    json.dump(same, open(tmp_path / "same.json", "w"))
    no_gold = json.load(open(setup["captions"]))
    no_gold[5]["conversations"] = no_gold[5]["conversations"][:1]
    json.dump(no_gold, open(tmp_path / "no_gold.json", "w"))
    cases = [
        (post_argv(setup, str(out), "grpo", setup["sft_lora"], "--reward_funcs", "exact,format"),
         "unknown reward function 'exact'"),
        (post_argv(setup, str(out), "grpo", setup["sft_lora"], data=str(tmp_path / "no_gold.json")),
         "sample c5 in"),
        (post_argv(setup, str(out), "dpo", setup["sft_lora"], data=str(tmp_path / "same.json")),
         "its chosen and rejected answers are the same"),
        (post_argv(setup, str(out), "dpo", setup["sft_lora"], data=setup["captions"]), "is not a preference pair"),
        (post_argv(setup, str(out), "dpo", setup["sft_lora"], "--loss_type", "dapo", data=setup["pairs"]),
         "--loss_type for --objective dpo"),
        (post_argv(setup, str(out), "grpo", setup["sft_lora"], "--num_generations", "1"), "--num_generations"),
        (post_argv(setup, str(out), "dpo", str(tmp_path / "nowhere"), data=setup["pairs"]),
         "checkpoint folder not found"),
        (post_argv(setup, str(out), "ppo", setup["sft_lora"]), "--objective must be one of"),
        (post_argv(setup, str(out), "dpo", setup["sft_lora"], "--deepspeed", "configs/zero3.json", "--use_cpu", "true",
                   data=setup["pairs"]), "runs under DDP or DeepSpeed ZeRO-2, not ZeRO-3 or FSDP"),
    ]
    for args, says in cases:
        try:
            assert train.main(args) == 2, says
        finally:
            unset_hf_deepspeed_config()  # the ZeRO-3 case's global setting must not outlive it
        err = capsys.readouterr().err.strip().splitlines()
        assert says in err[-1], (says, err[-3:])
        assert not out.exists() or not any(p.name.startswith("checkpoint") for p in out.iterdir())
    assert json.load(open(setup["pairs"])) == samples  # the input is untouched
    assert os.path.isdir(setup["sft_lora"]) and os.listdir(setup["sft_lora"])


def test_demo_posttraining_stage_runs(tmp_path):
    """The demo's opt-in stage end to end at smoke size: GRPO and DPO from the SFT checkpoint, each scored before and
    after by eval.py, the reward curve drawn, and the post-trained checkpoints load as any other."""
    import subprocess
    import sys

    from runs import env

    data, out = tmp_path / "data", tmp_path / "weights"
    result = subprocess.run([sys.executable, "-m", "demo.run", "--quick", "--posttrain", "--grpo_steps", "6",
                             "--dpo_steps", "3", "--data_dir", str(data), "--output_dir", str(out), "--workers", "0"],
                            env=env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])["posttrain"]
    assert figures["grpo"]["steps"] == 6 and len(figures["grpo"]["rewards"]) >= 1
    assert figures["dpo"]["preference_accuracy"][0] >= 0
    for stage in ("grpo", "dpo"):
        assert 0 <= figures[stage]["before"]["exact_match"] <= 1 and 0 <= figures[stage]["after"]["exact_match"] <= 1
        load_checkpoint(str(out) + f"_{stage}")
    assert (tmp_path / "weights_grpo" / "reward.png").read_bytes()[:4] == b"\x89PNG"
    assert "after GRPO (6 steps" in result.stdout and "DPO (3 steps" in result.stdout
