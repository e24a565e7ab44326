"""Preference pairs for DPO (training/dpo.py): a sample of captions.json whose last turn is the assistant's, with the
chosen answer as its `content` and the rejected one beside it:

    {"id": ..., "images": [...], "conversations": [{"role": "user", "content": "<|extra_0|>Which ...?"},
                                                   {"role": "assistant", "content": CHOSEN, "rejected": REJECTED}]}

Earlier turns are the shared prompt. Each pair becomes two rows, tokenised and label-masked as SFT rows are (only the
last answer and its end-of-turn token carry labels), and the collator puts a batch's chosen rows first, then its
rejected rows, the images once per row. The same file trains SFT on the chosen answers.
"""

import torch

from .collator import VLMCollator
from .conversation import encode_conversation
from .dataset import BadSample, VLMDataset


def check_pairs(samples, where: str):
    """ValueError naming the first sample that is not a preference pair (no rejected answer, or the same as the
    chosen one)."""
    for i in range(len(samples)):
        sample = samples[i]
        last = sample["conversations"][-1]
        if last["role"] != "assistant" or not isinstance(last.get("rejected"), str):
            raise ValueError(f"sample {sample['id']} in {where} is not a preference pair: its last turn must be the "
                             "assistant's, with a 'rejected' answer beside its content")
        if last["rejected"].strip() == last["content"].strip():
            raise ValueError(f"sample {sample['id']} in {where}: its chosen and rejected answers are the same")


class PreferenceDataset(VLMDataset):
    def encode(self, index: int) -> dict:
        sample = self.samples[index]
        pixels, sizes = self.images_of(index)  # BadSample when an image cannot be used: counted, as in SFT
        messages = self.messages(index, sample)
        rows = {}
        answers = {"chosen": messages[-1]["content"], "rejected": sample["conversations"][-1]["rejected"]}
        for name, answer in answers.items():
            conversation = [*messages[:-1], {"role": "assistant", "content": answer}]
            ids, labels = encode_conversation(self.processor, conversation, sizes)
            if len(ids) > self.max_length:  # a pair is cut nowhere: its answers are what is compared
                raise BadSample(f"its {name} conversation ({len(ids)} tokens) does not fit max_length "
                                f"{self.max_length}")
            rows[name] = (torch.tensor(ids), torch.tensor(labels))
        return {"id": sample["id"], "chosen": rows["chosen"], "rejected": rows["rejected"], "pixel_values": pixels,
                "image_sizes": sizes}


class PreferenceCollator(VLMCollator):
    """A batch of P pairs -> 2P rows: the chosen rows, then the rejected rows (right-padded)."""

    def __call__(self, items: list[dict]) -> dict:
        rows = [{"id": item["id"], "input_ids": item[side][0], "labels": item[side][1],
                 "pixel_values": item["pixel_values"], "image_sizes": item["image_sizes"],
                 "skipped": item["skipped"] if side == "chosen" else []}
                for side in ("chosen", "rejected") for item in items]
        batch = super().__call__(rows)  # (2P, T) rows, padded as SFT rows are
        batch["sample_ids"] = batch["pair_ids"] = [item["id"] for item in items]
        return batch
