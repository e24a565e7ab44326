"""VLMTrainer: transformers.Trainer, changed only where a VLM needs it.

- optimizer groups from one rule: weight decay only on tensors of 2+ dims; projector at feature_proj_lr
- save_model writes our checkpoint folder, so every checkpoint-N/ loads in test.py
- resume restores the trained weights from that folder (optimizer, scheduler, RNG and data order are
  the Trainer's own)
- length grouping uses the dataset's estimated lengths instead of tokenising the whole dataset
"""

import contextlib

from torch import nn
from transformers import Trainer
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.trainer_pt_utils import LengthGroupedSampler

from model.checkpoint import load_trainable_weights

PROJECTOR_PREFIX = "projector."


def parameter_groups(model: nn.Module, learning_rate: float, weight_decay: float, projector_lr: float | None):
    """One group per (projector?, decays?) pair that has trainable parameters."""
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_projector, decays = name.startswith(PROJECTOR_PREFIX), p.ndim >= 2
        key = (is_projector, decays)
        if key not in groups:
            groups[key] = {
                "params": [], "names": [],
                "lr": projector_lr if is_projector and projector_lr is not None else learning_rate,
                "weight_decay": weight_decay if decays else 0.0,
            }
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return list(groups.values())


def gathered(params, enabled: bool):
    """Under ZeRO-3 every rank holds a shard of each weight; gather the full ones to save them."""
    if not enabled:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


class VLMTrainer(Trainer):
    def create_optimizer(self, model=None):
        if self.optimizer is None:
            opt_model = model if model is not None else self.model
            groups = parameter_groups(opt_model, self.args.learning_rate, self.args.weight_decay,
                                      self.args.feature_proj_lr)
            for group in groups:
                group.pop("names")
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            optimizer_kwargs.pop("lr", None)  # each group carries its own
            self.optimizer = optimizer_cls(groups, lr=self.args.learning_rate, **optimizer_kwargs)
        return self.optimizer

    def save_model(self, output_dir=None, _internal_call=False):
        output_dir = output_dir or self.args.output_dir
        model = self.accelerator.unwrap_model(self.model)
        cfg = model.config
        saved = [p for n, p in model.named_parameters()
                 if p.requires_grad or n.startswith(PROJECTOR_PREFIX)
                 or (cfg.llm_mode == "full" and n.startswith("llm."))
                 or (cfg.vision_mode == "full" and n.startswith("vision_tower."))]
        with gathered(saved, enabled=is_deepspeed_zero3_enabled()):
            if self.args.should_save:
                model.save_pretrained(output_dir)
        self.accelerator.wait_for_everyone()

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        load_trainable_weights(self.accelerator.unwrap_model(model or self.model), resume_from_checkpoint)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and hasattr(dataset, "lengths"):
            return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        lengths=dataset.lengths)
        return super()._get_train_sampler(train_dataset)
