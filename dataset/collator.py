"""Makes a batch of VLMDataset items: padded rows of one sample each, or packed rows of several (packing.py).
Images of all samples are concatenated in order, the order their image tokens have in the flattened batch."""

import torch

from common.images import size_rows

from .conversation import IGNORE_INDEX

# the keys of a batch that the model takes; the others are the trainer's (reports, the bad-sample count, throughput)
MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids", "pixel_values", "image_sizes", "labels")


class VLMCollator:
    def __init__(self, pad_token_id: int, padding_side: str = "right"):
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side

    def pad(self, sequences: list[torch.Tensor], value: int, side: str | None = None) -> torch.Tensor:
        width = max(len(s) for s in sequences)
        out = torch.full((len(sequences), width), value, dtype=torch.long)
        for row, seq in zip(out, sequences, strict=True):
            if (side or self.padding_side) == "right":
                row[: len(seq)] = seq
            else:
                row[width - len(seq):] = seq
        return out

    def __call__(self, items: list) -> dict:
        if items and isinstance(items[0], list):
            return self.packed(items)
        ids = [item["input_ids"] for item in items]
        return {
            "input_ids": self.pad(ids, self.pad_token_id),  # (B, T)
            "attention_mask": self.pad([torch.ones_like(s) for s in ids], 0),  # (B, T)
            "labels": self.pad([item["labels"] for item in items], IGNORE_INDEX),  # (B, T)
            **self.extras(items),
        }

    def packed(self, rows: list[list[dict]]) -> dict:
        """Each row: its samples' tokens in turn, position ids restarting at 0 for each, its first label ignored
        (the previous sample's last token must not predict it); padding at the end of the row is a sequence of
        its own (positions from 0, no labels). No attention mask: the positions tell the LLM where samples end."""
        ids, positions, labels, samples = [], [], [], []
        for row in rows:
            row = [s for s in row if "input_ids" in s]  # a slot whose replacement did not fit stays empty
            samples += row
            if not row:  # every sample of the row went bad: one padding token, no label
                ids.append(torch.tensor([self.pad_token_id]))
                positions.append(torch.zeros(1, dtype=torch.long))
                labels.append(torch.tensor([IGNORE_INDEX]))
                continue
            ids.append(torch.cat([s["input_ids"] for s in row]))
            positions.append(torch.cat([torch.arange(len(s["input_ids"])) for s in row]))
            labels.append(torch.cat([torch.cat([torch.tensor([IGNORE_INDEX]), s["labels"][1:]]) for s in row]))
        width = max(len(x) for x in ids)
        position_ids = torch.stack([torch.cat([p, torch.arange(width - len(p))]) for p in positions])  # (B, T)
        return {
            "input_ids": self.pad(ids, self.pad_token_id, "right"),  # (B, T)
            "position_ids": position_ids,
            "labels": self.pad(labels, IGNORE_INDEX, "right"),  # (B, T)
            **self.extras(samples, [s for row in rows for s in row]),
        }

    @staticmethod
    def extras(samples: list[dict], every: list[dict] | None = None) -> dict:
        images = [s["pixel_values"] for s in samples if s["pixel_values"] is not None]
        sizes = [size for s in samples for size in s.get("image_sizes", [])]
        return {
            "pixel_values": torch.cat(images) if images else None,  # (tiles, 3, H, W): one an image, or anyres's
            # (n, 2): each image's height, width; (n, 3) with videos: their frames, 0 for images
            "image_sizes": torch.tensor(size_rows(sizes)) if sizes else None,
            # not model inputs: the trainer takes them out (reports, the bad-sample count, throughput)
            "sample_ids": [s["id"] for s in samples],
            "skipped": [record for s in (every or samples) for record in s.get("skipped", [])],
            "num_tokens": sum(len(s["input_ids"]) for s in samples),
        }
