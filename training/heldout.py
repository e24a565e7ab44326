"""Evaluation during training, on held-out conversations (`--eval_image_map`, `--eval_captions_file`):

- the held-out loss: the mean over every labelled token of the held-out set, as the training loss is over a batch's,
  each process computing its share and one all-reduce adding them up, so that it is the same figure for any number of
  processes and any batch size;
- with `--eval_generate N`, the first N held-out conversations answered greedily, in batches, with the static-cache
  decoding loop, each process answering its share; the answers are gathered once and scored as eval.py scores them
  (exact match, and BLEU-4 / CIDEr-D / ROUGE-L with pycocoevalcap), overall and per source.

The figures become the evaluation's metrics (`eval_loss`, `eval_exact_match`, `eval_exact_match_<source>`, ...), so
they reach the loggers and `--metric_for_best_model` as the Trainer's own."""

import sys

import torch
from accelerate.utils import gather_object
from tqdm import tqdm
from transformers import TrainerCallback

from dataset.collator import MODEL_INPUTS
from dataset.conversation import IGNORE_INDEX
from evaluation.conversations import answer_sorted, score


def shares(n: int, process_index: int, world_size: int, synced: bool) -> tuple[list[int], int]:
    """This process's indices of n items, and how many more it must run as padding so that every process runs as
    many (synced: ZeRO-3, whose forward passes gather weights from every process)."""
    indices = list(range(process_index, n, world_size))
    return indices, (-(-n // world_size) - len(indices)) if synced else 0


@torch.no_grad()
def heldout_loss(model, dataset, collator, batch_size: int, device, process_index: int = 0, world_size: int = 1,
                 synced: bool = False) -> float:
    """The token mean of the loss over every labelled position of `dataset` (each sample's loss, as in training)."""
    indices, padding = shares(len(dataset), process_index, world_size, synced)
    order = indices + indices[-1:] * padding
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # loss summed over tokens, tokens
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            batch = collator([dataset[i] for i in order[start:start + batch_size]])
            inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items() if k in MODEL_INPUTS}
            tokens = (inputs["labels"][:, 1:] != IGNORE_INDEX).sum()
            real = start < len(indices)  # padding batches run, but count nothing
            totals += real * torch.stack([model(**inputs).loss.double() * tokens, tokens.double()])
    finally:
        model.train(was_training)
    if world_size > 1:
        torch.distributed.all_reduce(totals)
    return float(totals[0] / totals[1])


@torch.no_grad()
def heldout_metrics(model, items: list[dict], batch_size: int, max_new_tokens: int, process_index: int = 0,
                    world_size: int = 1, synced: bool = False) -> dict:
    """Every process answers items[process_index::world_size] and all get the same scores. synced (ZeRO-3, whose
    forward passes gather weights from every process): each process runs as many batches and steps as the others,
    through transformers' generate with synced_gpus."""
    indices, padding = shares(len(items), process_index, world_size, synced)
    share = [items[i] for i in indices]
    share += share[-1:] * padding  # answered, then dropped
    previous, was_training = model.decoder, model.training
    model.eval()
    model.set_decoding("eager" if synced else "static")
    try:
        extra = {"synced_gpus": True} if synced else {}
        answers = answer_sorted(model, share, batch_size, max_new_tokens, progress=False, **extra)[:len(indices)]
    finally:
        model.decoder = previous
        model.train(was_training)
    pairs = list(zip(indices, answers, strict=True))
    if world_size > 1:
        pairs = gather_object(pairs)
    predictions = [answer for _, answer in sorted(pairs)]
    results = score(predictions, [i["reference"] for i in items], [i["source"] for i in items])
    flat = {k: v for k, v in results.items() if k != "per_source"}
    for source, figures in results["per_source"].items():
        flat[f"exact_match_{source}"] = figures["exact_match"]
    return flat


class EvaluationReport(TrainerCallback):
    """One line on stderr per evaluation, from the main process: the step, the held-out loss and exact match."""

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not state.is_world_process_zero or not metrics:
            return
        parts = [f"loss {metrics['eval_loss']:.4f}"] if "eval_loss" in metrics else []
        if "eval_exact_match" in metrics:
            sources = sorted(k.removeprefix("eval_exact_match_") for k in metrics if k.startswith("eval_exact_match_"))
            detail = ", ".join(f"{s} {metrics['eval_exact_match_' + s]:.1%}" for s in sources)
            detail = f" ({detail})" if len(sources) > 1 else ""
            parts.append(f"exact match {metrics['eval_exact_match']:.1%}{detail}")
        # tqdm.write: on a line of its own above the Trainer's progress bar, which is redrawn below it
        tqdm.write(f"eval at step {state.global_step}: " + "; ".join(parts), file=sys.stderr)
