"""The training loss, computed only where there are labels.

Most positions of a VLM sample carry no label (the 576-729 image tokens, the system prompt, the question),
yet transformers' causal-LM loss multiplies every position by the (vocab x hidden) output matrix: for a
152k-token vocabulary that is most of the step's FLOPs and memory (4 x 1,753 positions of bf16 logits are
2 GiB, twice that once upcast). Here the labels are shifted first, the labelled positions gathered, and
only their logits computed:

- "labelled": the LLM's own output layer on the labelled positions, then the same cross-entropy. Works
  everywhere (ZeRO-3 included, as the layer is called as a module).
- "chunked": the same numbers, never holding more than CHUNK rows of logits: each chunk's gradient is
  computed in the forward pass (a custom autograd function), so memory does not grow with the batch.
- "liger": Liger Kernel's fused linear cross-entropy (Triton, CUDA only; `pip install liger-kernel`).
- "plain": transformers' own loss over every position (the reference).

All give the loss of transformers' ForCausalLMLoss: the sum over labelled tokens divided by
num_items_in_batch (the Trainer's count across gradient accumulation) or, without it, their mean.
"""

import torch
import torch.nn.functional as F
from transformers.integrations import is_deepspeed_zero3_enabled

IGNORE_INDEX = -100
LOSS_IMPLEMENTATIONS = ("auto", "plain", "labelled", "chunked", "liger")
CHUNK = 2048  # rows of logits at a time: 2048 x 152k fp32 = 1.2 GiB at most


def resolve(impl: str, head: torch.nn.Module) -> str:
    """auto: chunked, except under ZeRO-3 (the head's weight is partitioned: called as a module, it is gathered)
    or with a bias on the head (the chunked function has none)."""
    if impl not in LOSS_IMPLEMENTATIONS:
        raise ValueError(f"loss_impl must be one of {LOSS_IMPLEMENTATIONS}, not {impl!r}")
    if impl == "auto":
        return "labelled" if is_deepspeed_zero3_enabled() or getattr(head, "bias", None) is not None else "chunked"
    if impl == "liger" and not torch.cuda.is_available():
        raise ValueError("--loss_impl liger needs a CUDA GPU (Liger Kernel is Triton code)")
    return impl


def labelled_positions(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden (B, T, C), labels (B, T) -> the hidden states that predict a label (N, C) and those labels (N,)."""
    targets = labels[:, 1:]  # position t predicts token t + 1
    keep = targets != IGNORE_INDEX  # (B, T - 1)
    return hidden[:, :-1][keep], targets[keep]


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum over rows of cross_entropy(hidden @ weight.T, targets), CHUNK rows at a time; the gradients are
    computed chunk by chunk in the forward pass, so no (N x vocab) tensor ever exists."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk):
        # hidden (N, C), weight (V, C), targets (N,)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], chunk):
            h, t = hidden[start:start + chunk], targets[start:start + chunk]
            logits = (h @ weight.T).float()  # (n, V), in the weight's precision first, as the plain path
            log_z = torch.logsumexp(logits, dim=-1)  # (n,)
            total += (log_z - logits.gather(1, t[:, None])[:, 0]).sum()
            grad_logits = torch.softmax(logits, dim=-1)  # d(loss)/d(logits) = softmax - one_hot(target)
            grad_logits[torch.arange(len(t), device=t.device), t] -= 1
            grad_logits = grad_logits.to(weight.dtype)
            if grad_hidden is not None:
                grad_hidden[start:start + chunk] = grad_logits @ weight
            if grad_weight is not None:
                grad_weight += (grad_logits.T @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_output.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_output).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None


def token_log_probs(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module,
                    temperature: float = 1.0) -> torch.Tensor:
    """Each label's log-probability under head(hidden) / temperature: (B, T - 1), position t scoring label t + 1, 0
    where there is no label (post-training's sequence log-probs, computed at the labelled positions only)."""
    h, targets = labelled_positions(hidden, labels)  # (N, C), (N,)
    logits = head(h).float() / temperature  # (N, V)
    picked = logits.gather(1, targets[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)  # (N,)
    keep = labels[:, 1:] != IGNORE_INDEX  # (B, T - 1)
    return torch.zeros(keep.shape, dtype=picked.dtype, device=picked.device).masked_scatter(keep, picked)


def causal_lm_loss(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module, impl: str,
                   num_items_in_batch=None) -> torch.Tensor:
    """transformers' ForCausalLMLoss of head(hidden) against labels, computed at the labelled positions only."""
    h, targets = labelled_positions(hidden, labels)
    if impl == "labelled":
        total = F.cross_entropy(head(h).float(), targets, reduction="sum")
    elif impl == "chunked":
        total = ChunkedLinearCrossEntropy.apply(h, head.weight, targets, CHUNK)
    elif impl == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        total = LigerFusedLinearCrossEntropyLoss(reduction="sum")(head.weight, h, targets)
    else:
        raise ValueError(f"causal_lm_loss computes labelled positions only, not {impl!r}")
    if num_items_in_batch is None:
        return total / max(len(targets), 1)
    return total / (num_items_in_batch.to(total.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch)
