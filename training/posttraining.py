"""What DPO (training/dpo.py) and GRPO (training/grpo.py) share on top of VLMTrainer: the reference model, logged
metrics averaged over each logging interval (as TRL logs them), dropout off, and the setups they refuse.

The reference model is the model post-training starts from (train.py --init_from, or the base models). When only
LoRA weights train, it is that same model with the adapter switched off (no second copy in memory); otherwise the
objective keeps a reference of its own (DPO: log-probabilities computed once before training; GRPO: a frozen copy).
"""

import contextlib
import copy
from collections import defaultdict

import torch
from peft import PeftModel
from torch import nn

from .trainer import VLMTrainer


def only_lora_trains(model: nn.Module) -> bool:
    """Whether the trainable weights are LoRA's alone: then the adapter switched off is the starting model."""
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    return bool(trained) and isinstance(model.llm, PeftModel) and all("lora_" in name for name in trained)


def disable_dropout(model: nn.Module):
    """Dropout off everywhere, as TRL does: the policy's log-probs must be those it sampled with, and the reference's
    those of the starting model. Attention dropout is a float attribute in many models (ours, Llama, CLIP)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name in ("dropout", "attention_dropout", "attn_dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)


def refuse_sharded(args, objective: str):
    """ZeRO-3 and FSDP shard the weights that rollouts and the reference pass need whole on every process."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if args.fsdp or is_deepspeed_zero3_enabled():
        raise ValueError(f"--objective {objective} runs under DDP or DeepSpeed ZeRO-2, not ZeRO-3 or FSDP (the "
                         "reference pass and the rollouts need every weight whole on every process)")


class PostTrainer(VLMTrainer):
    """A VLMTrainer whose objective returns a batch mean (the Trainer scales it for gradient accumulation) and records
    metrics with `record`, logged as their mean over the interval."""

    objective = None  # "dpo" or "grpo": named in the refusal of sharded setups

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        refuse_sharded(self.args, self.objective)  # train.py refuses them earlier, before the model loads
        self.model_accepts_loss_kwargs = False  # our losses are batch means: the Trainer divides them by accumulation
        disable_dropout(self.model)
        self._metrics = defaultdict(lambda: [0.0, 0.0])  # name -> [sum, count] since the last log

    def record(self, name: str, values: torch.Tensor):
        """Adds the values (any shape; all processes alike) to `name`'s mean since the last log."""
        totals = torch.stack([values.detach().float().sum(), torch.tensor(float(values.numel()))
                              .to(values.device)])
        if self.args.world_size > 1:
            totals = self.accelerator.reduce(totals.to(self.args.device), reduction="sum")
        entry = self._metrics[name]
        entry[0] += float(totals[0])
        entry[1] += float(totals[1])

    def log(self, logs: dict, *args, **kwargs):
        if "loss" in logs:
            logs = {**logs, **{name: round(total / count, 6) for name, (total, count) in self._metrics.items()
                               if count}}
            self._metrics.clear()
        super().log(logs, *args, **kwargs)

    @contextlib.contextmanager
    def reference(self, model):
        """The reference model's forward: `model` with its LoRA adapter off (only_lora_trains)."""
        with torch.no_grad(), self.accelerator.unwrap_model(model).llm.disable_adapter():
            yield model

    @staticmethod
    def frozen_copy(model: nn.Module) -> nn.Module:
        """The starting model, kept apart (when more than LoRA trains): no gradients, evaluation mode."""
        reference = copy.deepcopy(model).eval()
        reference.requires_grad_(False)
        return reference
