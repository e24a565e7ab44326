"""Pads a list of VLMDataset items into a batch; images of all samples are concatenated in order."""

import torch

from .conversation import IGNORE_INDEX


class VLMCollator:
    def __init__(self, pad_token_id: int, padding_side: str = "right"):
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side

    def pad(self, sequences: list[torch.Tensor], value: int) -> torch.Tensor:
        width = max(len(s) for s in sequences)
        out = torch.full((len(sequences), width), value, dtype=torch.long)
        for row, seq in zip(out, sequences, strict=True):
            if self.padding_side == "right":
                row[: len(seq)] = seq
            else:
                row[width - len(seq):] = seq
        return out

    def __call__(self, items: list[dict]) -> dict:
        ids = [item["input_ids"] for item in items]
        images = [item["pixel_values"] for item in items if item["pixel_values"] is not None]
        return {
            "input_ids": self.pad(ids, self.pad_token_id),  # (B, T)
            "attention_mask": self.pad([torch.ones_like(s) for s in ids], 0),  # (B, T)
            "labels": self.pad([item["labels"] for item in items], IGNORE_INDEX),  # (B, T)
            "pixel_values": torch.cat(images) if images else None,  # (n_images, 3, H, W)
            # not model inputs: the trainer takes them out (reports and the bad-sample count)
            "sample_ids": [item["id"] for item in items],
            "skipped": [record for item in items for record in item.get("skipped", [])],
        }
