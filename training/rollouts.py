"""GRPO's rollouts: G completions per prompt, sampled with the model's static-cache decoder (model/decoding.py;
temperature and top-p, batched), and the rows the policy is then scored on.

    completion_ids, completion_mask = sample_completions(vlm, batch, max_new_tokens=64, temperature=1.0, top_p=1.0)
    rows = scored_rows(batch, completion_ids, completion_mask)

A completion ends at its first stop token (end-of-turn or EOS), which counts; what the decoder pads after it is
masked out.
"""

import torch

from dataset.conversation import IGNORE_INDEX


def completion_mask(completion_ids: torch.Tensor, stop_ids: list[int]) -> torch.Tensor:
    """(R, L) ids -> (R, L) 1 up to and including each row's first stop token, 0 after it."""
    is_stop = torch.isin(completion_ids, torch.tensor(stop_ids, device=completion_ids.device)).long()
    return ((is_stop.cumsum(-1) - is_stop) == 0).long()


@torch.no_grad()
def sample_completions(vlm, batch: dict, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                       do_sample: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The completions of the batch's left-padded prompts, (R, L) ids and their mask, in evaluation mode."""
    previous, was_training = vlm.decoder, vlm.training
    vlm.eval()
    if previous is None:
        vlm.set_decoding("static")
    try:
        ids = vlm.generate(batch["input_ids"], batch["attention_mask"], batch.get("pixel_values"),
                           image_sizes=batch.get("image_sizes"), max_new_tokens=max_new_tokens, do_sample=do_sample,
                           temperature=temperature, top_p=top_p)
    finally:
        vlm.decoder = previous
        vlm.train(was_training)
    return ids, completion_mask(ids, vlm.stop_token_ids)


def scored_rows(batch: dict, completion_ids: torch.Tensor, mask: torch.Tensor) -> dict:
    """The model inputs that score each completion: prompt then completion, labels on the completion's tokens only,
    positions counting real tokens (as the decoder counted them, the left padding aside)."""
    attention_mask = torch.cat([batch["attention_mask"], mask], dim=1)  # (R, P + L)
    prompt_labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
    return {
        "input_ids": torch.cat([batch["input_ids"], completion_ids], dim=1),
        "attention_mask": attention_mask,
        "position_ids": (attention_mask.long().cumsum(-1) - 1).clamp(min=0),
        "labels": torch.cat([prompt_labels, completion_ids.masked_fill(mask == 0, IGNORE_INDEX)], dim=1),
        "pixel_values": batch.get("pixel_values"),
        "image_sizes": batch.get("image_sizes"),
    }
