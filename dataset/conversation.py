"""A conversation -> (input_ids, labels), with loss only on the assistant replies and their end token.

The chat template is rendered prefix by prefix, so the assistant spans are found in whatever template
the LLM uses (ChatML for Qwen-7B-Chat, the tokenizer's own for others), with no per-model parsing.
"""

IGNORE_INDEX = -100


def conversation_pieces(processor, messages: list[dict]) -> list[tuple[str, bool]]:
    """(text, is_reply) pieces whose concatenation is the rendered conversation."""
    pieces, done = [], ""
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = processor.render(messages[:k], add_generation_prompt=True)
        full = processor.render(messages[: k + 1])
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise ValueError("the chat template does not render conversations prefix by prefix; "
                             "labels cannot be aligned with it")
        pieces += [(prompt[len(done):], False), (full[len(prompt):], True)]
        done = full
    rest = processor.render(messages)[len(done):]
    return pieces + ([(rest, False)] if rest else [])


def encode_conversation(processor, messages: list[dict], image_sizes: list | None = None
                        ) -> tuple[list[int], list[int]]:
    """Image markers are expanded to their images' tokens (image_sizes: (height, width) of each image, in order,
    where the count depends on them); labels are IGNORE_INDEX on the system prompt, user turns, role headers and
    image tokens, and equal the ids on each reply up to and including its end-of-turn token (<|im_end|>), so the
    model learns to stop."""
    input_ids, labels = [], []
    end = processor.end_of_turn_id
    seen = 0  # images expanded so far
    for text, is_reply in conversation_pieces(processor, messages):
        n = processor.count_markers(text)
        sizes = None if image_sizes is None else image_sizes[seen:seen + n]
        seen += n
        ids = processor.encode(text, sizes)
        input_ids += ids
        if not is_reply:
            labels += [IGNORE_INDEX] * len(ids)
            continue
        n = ids.index(end) + 1 if end in ids else len(ids)  # the template's newline after it is not learned
        labels += ids[:n] + [IGNORE_INDEX] * (len(ids) - n)
    visual = processor.visual_token_ids
    return input_ids, [IGNORE_INDEX if i in visual else label for i, label in zip(input_ids, labels, strict=True)]
