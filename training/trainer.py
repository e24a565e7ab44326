"""VLMTrainer: transformers.Trainer, changed only where a VLM or a long run needs it.

- optimizer groups from one rule: weight decay only on tensors of 2+ dims; projector at feature_proj_lr
- save_model writes our checkpoint folder, so every checkpoint-N/ loads in test.py
- checkpoints are complete or absent: written into a hidden sibling, renamed in when every process is done
- resume restores the trained weights from that folder (optimizer, scheduler, RNG and data order are
  the Trainer's own); under DeepSpeed the engine's checkpoint holds only the trained weights
- FSDP2 (`--fsdp` with `configs/fsdp2.json`) shards the LLM's blocks and the tower's layers one by one; the
  checkpoints hold the whole trained weights, gathered; on the CPU (gloo) too, where accelerate would not shard
- bad samples, non-finite losses and preemption signals follow the rules of training/health.py
- length grouping uses the dataset's estimated lengths instead of tokenising the whole dataset; packed rows
  (dataset/packing.py) are grouped by their token counts
- every training log line carries samples/s, tokens/s and the padding fraction since the last one
- evaluation (`--eval_strategy steps` with held-out data) gives the held-out loss at the labelled positions, as the
  training loss, and with `--eval_generate N` greedy answers scored as eval.py scores them (heldout.py); the best
  checkpoint (`--load_best_model_at_end`) is one of ours, loaded as resume loads one
"""

import functools
import logging
import math
import os
import shutil
import time

import torch
from accelerate.utils import DistributedType, gather_object, save_fsdp_optimizer
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.utils.data import SequentialSampler
from transformers import Trainer
from transformers.integrations.deepspeed import deepspeed_load_checkpoint, is_deepspeed_zero3_enabled
from transformers.trainer import SCHEDULER_NAME, TRAINER_STATE_NAME
from transformers.trainer_callback import ExportableState
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, EvalLoopOutput, rotate_checkpoints

from model.checkpoint import load_trainable_weights, save_checkpoint
from model.zero3 import gathered

from .checkpoints import publish, staging_folder
from .health import PreemptionSignal, RunHealth, bad_sample_limit
from .heldout import EvaluationReport, heldout_loss, heldout_metrics

PROJECTOR_PREFIX, VISION_PREFIX = "projector.", "vision_tower."
logger = logging.getLogger(__name__)


def parameter_groups(model: nn.Module, learning_rate: float, weight_decay: float, projector_lr: float | None,
                     vision_lr: float | None = None):
    """One group per (part, decays?) pair that has trainable parameters; the parts are the projector (at projector_lr),
    the vision tower (at vision_lr) and the LLM (at learning_rate), each at learning_rate when its rate is None."""
    rates = {PROJECTOR_PREFIX: projector_lr, VISION_PREFIX: vision_lr}
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = next((prefix for prefix in rates if name.startswith(prefix)), "llm.")
        decays = p.ndim >= 2
        key = (part, decays)
        if key not in groups:
            groups[key] = {
                "params": [], "names": [], "part": part.rstrip("."),
                "lr": learning_rate if rates.get(part) is None else rates[part],
                "weight_decay": weight_decay if decays else 0.0,
            }
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return list(groups.values())


def fsdp_summary(model: nn.Module, world_size: int) -> str:
    """One line: which modules FSDP sharded on their own, and how much of the model this process holds."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    units = [type(m).__name__ for m in model.modules() if isinstance(m, FSDPModule)]
    counts = ", ".join(f"{n} x {units.count(n)}" for n in dict.fromkeys(units))
    held = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in model.parameters())
    whole = sum(p.numel() for p in model.parameters())
    return f"FSDP2: {len(units)} modules sharded over {world_size} processes ({counts}); this process holds " \
           f"{held:,} of {whole:,} parameters"


class VLMTrainer(Trainer):
    def __init__(self, *args, callbacks=None, heldout: list[dict] | None = None, eval_collator=None, **kwargs):
        super().__init__(*args, callbacks=[RunHealth(), EvaluationReport(), *(callbacks or [])], **kwargs)
        self.eval_collator = eval_collator or self.data_collator  # the held-out set's (post-training: SFT rows)
        self.heldout = heldout or []  # held-out conversations answered at each evaluation (evaluation.conversations)
        self.preemption = PreemptionSignal()
        self._step_reports = []  # (sample ids, finite flag) of this optimizer step's micro-batches
        self._new_bad_samples = []  # (id, why) seen by this process since the last step end
        self._checked_step = -1
        self._throughput = torch.zeros(3)  # samples, real tokens, batch slots (tokens + padding) in this step
        self._step_throughput = [0.0, 0.0, 0.0]  # the same, all processes, of the last step
        self._logged_throughput = [0.0, 0.0, 0.0]  # ... since the last training log
        self._throughput_since = None

    def create_accelerator_and_postprocess(self):
        """accelerate turns FSDP on for accelerators only; on the CPU (`--use_cpu`, gloo) it would quietly run plain
        DDP instead. FSDP2's fully_shard runs there as well, so it is turned on here too: the same sharding, saving
        and resuming as on GPUs, testable on the CPU."""
        super().create_accelerator_and_postprocess()
        state = self.accelerator.state
        if self.args.fsdp_plugin_args is not None and not self.is_fsdp_enabled \
                and state.distributed_type == DistributedType.MULTI_CPU:
            from accelerate.utils import FullyShardedDataParallelPlugin

            state.distributed_type = DistributedType.FSDP
            state.fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
            self.is_fsdp_enabled = True

    @property
    def health(self) -> RunHealth:
        # looked up each time: resuming replaces the callback with the one restored from the checkpoint
        return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, RunHealth))

    @property
    def preempted(self) -> str | None:
        return self.preemption.received

    def train(self, *args, **kwargs):
        self._throughput_since = time.perf_counter()
        with self.preemption:
            return super().train(*args, **kwargs)

    # ---- optimizer ----

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            opt_model = model if model is not None else self.model
            groups = parameter_groups(opt_model, self.args.learning_rate, self.args.weight_decay,
                                      self.args.feature_proj_lr, self.args.vision_lr)
            for group in groups:
                group.pop("names"), group.pop("part")
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            optimizer_kwargs.pop("lr", None)  # each group carries its own
            self.optimizer = optimizer_cls(groups, lr=self.args.learning_rate, **optimizer_kwargs)
        return self.optimizer

    # ---- one step ----

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        sample_ids = inputs.pop("sample_ids", [])
        self._new_bad_samples += inputs.pop("skipped", [])
        num_tokens = inputs.pop("num_tokens", 0)
        result = self.objective_loss(model, inputs, return_outputs, num_items_in_batch)
        if model.training:  # evaluation batches neither count as throughput nor take part in the step's checks
            self._throughput += torch.tensor([len(sample_ids), num_tokens, inputs["input_ids"].numel()])
            loss = result[0] if return_outputs else result
            self._step_reports.append((sample_ids, torch.isfinite(loss.detach()).all()))
        return result

    def objective_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The training objective on a batch: here SFT's causal-LM loss at the labelled positions (the model's own);
        post-training replaces it (training/dpo.py, training/grpo.py)."""
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _get_grad_norm(self, model, grad_norm=None):
        """A non-finite gradient norm (the same on every process, after the all-reduce) empties the
        gradients, so the optimizer skips this update. fp16's loss scaler already skips such steps itself;
        under DeepSpeed the engine has stepped by now, and the stop rule guards the checkpoints."""
        grad_norm = super()._get_grad_norm(model, grad_norm)
        if grad_norm is not None and not self.args.fp16 and not self.is_deepspeed_enabled \
                and not math.isfinite(float(grad_norm)):
            model.zero_grad(set_to_none=True)  # AdamW leaves parameters without a gradient untouched
        return grad_norm

    def _maybe_log_save_evaluate(self, *args, **kwargs):
        """Runs after every optimizer step, before its log and save: the health rules, agreed by all processes."""
        self._end_step_checks()
        super()._maybe_log_save_evaluate(*args, **kwargs)

    def _end_step_checks(self):
        step = self.state.global_step
        if step == self._checked_step:  # the Trainer calls this once more at the end of an epoch
            return
        self._checked_step = step
        nonfinite = False
        for sample_ids, finite in self._step_reports:
            if not bool(finite):
                nonfinite = True
                logger.warning("step %d: the loss is NaN or inf; the batch held samples %s", step, sample_ids)
        self._step_reports = []
        # one small all-reduce per step, so every process takes the same decisions (and logs every process's data)
        flags = torch.cat([torch.tensor([len(self._new_bad_samples), nonfinite, self.preempted is not None]),
                           self._throughput]).to(torch.float64 if self.args.device.type != "mps" else torch.float32)
        flags = flags.to(self.args.device)
        if self.args.world_size > 1:
            flags = self.accelerator.reduce(flags, reduction="sum")
        flags = flags.tolist()
        n_bad, nonfinite, preempted = (x > 0 for x in flags[:3])
        self._step_throughput = flags[3:]
        self._throughput.zero_()
        if n_bad:
            records = self._new_bad_samples if self.args.world_size == 1 else gather_object(self._new_bad_samples)
            self.health.add_bad_samples([tuple(r) for r in records])
        self._new_bad_samples = []
        self._logged_throughput = [a + b for a, b in zip(self._logged_throughput, self._step_throughput, strict=True)]
        self.health.end_step(nonfinite, self.args.max_nonfinite_steps, step)
        samples = getattr(self.train_dataset, "num_samples", len(self.train_dataset))  # packed: rows != samples
        self.health.check_bad_samples(bad_sample_limit(self.args.max_bad_samples, samples))
        if nonfinite:  # never save the weights of a step whose loss was not finite
            self.control.should_save = False
        if preempted:
            self.control.should_save = not nonfinite
            self.control.should_training_stop = True
            if self.preemption.received is None:
                self.preemption.received = "a signal to another process"

    def log(self, logs: dict, *args, **kwargs):
        if "loss" in logs:  # training logs carry the fault counts, so nothing is lost silently
            logs = {**logs, "bad_samples": len(self.health.bad_samples), "nonfinite_steps": self.health.nonfinite_steps,
                    **self._throughput_logs()}
        super().log(logs, *args, **kwargs)

    def _throughput_logs(self) -> dict:
        """samples/s, tokens/s (real tokens, all processes) and the padding fraction since the last training log."""
        now, since = time.perf_counter(), self._throughput_since
        samples, tokens, slots = self._logged_throughput
        self._logged_throughput, self._throughput_since = [0.0, 0.0, 0.0], now
        if since is None or slots == 0:
            return {}
        seconds = now - since
        return {"samples_per_second": round(samples / seconds, 3), "tokens_per_second": round(tokens / seconds, 1),
                "padding_fraction": round(1 - tokens / slots, 4)}

    # ---- evaluation ----

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        """The held-out loss, the exact token mean over the held-out set, and the held-out answers' scores (heldout.py):
        each process takes its share of the samples (the Trainer's loop averages batch means instead, which depends
        on the batch size and the number of processes)."""
        model, args = self.accelerator.unwrap_model(self.model), self.args
        share = dict(process_index=args.process_index, world_size=args.world_size, synced=is_deepspeed_zero3_enabled())
        with self.autocast_smart_context_manager():
            metrics = {"loss": heldout_loss(model, self.eval_dataset, self.eval_collator,
                                            args.per_device_eval_batch_size, args.device, **share)}
            if self.heldout:
                metrics |= heldout_metrics(model, self.heldout, args.per_device_eval_batch_size,
                                           args.eval_max_new_tokens, **share)
        return EvalLoopOutput(predictions=None, label_ids=None, num_samples=len(self.eval_dataset),
                              metrics={f"{metric_key_prefix}_{k}": v for k, v in metrics.items()})

    def _load_best_model(self):
        """The best checkpoint is one of ours: its trained weights are loaded in place, as resume does."""
        best = self.state.best_model_checkpoint
        logger.warning("loading the best checkpoint, %s (%s %s)", best, self.args.metric_for_best_model,
                       self.state.best_metric)
        if self.is_deepspeed_enabled:
            deepspeed_load_checkpoint(self.model_wrapped, best, load_module_strict=False)
        else:
            load_trainable_weights(self.accelerator.unwrap_model(self.model), best)

    # ---- checkpoints ----

    def save_model(self, output_dir=None, _internal_call=False):
        output_dir = output_dir or self.args.output_dir
        model = self.accelerator.unwrap_model(self.model)
        cfg = model.config
        if self.is_fsdp_enabled:  # FSDP: each process holds a shard of each weight; gather the whole ones on the main
            options = StateDictOptions(full_state_dict=True, cpu_offload=True,
                                       ignore_frozen_params=cfg.projector_mode == "train")  # frozen ones: base models
            state = get_model_state_dict(model, options=options)
            if self.args.should_save:
                save_checkpoint(model, output_dir, state)
            self.accelerator.wait_for_everyone()
            return
        saved = [p for n, p in model.named_parameters()
                 if p.requires_grad or n.startswith(PROJECTOR_PREFIX)
                 or (cfg.llm_mode == "full" and n.startswith("llm."))
                 or (cfg.vision_mode == "full" and n.startswith(VISION_PREFIX))]
        with gathered(saved):  # ZeRO-3: every process holds a shard of each weight; save the whole ones
            if self.args.should_save:
                save_checkpoint(model, output_dir)
        self.accelerator.wait_for_everyone()

    def _save_checkpoint(self, model, trial):
        """The Trainer's checkpoint, written into `.checkpoint-N.partial/` by every process and renamed to
        `checkpoint-N/` by the main one once all are done, with a manifest of its files."""
        run_dir = self._get_output_dir(trial=trial)
        final = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        staging = staging_folder(final)
        if self.args.should_save and os.path.exists(staging):  # left by a save that was killed: ours to clear
            shutil.rmtree(staging)
        self.accelerator.wait_for_everyone()
        if self.hp_search_backend is None and trial is None:
            self.store_flos()
        self.save_model(staging, _internal_call=True)
        if self.state.best_global_step:
            best = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}")
            if best == final or os.path.exists(best):
                self.state.best_model_checkpoint = best
        if not self.args.save_only_model:
            self._save_optimizer_and_scheduler(staging)
            self._save_scaler(staging)
            self._save_rng_state(staging)
        if self.args.should_save:
            for cb in [*self.callback_handler.callbacks, self.control]:
                if isinstance(cb, ExportableState):  # the run's fault record (RunHealth) among them
                    stored = self.state.stateful_callbacks.get(type(cb).__name__)
                    if isinstance(stored, list):
                        stored.append(cb.state())
                    else:
                        self.state.stateful_callbacks[type(cb).__name__] = cb.state()
            self.state.save_to_json(os.path.join(staging, TRAINER_STATE_NAME))
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            moved = publish(staging, final)
            if moved:
                logger.warning("an incomplete %s was in the way; moved it to %s", final, moved)
            if self.args.push_to_hub:
                self._push_from_checkpoint(final)
            rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()

    def _save_optimizer_and_scheduler(self, output_dir: str):
        """Under FSDP the Trainer would also torch.save the whole model, frozen base included, for its own resume;
        save_model has already written the trained weights, which is what resume loads. So: optimizer and scheduler."""
        if not self.is_fsdp_enabled:
            return super()._save_optimizer_and_scheduler(output_dir)
        plugin = self.accelerator.state.fsdp_plugin
        save_fsdp_optimizer(plugin, self.accelerator, self.optimizer, self.model, output_dir)
        if self.args.should_save:
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_NAME))

    def save_run_state(self, folder: str):
        """trainer_state.json of the finished run, its fault record included."""
        self.state.stateful_callbacks[type(self.health).__name__] = self.health.state()
        self.state.save_to_json(os.path.join(folder, TRAINER_STATE_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if self.is_fsdp_enabled:  # already loaded, before sharding (_prepare_for_training)
            return
        load_trainable_weights(self.accelerator.unwrap_model(model or self.model), resume_from_checkpoint)

    def _prepare_for_training(self, max_steps, train_dataloader, resume_from_checkpoint):
        """Under DeepSpeed the engine saves and reloads only the trained weights: the frozen ones (7B of them
        for a LoRA run) come from the base models, not from every checkpoint. Under FSDP the trained weights are
        loaded before the model is sharded, which keeps them (the optimizer state is loaded after, as the Trainer
        does)."""
        if self.is_fsdp_enabled and resume_from_checkpoint is not None:
            load_trainable_weights(self.model, resume_from_checkpoint)
        if not self.is_deepspeed_enabled:
            prepared = super()._prepare_for_training(max_steps, train_dataloader, resume_from_checkpoint)
            if self.is_fsdp_enabled and self.is_world_process_zero():
                logger.warning(fsdp_summary(self.model, self.args.world_size))
            return prepared
        model, train_dataloader = super()._prepare_for_training(max_steps, train_dataloader, None)
        engine = self.model_wrapped
        engine.save_checkpoint = functools.partial(engine.save_checkpoint, exclude_frozen_parameters=True)
        if resume_from_checkpoint is not None:
            deepspeed_load_checkpoint(engine, resume_from_checkpoint, load_module_strict=False)
            self._load_optimizer_and_scheduler(resume_from_checkpoint)
            self._load_scaler(resume_from_checkpoint)
        return model, train_dataloader

    # ---- data ----

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and hasattr(dataset, "lengths"):
            return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        lengths=dataset.lengths)
        return super()._get_train_sampler(train_dataset)

    def _get_eval_sampler(self, eval_dataset):
        """evaluation_loop takes the held-out samples by index itself; the Trainer's length grouping here would encode
        every held-out sample (images included) just to measure it."""
        return SequentialSampler(eval_dataset)
