"""Prompts with a gold answer for GRPO (training/grpo.py): a sample of captions.json whose last turn is the
assistant's gold answer, the turns before it the prompt (R1-V / VLM-R1's image, problem, solution; dataprocess/
preference.py converts them):

    {"id": ..., "images": [...], "conversations": [{"role": "user", "content": "<|extra_0|>How many ...?"},
                                                   {"role": "assistant", "content": "3"}]}

The gold answer is never trained on directly: the reward functions compare each sampled completion with it
(training/rewards.py). The collator repeats each prompt once per completion (--num_generations), left-padded, for
the sampler.
"""

import torch

from .collator import VLMCollator
from .dataset import BadSample, VLMDataset


def check_prompts(samples, where: str):
    """ValueError naming the first sample without a gold answer (a last assistant turn with text)."""
    for i in range(len(samples)):
        sample = samples[i]
        turns = sample["conversations"]
        if len(turns) < 2 or turns[-1]["role"] != "assistant" or not turns[-1]["content"].strip():
            raise ValueError(f"sample {sample['id']} in {where} has no gold answer: its last turn must be the "
                             "assistant's answer, after the prompt")


class PromptDataset(VLMDataset):
    def encode(self, index: int) -> dict:
        sample = self.samples[index]
        pixels, sizes = self.images_of(index)  # BadSample when an image cannot be used: counted, as in SFT
        messages = self.messages(index, sample)
        ids = self.processor.encode(self.processor.render(messages[:-1], add_generation_prompt=True), sizes)
        if len(ids) > self.max_length:
            raise BadSample(f"its prompt ({len(ids)} tokens) does not fit max_length {self.max_length}")
        return {"id": sample["id"], "input_ids": torch.tensor(ids), "pixel_values": pixels, "image_sizes": sizes,
                "solution": messages[-1]["content"], "prompt": messages[-2]["content"]}


class PromptCollator(VLMCollator):
    """B prompts -> B x G left-padded rows, each prompt's G copies next to each other (a group)."""

    def __init__(self, pad_token_id: int, num_generations: int):
        super().__init__(pad_token_id, padding_side="left")
        self.num_generations = num_generations

    def __call__(self, items: list[dict]) -> dict:
        rows = [item for item in items for _ in range(self.num_generations)]
        ids = [row["input_ids"] for row in rows]
        batch = {
            "input_ids": self.pad(ids, self.pad_token_id),  # (B G, T)
            "attention_mask": self.pad([torch.ones_like(s) for s in ids], 0),  # (B G, T)
            **self.extras(rows, items),
            "solutions": [row["solution"] for row in rows],
            "prompts": [row["prompt"] for row in rows],
        }
        batch["sample_ids"] = [item["id"] for item in items]
        batch["num_tokens"] = sum(len(item["input_ids"]) for item in items)
        return batch
