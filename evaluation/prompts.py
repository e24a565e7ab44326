"""Every prompt the benchmarks use, in one place: LLaVA-1.5's evaluation prompts (its llava/eval/ scripts
and playground question files). The image goes first, as LLaVA-1.5 puts it: `<image>\\n` + the text."""

SHORT_ANSWER = "Answer the question using a single word or phrase."  # POPE, MME, TextVQA, GQA
MULTIPLE_CHOICE = "Answer with the option's letter from the given choices directly."  # MMBench, ScienceQA
OPTION_LETTERS = "ABCDEFGHIJ"


def short_answer(question: str) -> str:
    return f"{question}\n{SHORT_ANSWER}"


def multiple_choice(question: str, options: list[str], hint: str | None = None) -> str:
    """hint, question, `A. option` lines, then the instruction (LLaVA's model_vqa_mmbench / ScienceQA)."""
    lines = ([hint] if hint else []) + [question]
    lines += [f"{OPTION_LETTERS[k]}. {option}" for k, option in enumerate(options)]
    return "\n".join(lines + [MULTIPLE_CHOICE])


def with_ocr_tokens(question: str, tokens: list[str] | None) -> str:
    """TextVQA with OCR tokens, as LLaVA-1.5's llava_textvqa_val_v051_ocr.jsonl words it."""
    return f"{question}\nReference OCR token: {', '.join(tokens)}" if tokens else question
