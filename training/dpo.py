"""DPO (Rafailov et al., 2023): preference tuning on two answers to one prompt, one chosen and one rejected
(`--objective dpo`; the data: dataset/preference.py).

For each pair the policy's and the reference model's log-probabilities of each answer (summed over its tokens, its
end-of-turn token included) give two log-ratios, and the loss pushes the chosen answer's above the rejected one's.
The losses are TRL's (DPOTrainer._compute_loss, trl 1.16), held equal to it in tests/test_posttraining_losses.py, with
Δ = chosen log-ratio - rejected log-ratio:

- sigmoid: -log σ(β Δ)                                    (DPO)
- ipo:     (chosen log-ratio / its tokens - rejected log-ratio / its tokens - 1 / 2β)²   (IPO, per-token as TRL)
- hinge:   max(0, 1 - β Δ)                                (SLiC)
- robust:  (-(1 - ε) log σ(β Δ) + ε log σ(-β Δ)) / (1 - 2ε), ε = --label_smoothing, the chance a pair's labels are
           flipped (rDPO), in [0, 0.5)

The reference is the starting model: the adapter switched off when only LoRA trains, else log-probabilities computed
in one pass before the first step and stored in the output folder (reference_log_probs.json, reused on resume).
Logged as TRL logs them: rewards/chosen, rewards/rejected (β x log-ratio), rewards/margins, rewards/accuracies,
logps/chosen, logps/rejected.
"""

import json
import os

import torch
import torch.nn.functional as F
from accelerate.utils import gather_object
from tqdm import tqdm

from common import atomic_file
from dataset.collator import MODEL_INPUTS
from dataset.conversation import IGNORE_INDEX

from .posttraining import PostTrainer, only_lora_trains

DPO_LOSSES = ("sigmoid", "ipo", "hinge", "robust")
REFERENCE_FILE = "reference_log_probs.json"


def dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, beta: float, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
             chosen_tokens: torch.Tensor | None = None, rejected_tokens: torch.Tensor | None = None):
    """Sequence log-probs (P,) of each pair's answers under the policy and the reference -> the per-pair losses (P,)
    and the rewards β x log-ratio of the chosen and the rejected answers (P,), detached. ipo needs each answer's
    token count."""
    chosen_ratio = chosen_logps - ref_chosen_logps  # (P,)
    rejected_ratio = rejected_logps - ref_rejected_logps
    delta = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * delta)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * delta)
    elif loss_type == "ipo":
        per_token = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
        losses = (per_token - 1 / (2 * beta)) ** 2
    elif loss_type == "robust":
        eps = label_smoothing
        losses = (-(1 - eps) * F.logsigmoid(beta * delta) + eps * F.logsigmoid(-beta * delta)) / (1 - 2 * eps)
    else:
        raise ValueError(f"DPO loss_type must be one of {DPO_LOSSES}, not {loss_type!r}")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def check_dpo_arguments(beta: float, loss_type: str, label_smoothing: float):
    if loss_type not in DPO_LOSSES:
        raise ValueError(f"--loss_type for --objective dpo must be one of {', '.join(DPO_LOSSES)}, not {loss_type!r}")
    if beta <= 0:
        raise ValueError(f"--beta must be above 0 for --objective dpo, not {beta}")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"--label_smoothing must lie in [0, 0.5), not {label_smoothing}")


def answer_log_probs(model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's answer log-prob, summed over its labelled tokens, (R,), and those tokens' count (R,)."""
    log_probs = model(**inputs, return_log_probs=True).log_probs  # (R, T - 1)
    return log_probs.sum(-1), (inputs["labels"][:, 1:] != IGNORE_INDEX).sum(-1)


class DPOTrainer(PostTrainer):
    """Batches from dataset/preference.py: the P chosen rows, then the P rejected rows of the same prompts."""

    objective = "dpo"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_type = self.args.loss_type or "sigmoid"
        check_dpo_arguments(self.args.beta, self.loss_type, self.args.label_smoothing)
        # None: the adapter switched off; else {pair id: [chosen, rejected]} of the starting model, before training
        self.reference_log_probs = None if only_lora_trains(self.model) else {}

    def train(self, *args, **kwargs):
        if self.reference_log_probs == {}:
            self.reference_log_probs = self.precompute_reference()
        return super().train(*args, **kwargs)

    @torch.no_grad()
    def precompute_reference(self) -> dict:
        """The starting model's log-probs of every pair, each process computing its share, in one pass; stored in
        the output folder and read back from there (a resumed run reuses them)."""
        path = os.path.join(self.args.output_dir, REFERENCE_FILE)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        model, dataset, args = self.model, self.train_dataset, self.args
        indices = list(range(args.process_index, len(dataset), args.world_size))
        size = args.per_device_eval_batch_size
        model.train()
        pairs = []  # in training mode, as the policy's log-probs are taken (dropout is off; QWen's eval-only logn
        # attention scaling stays off too)
        quiet = not self.is_world_process_zero()
        for start in tqdm(range(0, len(indices), size), desc="reference log-probs", disable=quiet):
            batch = self.data_collator([dataset[i] for i in indices[start:start + size]])
            inputs = {k: v.to(args.device) if torch.is_tensor(v) else v for k, v in batch.items()
                      if k in MODEL_INPUTS}
            with self.autocast_smart_context_manager():
                logps = answer_log_probs(model, inputs)[0].float().cpu()
            chosen, rejected = logps.chunk(2)
            pairs += [(pair_id, [float(c), float(r)]) for pair_id, c, r in zip(batch["pair_ids"], chosen, rejected,
                                                                               strict=True)]
        if args.world_size > 1:
            pairs = gather_object(pairs)
        table = dict(pairs)
        if self.is_world_process_zero():
            os.makedirs(args.output_dir, exist_ok=True)
            with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
                json.dump(table, f)
        return table

    def objective_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        pair_ids = inputs.pop("pair_ids")
        logps, tokens = answer_log_probs(model, inputs)  # (2P,): chosen rows, then rejected rows
        if self.reference_log_probs is None:
            with self.reference(model):
                ref = answer_log_probs(model, inputs)[0]
        else:
            table = torch.tensor([self.reference_log_probs[i] for i in pair_ids], device=logps.device)  # (P, 2)
            ref = table.T.reshape(-1).to(logps.dtype)
        chosen, rejected = logps.chunk(2)
        ref_chosen, ref_rejected = ref.chunk(2)
        chosen_tokens, rejected_tokens = tokens.chunk(2)
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            chosen, rejected, ref_chosen, ref_rejected, self.args.beta, self.loss_type, self.args.label_smoothing,
            chosen_tokens, rejected_tokens)
        if model.training:
            self.record("rewards/chosen", chosen_rewards)
            self.record("rewards/rejected", rejected_rewards)
            self.record("rewards/margins", chosen_rewards - rejected_rewards)
            self.record("rewards/accuracies", (chosen_rewards > rejected_rewards).float())
            self.record("logps/chosen", chosen.detach())
            self.record("logps/rejected", rejected.detach())
        loss = losses.mean()
        return (loss, None) if return_outputs else loss
