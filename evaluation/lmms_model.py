"""Any of our checkpoints as an lmms-eval model, `--model vlm`, so the hundred-plus tasks of lmms-eval score it the
way papers score theirs:

    pip install lmms-eval && pip install --no-deps -e .     # once: registers the `lmms_eval.models` entry point
    python -m lmms_eval --model vlm --model_args pretrained=weights/demo --tasks mme,pope --batch_size 8

It loads the checkpoint with `load_checkpoint` (our QWen and open_clip towers too, which `llava_hf` cannot take),
answers `generate_until` requests in batches of similar length with our decoding loops (greedy unless the task asks
for sampling) and scores `loglikelihood` requests (multiple-choice tasks) as lmms-eval's own models do: the mean
negative log-likelihood of the continuation's tokens after the prompt, which its multiple-choice scoring minimises
(lmms-eval issue #370). Each image becomes one image marker, in the order the task gives them:
where the task's text holds LLaVA's `<image>` placeholders they are replaced, otherwise the markers lead the text, as
in our training data. Under `accelerate launch` each process loads the model once and takes its share of the
requests (lmms-eval splits them by rank and gathers the results).

`--model_args` (comma-separated key=value): pretrained (the checkpoint folder), device (auto), dtype (auto), decode
(auto: compiled on CUDA, static on the CPU; eager|static|compiled), base_language_model and base_vision_model
(override the checkpoint's base models), system_prompt. `--batch_size` sets the generation batch.
"""

import argparse

import torch
from lmms_eval import utils
from lmms_eval.api.instance import GenerationResult, Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from tqdm import tqdm

from common import IMAGE_MARKER
from model.device import load_for_inference

MODEL_ID = "vlm"
LLAVA_IMAGE = "<image>"  # how lmms-eval's LLaVA-style tasks mark an image in the text


def manifest() -> ModelManifest:
    """The entry point of the `lmms_eval.models` group (pyproject.toml): `--model vlm` -> VLMLmms."""
    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.VLMLmms")


def with_markers(text: str, n_images: int) -> str:
    """The text with one IMAGE_MARKER per image: LLaVA's placeholders replaced where the task wrote them, else the
    markers first."""
    if n_images and text.count(LLAVA_IMAGE) == n_images:
        return text.replace(LLAVA_IMAGE, IMAGE_MARKER)
    return IMAGE_MARKER * n_images + text


def truncate_at(text: str, until: list[str]) -> str:
    """lm-eval's stop sequences: the answer up to the first of them."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


class VLMLmms(lmms):
    is_simple = True

    def __init__(self, pretrained: str, device: str = "auto", dtype: str = "auto", decode: str = "auto",
                 batch_size: int | str = 16, base_language_model: str | None = None,
                 base_vision_model: str | None = None, system_prompt: str | None = None, **kwargs):
        super().__init__()
        if kwargs:
            raise ValueError(f"--model_args of {MODEL_ID} has unknown keys: {sorted(kwargs)}")
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            self._rank, self._world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
            if device == "auto" and torch.cuda.is_available():
                device = f"cuda:{self._rank % torch.cuda.device_count()}"
        self.model = load_for_inference(argparse.Namespace(
            model_weights=pretrained, device=device, dtype=dtype, decode=decode,
            base_language_model=base_language_model, base_vision_model=base_vision_model))
        if system_prompt is not None:
            self.model.processor.system_prompt = system_prompt
        self.batch_size = int(batch_size)
        self.device = self.model.llm.device

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    def _visuals(self, doc_to_visual, task: str, split: str, doc_id: int) -> list:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else []
        return [v.convert("RGB") for v in visuals or []]

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Greedy by default; requests with the same generation settings are batched, longest prompt first."""
        answers = []
        # grouped by generation settings (args[1]), longest context first within a group
        collator = utils.Collator([r.args for r in requests], lambda args: (-len(args[0]), args[0]), grouping=True)
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc=f"{MODEL_ID} answering")
        for chunk in collator.get_batched(n=self.batch_size, batch_fn=None):
            contexts, gen_kwargs, doc_to_visual, doc_ids, tasks, splits = zip(*chunk, strict=True)
            images = [self._visuals(doc_to_visual[0], t, s, d) for t, s, d in zip(tasks, splits, doc_ids, strict=True)]
            conversations = [[{"role": "user", "content": with_markers(c, len(imgs))}]
                             for c, imgs in zip(contexts, images, strict=True)]
            settings = dict(gen_kwargs[0])
            until = settings.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            temperature = float(settings.get("temperature") or 0)
            generate = {"max_new_tokens": int(settings.get("max_new_tokens", 128)),
                        "num_beams": int(settings.get("num_beams") or 1), "do_sample": temperature > 0}
            if temperature > 0:
                generate.update(temperature=temperature, top_p=settings.get("top_p") or 1.0)
            texts = self.model.answer(conversations, images, **generate)
            for context, settings_, text in zip(contexts, gen_kwargs, texts, strict=True):
                text = truncate_at(text, until)
                answers.append(text)
                self.cache_hook.add_partial("generate_until", (context, settings_), text)
            progress.update(len(chunk))
        progress.close()
        return collator.get_original(answers)

    @torch.no_grad()
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """-log P(continuation | prompt) averaged over the continuation's tokens (the loss, as lmms-eval's models
        return it: its multiple-choice scoring takes the argmin), and whether greedy decoding would have produced
        exactly those tokens. The prompt is the chat template's, up to the assistant's turn."""
        processor, results = self.model.processor, []
        for context, doc_to_target, doc_to_visual, doc_id, task, split in [r.args for r in requests]:
            doc = self.task_dict[task][split][doc_id]
            continuation = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(doc)
            images = self._visuals(doc_to_visual, task, split, doc_id)
            prompt = processor.render([{"role": "user", "content": with_markers(context, len(images))}],
                                      add_generation_prompt=True)
            batch = processor([prompt], [images])
            target = torch.tensor(processor.tokenizer.encode(continuation, add_special_tokens=False))  # (n,)
            input_ids = torch.cat([batch["input_ids"][0], target])[None].to(self.device)  # (1, T)
            pixels = batch["pixel_values"]
            embeds = self.model.embed(input_ids, None if pixels is None else pixels.to(self.device),
                                      batch["image_sizes"])
            logits = self.model.llm(inputs_embeds=embeds).logits[0, -len(target) - 1:-1].float()  # (n, V)
            logprobs = torch.log_softmax(logits, dim=-1)
            target = target.to(logprobs.device)
            results.append((-float(logprobs.gather(1, target[:, None]).mean()),
                            bool((logits.argmax(-1) == target).all())))
        # lmms-eval 0.7.3 turns every result that is not text into its str() (api/instance.py,
        # unwrap_generation_output), which breaks multiple-choice scoring; a GenerationResult's `text` passes as it is
        return [GenerationResult(text=result) for result in results]

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError(f"{MODEL_ID} answers single-round tasks (generate_until) and multiple choice "
                                  "(loglikelihood)")
