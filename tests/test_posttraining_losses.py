"""DPO's and GRPO's losses held to TRL's (trl 1.16: DPOTrainer._compute_loss, GRPOTrainer._compute_loss, called on a
stand-in trainer whose model returns the log-probs we give it), the group-normalised advantages, and the rewards."""

import math
import types
from collections import defaultdict

import pytest
import torch
from trl.trainer.dpo_trainer import DPOTrainer as TRLDPOTrainer
from trl.trainer.grpo_trainer import GRPOTrainer as TRLGRPOTrainer
from trl.trainer.utils import nanstd as trl_nanstd

from training.dpo import DPO_LOSSES, dpo_loss
from training.grpo import GRPO_LOSSES, group_advantages, grpo_loss
from training.rewards import REWARDS, resolve

TOL = 1e-6


class Accelerator:
    device = torch.device("cpu")
    num_processes = 1
    sync_gradients = True

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x

    def unwrap_model(self, model):
        return model


def pairs_batch(P=5, T=9, seed=0):
    """P pairs (2P rows, chosen first): per-token log-probs at the answer positions, 0 elsewhere."""
    g = torch.Generator().manual_seed(seed)
    completion_mask = torch.zeros(2 * P, T, dtype=torch.long)
    for row in range(2 * P):
        start = int(torch.randint(2, 5, (1,), generator=g))
        end = int(torch.randint(start + 1, T + 1, (1,), generator=g))
        completion_mask[row, start:end] = 1
    per_token = -torch.rand(2 * P, T - 1, generator=g, dtype=torch.float64) * 3 * completion_mask[:, 1:]
    ref = -torch.rand(2 * P, generator=g, dtype=torch.float64) * 10
    return completion_mask, per_token, ref


@pytest.mark.parametrize("loss_type,label_smoothing", [(t, 0.0) for t in DPO_LOSSES] + [("robust", 0.1),
                                                                                       ("robust", 0.3)])
def test_dpo_loss_and_rewards_equal_trl(loss_type, label_smoothing):
    completion_mask, per_token, ref = pairs_batch()
    beta = 0.1 if loss_type != "ipo" else 0.5
    outputs = types.SimpleNamespace(log_probs=per_token, entropy=torch.zeros_like(per_token),
                                    mean_logits=torch.zeros_like(per_token),
                                    is_top1=torch.zeros_like(per_token, dtype=torch.bool))
    model = types.SimpleNamespace(training=True)
    fake_model = lambda **kwargs: outputs  # noqa: E731  (TRL's fused head: log-probs of the labelled tokens)
    stand_in = types.SimpleNamespace(
        model=model, accelerator=Accelerator(), aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0], beta=beta,
        label_smoothing=label_smoothing, use_weighting=False, _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0, _tp_size=1)
    ref_chosen, ref_rejected = ref.chunk(2)
    inputs = {"input_ids": torch.zeros_like(completion_mask), "attention_mask": torch.ones_like(completion_mask),
              "completion_mask": completion_mask, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    theirs = TRLDPOTrainer._compute_loss(stand_in, fake_model, inputs, False)

    logps = per_token.sum(1)
    tokens = completion_mask.sum(1)
    chosen, rejected = logps.chunk(2)
    losses, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta, loss_type,
                                                        label_smoothing, *tokens.chunk(2))
    assert abs(float(losses.mean()) - float(theirs)) <= TOL
    metrics = stand_in._metrics["train"]
    ours = {"rewards/chosen": chosen_rewards.mean(), "rewards/rejected": rejected_rewards.mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).double().mean()}
    for name, value in ours.items():
        assert abs(float(value) - metrics[name][0]) <= TOL, name
    assert 0 < metrics["rewards/accuracies"][0] < 1  # the draw holds pairs both ways: the comparison is exercised


def grpo_batch(R=8, L=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(R, L, dtype=torch.long)
    for row in range(R):  # completions that stop early: masked after their stop token
        mask[row, int(torch.randint(1, L + 1, (1,), generator=g)):] = 0
    logps = -torch.rand(R, L, generator=g, dtype=torch.float64) * 2
    old = logps + (torch.rand(R, L, generator=g, dtype=torch.float64) - 0.5) * 0.8  # ratios beyond the clip range
    ref = logps + (torch.rand(R, L, generator=g, dtype=torch.float64) - 0.5) * 0.5
    advantages = torch.randn(R, generator=g, dtype=torch.float64)
    return logps, old, ref, advantages, mask


@pytest.mark.parametrize("loss_type", GRPO_LOSSES)
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_equals_trl(loss_type, beta):
    logps, old, ref, advantages, mask = grpo_batch()
    eps_low, eps_high, max_len = 0.2, 0.28, 7
    metrics = defaultdict(lambda: defaultdict(list))
    stand_in = types.SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token", beta=beta,
        args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high, use_vllm=False,
        model=types.SimpleNamespace(training=True), current_gradient_accumulation_steps=1,
        max_completion_length=max_len, accelerator=Accelerator(), _entropy_bonus_enabled=False,
        aux_loss_enabled=False, _metrics=metrics)
    inputs = {"prompt_ids": torch.zeros(8, 3, dtype=torch.long), "prompt_mask": torch.ones(8, 3, dtype=torch.long),
              "completion_ids": torch.zeros_like(mask), "completion_mask": mask, "advantages": advantages,
              "old_per_token_logps": old, "ref_per_token_logps": ref, "num_items_in_batch": mask.sum()}
    theirs = TRLGRPOTrainer._compute_loss(stand_in, None, inputs)
    ours, ratio, kl = grpo_loss(logps, old, advantages, mask, loss_type, eps_low, eps_high, beta, ref, max_len,
                                float(mask.sum()))
    assert abs(float(ours) - float(theirs)) <= TOL
    region = ((ratio < 1 - eps_low) & (advantages[:, None] < 0)) | ((ratio > 1 + eps_high) & (advantages[:, None] > 0))
    keep = mask.bool()
    assert abs(float(region[keep].double().mean()) - metrics["train"]["clip_ratio/region_mean"][0]) <= TOL
    assert metrics["train"]["clip_ratio/region_mean"][0] > 0  # the clip is exercised
    if beta:
        assert abs(float(kl[keep].mean()) - metrics["train"]["kl"][0]) <= TOL


def test_group_advantages_equal_trls_formula():
    torch.manual_seed(0)
    G = 4
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 2.0, 0.0, 1.0, float("nan")])
    advantages = group_advantages(rewards, G, "group")
    grouped = rewards.view(-1, G)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(G)
    std = trl_nanstd(grouped, dim=1).repeat_interleave(G)
    expected = ((rewards - mean) / (std + 1e-4)).nan_to_num(0.0)
    assert torch.allclose(advantages, expected, atol=1e-6)
    assert torch.equal(advantages[4:8], torch.zeros(4))  # an all-equal group: no signal
    assert advantages[11] == 0  # a completion no function could score
    assert abs(float(advantages[:4].sum())) < 1e-6  # group-normalised: each group sums to 0
    none = group_advantages(rewards, G, "none")
    assert torch.allclose(none[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]))


def test_reward_registry():
    c = ["<think>x</think><answer>A red circle.</answer>", "a blue square", "The answer is (B).", "42.0001", "x"]
    s = ["a red circle", "a red circle", "B", "42", "<answer>$\\frac{1}{2}$</answer>"]
    assert REWARDS["exact_match"](c, s) == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert REWARDS["format"](c) == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert REWARDS["choice"](["(B) is it", "A.", "C"], ["B", "B", "no letter here"]) == [1.0, 0.0, None]
    assert REWARDS["numeric"](["about 42.000001", "41", "none"], ["42", "42", "42"]) == [1.0, 0.0, 0.0]
    assert REWARDS["math"](["<answer>0.5</answer>", "<answer>1/3</answer>"], ["$\\frac{1}{2}$", "$\\frac{1}{2}$"]) \
        == [1.0, 0.0]


def test_reward_functions_by_name_and_from_the_users_files(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text("def short(completions, **kw):\n    return [1.0 / len(c) for c in "
                                            "completions]\n")
    monkeypatch.chdir(tmp_path)
    functions = resolve("exact_match, my_rewards:short")
    assert list(functions) == ["exact_match", "my_rewards:short"]
    assert functions["my_rewards:short"](["ab"]) == [0.5]
    assert resolve(f"{tmp_path / 'my_rewards.py'}:short")[f"{tmp_path / 'my_rewards.py'}:short"](["abcd"]) == [0.25]
    for bad, says in (("exact", "unknown reward function 'exact'"), ("my_rewards:nope", "has no function"),
                      ("nowhere_module:f", "cannot import")):
        with pytest.raises(ValueError, match=says):
            resolve(bad)
    assert math.isclose(REWARDS["numeric"](["1,000.5"], ["1000.5"])[0], 1.0)
