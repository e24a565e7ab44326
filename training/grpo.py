"""GRPO (Shao et al., 2024): reinforcement learning with rewards a program checks (`--objective grpo`; the data:
dataset/prompts.py, the rewards: training/rewards.py, the sampling: training/rollouts.py).

Each prompt gets G = --num_generations completions, sampled from the current policy; each completion is scored by
the reward functions (their weighted sum, --reward_weights), and its advantage is its reward's distance from its
group's mean, divided by the group's std (--scale_rewards group; batch: the batch's std; none: not divided). An
all-equal group gives every completion 0. The policy then takes --num_iterations optimizer steps on the same
rollouts, each on TRL's clipped objective (GRPOTrainer._compute_loss, trl 1.16; held equal to it in
tests/test_posttraining_losses.py):

    ratio = exp(log π(token) - log π_old(token));  per token: -min(ratio A, clip(ratio, 1 - ε_low, 1 + ε_high) A)
            + β KL,  KL = exp(ref - log π) - (ref - log π) - 1   (the k3 estimator; β = 0: no reference at all)

averaged per --loss_type: grpo (each completion's token mean, then the mean), bnpo (the batch's token mean), dr_grpo
(the token sum over completions x --max_completion_length), dapo (the token sum over the rollout batch's completion
tokens, all processes). Log-probs are taken at the sampling temperature, as TRL does.

Logged (the mean over each logging interval): reward, reward_std (within groups), rewards/<function>/mean and /std,
frac_reward_zero_std, completions/mean_length, completions/clipped_ratio (no stop within the limit), kl, and
clip_ratio/low_mean, high_mean, region_mean.
"""

import torch
from torch.utils.data import Sampler

from .posttraining import PostTrainer, only_lora_trains
from .rollouts import sample_completions, scored_rows

GRPO_LOSSES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")
STD_EPSILON = 1e-4  # TRL's


def nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """The unbiased standard deviation of the values that are not NaN."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    count = (~torch.isnan(x)).sum(dim=dim) if dim is not None else (~torch.isnan(x)).sum()
    variance = torch.nansum((x - mean) ** 2, dim=dim) / (count - 1).clamp(min=1)
    return variance.sqrt()


def group_advantages(rewards: torch.Tensor, num_generations: int, scale: str = "group") -> torch.Tensor:
    """(R,) rewards, groups of G consecutive completions of one prompt -> (R,) advantages. A NaN reward (no function
    could score the completion) stays out of its group's mean and std, and gets 0."""
    grouped = rewards.view(-1, num_generations)  # (B, G)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(num_generations)
    advantages = rewards - mean
    if scale == "group":
        advantages = advantages / (nanstd(grouped, dim=1).repeat_interleave(num_generations) + STD_EPSILON)
    elif scale == "batch":
        advantages = advantages / (nanstd(rewards) + STD_EPSILON)
    elif scale != "none":
        raise ValueError(f"--scale_rewards must be one of {SCALE_REWARDS}, not {scale!r}")
    return advantages.nan_to_num(0.0)


def grpo_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              loss_type: str = "grpo", epsilon_low: float = 0.2, epsilon_high: float = 0.2, beta: float = 0.0,
              ref_log_probs: torch.Tensor | None = None, max_completion_length: int | None = None,
              num_items: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs (R, L) of the policy, of the policy that sampled (old) and of the reference, advantages
    (R,), completion mask (R, L) -> the loss, the ratio (R, L) and the per-token KL (R, L; None when beta is 0).
    num_items (dapo): the completion tokens the loss is divided by."""
    mask = mask.to(log_probs.dtype)
    advantages = advantages[:, None]  # (R, 1)
    ratio = torch.exp(log_probs - old_log_probs)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    per_token = -torch.min(ratio * advantages, clipped * advantages)  # (R, L)
    kl = None
    if beta != 0.0:
        kl = torch.exp(ref_log_probs - log_probs) - (ref_log_probs - log_probs) - 1
        per_token = per_token + beta * kl
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        loss = (per_token * mask).sum() / (per_token.size(0) * max_completion_length)
    elif loss_type == "dapo":
        loss = (per_token * mask).sum() / max(float(num_items if num_items is not None else mask.sum()), 1.0)
    else:
        raise ValueError(f"GRPO loss_type must be one of {GRPO_LOSSES}, not {loss_type!r}")
    return loss, ratio.detach(), kl


def check_grpo_arguments(args, n_rewards: int):
    if (args.loss_type or "grpo") not in GRPO_LOSSES:
        raise ValueError(f"--loss_type for --objective grpo must be one of {', '.join(GRPO_LOSSES)}, not "
                         f"{args.loss_type!r}")
    if args.num_generations < 2:
        raise ValueError(f"--num_generations must be 2 or more (advantages compare completions of one prompt), not "
                         f"{args.num_generations}")
    if args.num_iterations < 1 or args.max_completion_length < 1:
        raise ValueError("--num_iterations and --max_completion_length must be 1 or more")
    if args.scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"--scale_rewards must be one of {', '.join(SCALE_REWARDS)}, not {args.scale_rewards!r}")
    if args.reward_weights is not None and len(args.reward_weights) != n_rewards:
        raise ValueError(f"--reward_weights gives {len(args.reward_weights)} weights for {n_rewards} reward functions")
    if args.temperature <= 0:
        raise ValueError(f"--temperature must be above 0 for sampling, not {args.temperature}")


class RepeatedBatches(Sampler):
    """A shuffled order, each chunk of `chunk` indices (one optimizer step's prompts, all processes) given `repeats`
    times in a row: the steps of --num_iterations > 1 find the prompts their rollouts came from."""

    def __init__(self, n: int, chunk: int, repeats: int, seed: int):
        self.n, self.chunk, self.repeats, self.seed, self.epoch = n, chunk, repeats, seed, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __iter__(self):
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        for start in range(0, self.n, self.chunk):
            for _ in range(self.repeats):
                yield from order[start:start + self.chunk]

    def __len__(self):
        return self.n * self.repeats


class GRPOTrainer(PostTrainer):
    """Batches from dataset/prompts.py (each prompt G times); _prepare_inputs turns them into scored rollouts."""

    objective = "grpo"

    def __init__(self, *args, reward_funcs: dict, **kwargs):
        super().__init__(*args, **kwargs)
        check_grpo_arguments(self.args, len(reward_funcs))
        self.loss_type = self.args.loss_type or "grpo"
        self.reward_funcs = reward_funcs
        self.reward_weights = torch.tensor(self.args.reward_weights or [1.0] * len(reward_funcs))
        self.reference_model = None  # beta > 0 and more than LoRA trains: a frozen copy of the starting model
        if self.args.beta != 0.0 and not only_lora_trains(self.model):
            self.reference_model = self.frozen_copy(self.model)
        self._rollouts = {}  # gradient-accumulation slot -> its rollout batch, reused for --num_iterations steps
        self._calls = 0

    def _get_train_sampler(self, train_dataset=None):
        if self.args.num_iterations == 1:
            return super()._get_train_sampler(train_dataset)
        args = self.args
        chunk = args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps
        return RepeatedBatches(len(train_dataset or self.train_dataset), chunk, args.num_iterations, args.seed)

    def _prepare_inputs(self, inputs):
        if not self.model.training:
            return super()._prepare_inputs(inputs)
        accumulation = self.args.gradient_accumulation_steps
        slot, cycle = self._calls % accumulation, (self._calls // accumulation) % self.args.num_iterations
        self._calls += 1
        if cycle == 0 or slot not in self._rollouts:
            self._rollouts[slot] = self.rollout(super()._prepare_inputs(inputs))
            return {**self._rollouts[slot], "skipped": inputs.get("skipped", [])}
        return dict(self._rollouts[slot])

    def rewards(self, completions: list[str], batch: dict) -> torch.Tensor:
        """(R, F): each reward function's reward of each completion, NaN where it returned None."""
        columns = []
        for name, fn in self.reward_funcs.items():
            values = fn(completions=completions, solution=batch["solutions"], prompts=batch["prompts"],
                        sample_ids=batch["sample_ids"])
            if len(values) != len(completions):
                raise ValueError(f"reward function {name} returned {len(values)} rewards for {len(completions)} "
                                 "completions")
            columns.append([float("nan") if v is None else float(v) for v in values])
        return torch.tensor(columns, dtype=torch.float32).T

    @torch.no_grad()
    def rollout(self, batch: dict) -> dict:
        args, G = self.args, self.args.num_generations
        vlm = self.accelerator.unwrap_model(self.model)
        completion_ids, mask = sample_completions(vlm, batch, args.max_completion_length, args.temperature,
                                                  args.top_p)
        texts = vlm.tokenizer.batch_decode([ids[m.bool()] for ids, m in zip(completion_ids, mask, strict=True)],
                                           skip_special_tokens=True)
        per_function = self.rewards(texts, batch)  # (R, F)
        weighted = (per_function * self.reward_weights).nansum(dim=1)
        rewards = torch.where(torch.isnan(per_function).all(dim=1), torch.nan, weighted)  # (R,)
        advantages = group_advantages(rewards, G, args.scale_rewards)
        rows = scored_rows(batch, completion_ids, mask)
        tokens = mask.sum().float().to(args.device)
        if args.world_size > 1:
            tokens = self.accelerator.reduce(tokens, reduction="sum")
        extra = {}
        if args.num_iterations > 1:  # the sampling policy's log-probs, before this batch's first update
            extra["old_log_probs"] = self.completion_log_probs(self.model, rows, mask.shape[1])
        if args.beta != 0.0:
            if self.reference_model is not None:
                extra["ref_log_probs"] = self.completion_log_probs(self.reference_model, rows, mask.shape[1])
            else:
                with self.reference(self.model):
                    extra["ref_log_probs"] = self.completion_log_probs(self.model, rows, mask.shape[1])
        self.record_rollout(rewards, per_function, mask)
        return {**rows, **extra, "advantages": advantages.to(args.device), "completion_mask": mask,
                "num_items": tokens / args.world_size, "sample_ids": batch["sample_ids"],
                "num_tokens": int(rows["attention_mask"].sum())}

    def completion_log_probs(self, model, rows: dict, length: int) -> torch.Tensor:
        """(R, L): each completion token's log-prob at the sampling temperature."""
        with self.autocast_smart_context_manager():
            log_probs = model(**rows, return_log_probs=True, temperature=self.args.temperature).log_probs
        return log_probs[:, -length:].float()

    def record_rollout(self, rewards: torch.Tensor, per_function: torch.Tensor, mask: torch.Tensor):
        G = self.args.num_generations
        group_std = nanstd(rewards.view(-1, G), dim=1)
        self.record("reward", rewards.nan_to_num(0.0))
        self.record("reward_std", group_std.nan_to_num(0.0))
        self.record("frac_reward_zero_std", torch.isclose(group_std, torch.zeros_like(group_std)).float())
        for k, name in enumerate(self.reward_funcs):
            column = per_function[:, k]
            scored = ~torch.isnan(column)
            self.record(f"rewards/{name}/mean", column[scored] if scored.any() else torch.zeros(0))
            self.record(f"rewards/{name}/std", nanstd(column.view(-1, G), dim=1).nan_to_num(0.0))
        lengths = mask.sum(-1).float()
        self.record("completions/mean_length", lengths)
        self.record("completions/clipped_ratio", (mask[:, -1] == 1).float())  # no stop token within the limit

    def objective_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        advantages, mask = inputs.pop("advantages"), inputs.pop("completion_mask")
        old, ref = inputs.pop("old_log_probs", None), inputs.pop("ref_log_probs", None)
        num_items = inputs.pop("num_items")
        log_probs = self.completion_log_probs(model, inputs, mask.shape[1])
        args = self.args
        epsilon_high = args.epsilon_high if args.epsilon_high is not None else args.epsilon
        loss, ratio, kl = grpo_loss(log_probs, log_probs.detach() if old is None else old, advantages, mask,
                                    self.loss_type, args.epsilon, epsilon_high, args.beta, ref,
                                    args.max_completion_length, num_items)
        if model.training:
            keep = mask.bool()
            if kl is not None:
                self.record("kl", kl.detach()[keep])
            low = (ratio < 1 - args.epsilon) & (advantages[:, None] < 0)
            high = (ratio > 1 + epsilon_high) & (advantages[:, None] > 0)
            self.record("clip_ratio/low_mean", low[keep].float())
            self.record("clip_ratio/high_mean", high[keep].float())
            self.record("clip_ratio/region_mean", (low | high)[keep].float())
        return (loss, None) if return_outputs else loss
