"""Reward functions for GRPO (training/grpo.py), as TRL takes them: plain callables

    fn(completions: list[str], solution: list[str], **kwargs) -> list[float | None]

one reward per completion (None: this function cannot score it), `solution` being each prompt's gold answer and the
keyword arguments `prompts` (the last user turn) and `sample_ids`. `--reward_funcs` names them, comma-separated:
the registry's names below, or a user's own function as `module:function` or `path/to/file.py:function`, imported
from the user's own files (the current folder first), never fetched.

Where a completion or a gold answer holds <answer>...</answer>, the answer rewards compare what is inside it (the R1
layout of R1-V and VLM-R1), else the whole text, stripped.
"""

import importlib
import importlib.util
import math
import os
import re
import sys

ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
THINK_ANSWER = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", re.DOTALL)
NUMBER = re.compile(r"[-+]?(?:\d+(?:,\d{3})*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
LETTER = re.compile(r"(?:^|[^A-Za-z])\(?([A-Z])\)?(?:[.):,]|\s|$)")
NUMERIC_TOLERANCE = 1e-4  # relative, with an absolute floor of the same size


def answer_text(text: str) -> str:
    """The text inside the last <answer>...</answer>, else the text, stripped."""
    found = ANSWER.findall(text)
    return (found[-1] if found else text).strip()


def normalise(text: str) -> str:
    return " ".join(answer_text(text).lower().rstrip(".").split())


def exact_match(completions: list[str], solution: list[str], **kwargs) -> list[float]:
    """1 when the answer equals the gold answer (case, outer spaces and a final full stop aside), else 0."""
    return [float(normalise(c) == normalise(s)) for c, s in zip(completions, solution, strict=True)]


def choice_letter(text: str) -> str | None:
    """The first standalone capital letter (A, (B), C., D)) of the answer: a multiple-choice pick."""
    match = LETTER.search(answer_text(text))
    return match.group(1) if match else None


def choice(completions: list[str], solution: list[str], **kwargs) -> list[float | None]:
    """Multiple choice: 1 when the answer's letter is the gold letter, 0 otherwise (None: the gold has no letter)."""
    rewards = []
    for c, s in zip(completions, solution, strict=True):
        gold = choice_letter(s)
        rewards.append(None if gold is None else float(choice_letter(c) == gold))
    return rewards


def last_number(text: str) -> float | None:
    found = NUMBER.findall(answer_text(text))
    return float(found[-1].replace(",", "")) if found else None


def numeric(completions: list[str], solution: list[str], **kwargs) -> list[float | None]:
    """1 when the answer's last number is the gold number within NUMERIC_TOLERANCE (relative), 0 otherwise (None:
    the gold holds no number)."""
    rewards = []
    for c, s in zip(completions, solution, strict=True):
        gold, got = last_number(s), last_number(c)
        if gold is None:
            rewards.append(None)
        else:
            rewards.append(float(got is not None and math.isclose(got, gold, rel_tol=NUMERIC_TOLERANCE,
                                                                  abs_tol=NUMERIC_TOLERANCE)))
    return rewards


def math_answer(completions: list[str], solution: list[str], **kwargs) -> list[float | None]:
    """math-verify's equivalence of the answer with the gold answer (LaTeX, fractions, sets, intervals...): 1 or 0;
    None when the gold answer does not parse."""
    try:
        from math_verify import parse, verify
    except ImportError:
        raise ValueError("the math reward needs math-verify: pip install math-verify") from None
    rewards = []
    for c, s in zip(completions, solution, strict=True):
        gold = parse(answer_text(s) if "$" in answer_text(s) else f"${answer_text(s)}$")
        if not gold:
            rewards.append(None)
            continue
        got = answer_text(c)
        rewards.append(float(verify(gold, parse(got if "$" in got or "\\boxed" in got else f"${got}$"))))
    return rewards


def think_format(completions: list[str], **kwargs) -> list[float]:
    """1 when the completion is <think>...</think> then <answer>...</answer> and nothing else, else 0."""
    return [float(THINK_ANSWER.fullmatch(c) is not None) for c in completions]


REWARDS = {"exact_match": exact_match, "choice": choice, "numeric": numeric, "math": math_answer,
           "format": think_format}


def user_function(spec: str):
    """`module:function` (importable from the current folder or the path) or `file.py:function`."""
    where, _, name = spec.rpartition(":")
    if where.endswith(".py"):
        if not os.path.isfile(where):
            raise ValueError(f"reward function {spec!r}: file {where} not found")
        loaded = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(where))[0], where)
        module = importlib.util.module_from_spec(loaded)
        loaded.loader.exec_module(module)
    else:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise ValueError(f"reward function {spec!r}: cannot import module {where} ({e})") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"reward function {spec!r}: {where} has no function {name!r}")
    return fn


def resolve(names: str | list[str]) -> dict:
    """--reward_funcs -> {name: function}, in order; ValueError for one that does not exist."""
    names = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    if not names:
        raise ValueError(f"--objective grpo needs --reward_funcs: any of {', '.join(REWARDS)}, or module:function")
    functions = {}
    for name in names:
        if name == "math" and importlib.util.find_spec("math_verify") is None:  # before any model loads
            raise ValueError("the math reward needs math-verify: pip install math-verify")
        if name in REWARDS:
            functions[name] = REWARDS[name]
        elif ":" in name:
            functions[name] = user_function(name)
        else:
            raise ValueError(f"unknown reward function {name!r}: the registry has {', '.join(REWARDS)}; a function of "
                             "your own is module:function or path/to/file.py:function")
    return functions
