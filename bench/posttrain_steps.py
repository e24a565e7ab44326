"""One GRPO step and one DPO step of our VLM, timed part by part, for bench/cpu_grpo.py and bench/gpu_train.py
--posttrain: the same functions train.py's trainers call (training/rollouts.py, training/grpo.py, training/dpo.py)."""

import time

import torch

from training.dpo import dpo_loss
from training.grpo import group_advantages, grpo_loss
from training.rollouts import sample_completions, scored_rows


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(parts: dict, name: str, device, fn):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    parts[name] = parts.get(name, 0.0) + time.perf_counter() - start
    return out


def reference_pass(model, reference, log_probs):
    """log_probs(the reference model), without gradients: `reference` itself, or "adapter": `model` with its adapter
    switched off."""
    with torch.no_grad():
        if reference == "adapter":
            with model.llm.disable_adapter():
                return log_probs(model)
        return log_probs(reference)


def grpo_step(model, batch: dict, num_generations: int, new_tokens: int, optimizer, reference=None,
              autocast=None) -> tuple[dict, int]:
    """Rollouts of the batch's rows (each prompt's G copies side by side), random rewards, then the reference pass
    (`reference`: a model, or "adapter" for the adapter switched off, or None: beta 0), the policy's forward and
    backward, and the optimizer step. Returns ({part: seconds}, tokens generated)."""
    device = batch["input_ids"].device
    autocast = autocast or torch.autocast(device.type, enabled=False)
    parts = {}
    with autocast:
        ids, mask = timed(parts, "generation", device, lambda: sample_completions(
            model, batch, new_tokens, temperature=1.0, top_p=1.0))
        rewards = torch.rand(ids.shape[0], generator=torch.Generator().manual_seed(0))
        advantages = group_advantages(rewards, num_generations).to(device)
        rows = scored_rows(batch, ids, mask)
        L = ids.shape[1]

        def log_probs(m):
            return m(**rows, return_log_probs=True).log_probs[:, -L:].float()

        ref = None
        if reference is not None:
            ref = timed(parts, "reference", device, lambda: reference_pass(model, reference, log_probs))

        def policy():
            lp = log_probs(model)
            loss = grpo_loss(lp, lp.detach(), advantages, mask, "grpo", beta=0.04 if ref is not None else 0.0,
                             ref_log_probs=ref)[0]
            loss.backward()
        model.train()
        timed(parts, "policy forward + backward", device, policy)
    timed(parts, "optimizer", device, lambda: (optimizer.step(), optimizer.zero_grad(set_to_none=True)))
    return parts, int(ids.numel())


def dpo_step(model, batch: dict, optimizer, reference="adapter", autocast=None) -> dict:
    """A batch of 2P rows (chosen, then rejected): reference pass, policy forward + backward, optimizer step."""
    device = batch["input_ids"].device
    autocast = autocast or torch.autocast(device.type, enabled=False)
    parts = {}

    def logps(m):
        return m(**batch, return_log_probs=True).log_probs.sum(-1).float()

    with autocast:
        ref = timed(parts, "reference", device, lambda: reference_pass(model, reference, logps))

        def policy():
            chosen, rejected = logps(model).chunk(2)
            loss = dpo_loss(chosen, rejected, *ref.chunk(2), beta=0.1)[0].mean()
            loss.backward()
        timed(parts, "policy forward + backward", device, policy)
    timed(parts, "optimizer", device, lambda: (optimizer.step(), optimizer.zero_grad(set_to_none=True)))
    return parts
