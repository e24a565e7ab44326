"""Padding-free packing: whole samples in rows of at most max_length tokens, each exactly as it would be alone.

The plan: the samples in an order shuffled by the seed, cut into windows of `buffer` samples, each window packed
first-fit decreasing by the samples' exact token lengths. It is a pure function of the seed and the lengths, so a
resumed run packs the same rows; the Trainer's sampler shuffles the rows anew each epoch, as it shuffles samples.

The Trainer batches rows as it batches samples: in random order, or with `--train_sampling_strategy
group_by_length` (train.sh's default) rows of about the same size together, which leaves almost no padding.

In a row (collator.py): the samples' tokens one after the other, position ids restarting at 0 for each, no
attention mask, and each sample's first label ignored, so that the last token of one sample never predicts the
first of the next. The LLM reads the restarting position ids as sample boundaries (transformers' masking_utils
and flash-attention varlen; our QWen alike) and attends within each sample only.
"""

import logging
import random

import numpy as np
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)
DEFAULT_BUFFER = 1000  # samples per first-fit window: padding under 1% on LLaVA-like lengths (BENCHMARKS.md)


def plan_rows(lengths: list[int], max_length: int, buffer: int = DEFAULT_BUFFER, seed: int = 0) -> list[list[int]]:
    """Sample indices per row. A sample longer than max_length (to be truncated) gets a row of its own."""
    if buffer < 1:
        raise ValueError(f"--packing_buffer must be 1 or more, not {buffer}")
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    rows = []
    for start in range(0, len(order), buffer):
        window = sorted(order[start:start + buffer], key=lambda i: -min(lengths[i], max_length))  # stable
        free = np.empty(0, dtype=np.int64)  # room left in each open row of this window
        members: list[list[int]] = []
        for i in window:
            need = min(lengths[i], max_length)
            fits = np.flatnonzero(free >= need)
            if len(fits):
                row = int(fits[0])
                free[row] -= need
                members[row].append(i)
            else:
                free = np.append(free, max_length - need)
                members.append([i])
        rows += members
    return rows


def padding_fraction(sizes: list[int], rows_per_batch: int, grouped: bool = False, seed: int = 0) -> float:
    """The share of padding tokens when rows of these sizes are batched and padded to their longest: in random order,
    or grouped by size (about what `--train_sampling_strategy group_by_length` does)."""
    sizes = sorted(sizes) if grouped else random.Random(seed).sample(sizes, len(sizes))
    batches = [sizes[k:k + rows_per_batch] for k in range(0, len(sizes), rows_per_batch)]
    padded = sum(max(b) * len(b) for b in batches)
    return 1 - sum(sizes) / padded if padded else 0.0


class PackedDataset(Dataset):
    """Rows of a VLMDataset's samples: item r is the list of row r's samples, each encoded as it is alone.
    `lengths` holds each row's tokens, by which `--train_sampling_strategy group_by_length` batches rows of about
    the same size, so little padding is left between the rows of a batch.

    A bad sample (missing image, no longer fitting) is replaced, as without packing, by the next usable one,
    here the next that also fits the room its row has left; the row goes short if none within reach does."""

    def __init__(self, samples, sample_lengths: list[int], rows: list[list[int]], max_length: int):
        self.samples = samples
        self.sample_lengths = sample_lengths
        self.rows = rows
        self.max_length = max_length
        self.lengths = [sum(min(sample_lengths[i], max_length) for i in row) for row in rows]

    @classmethod
    def plan(cls, samples, max_length: int, buffer: int = DEFAULT_BUFFER, seed: int = 0):
        lengths = [int(n) for n in samples.lengths]  # exact, cached in the sample store
        return cls(samples, lengths, plan_rows(lengths, max_length, buffer, seed), max_length)

    @property
    def num_samples(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int):
        self.samples.set_epoch(epoch)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, r: int) -> list[dict]:
        row, items = self.rows[r], []
        used = 0
        for k, index in enumerate(row):
            later = sum(min(self.sample_lengths[i], self.max_length) for i in row[k + 1:])
            room = self.max_length - used - later
            item = self.samples.usable(index, fits=lambda i, room=room: self.sample_lengths[i] <= room)
            if "input_ids" in item:
                used += len(item["input_ids"])
            items.append(item)
        return items

    def summary(self, rows_per_batch: int, grouped: bool) -> str:
        sizes, n = self.lengths, len(self.sample_lengths)
        order = "grouped by size" if grouped else "in random order"
        return (f"packing: {n} samples ({sum(sizes)} tokens) into {len(sizes)} rows of at most {self.max_length} "
                f"tokens, {n / len(sizes):.2f} samples a row, rows {sum(sizes) / (len(sizes) * self.max_length):.1%} "
                f"full; padding about {padding_fraction(sizes, rows_per_batch, grouped):.1%} at {rows_per_batch} "
                f"row(s) a batch {order}")
