"""`--help` is the first thing a user types: every entry point answers it with exit code 0 and a usage line,
and every flag the documentation shows with a command (in the code blocks of README.md, README_zh.md and
docs/) is in that command's help."""

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# how the docs spell a command -> the entry point that answers it (train.sh and test.sh pass flags through)
ENTRY_POINTS = {
    "train.py": ["train.py"], "sh train.sh": ["train.py"],
    "test.py": ["test.py"], "sh test.sh": ["test.py"],
    "eval.py": ["eval.py"], "webui.py": ["webui.py"], "process_image.py": ["process_image.py"],
    "-m model.export": ["-m", "model.export"], "-m demo.run": ["-m", "demo.run"], "sh demo.sh": ["-m", "demo.run"],
    "-m demo.synthetic": ["-m", "demo.synthetic"], "-m training.plot": ["-m", "training.plot"],
    "bench/cpu_train.py": ["bench/cpu_train.py"], "bench/cpu_generate.py": ["bench/cpu_generate.py"],
    "bench/data_pipeline.py": ["bench/data_pipeline.py"], "bench/gpu_train.py": ["bench/gpu_train.py"],
    "bench/gpu_generate.py": ["bench/gpu_generate.py"], "bench/cpu_anyres.py": ["bench/cpu_anyres.py"],
    "bench/memory_estimate.py": ["bench/memory_estimate.py"], "bench/cpu_grpo.py": ["bench/cpu_grpo.py"],
    "bench/cpu_image_tokens.py": ["bench/cpu_image_tokens.py"],
    "bench/cpu_video.py": ["bench/cpu_video.py"],
    "scripts/check_vllm.py": ["scripts/check_vllm.py"],
    "sh scripts/gpu_check.sh": ["sh", "scripts/gpu_check.sh"],
    "sh scripts/check_vllm.sh": ["sh", "scripts/check_vllm.sh"],
}
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
PYTHON = r"(?:python3?|\.venv/bin/python|\$PYTHON)"
INVOCATION = re.compile(rf"(?:{PYTHON} (-m [\w.]+|[\w/]+\.py)|(sh (?:scripts/)?[\w]+\.sh))")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*")
# flags the docs show for other programs: pip, vLLM, Slurm, LLaVA's eval_pope.py, lmms-eval and accelerate launch;
# and the word "--flags"
OTHER_TOOLS = {"--no-deps", "--no-index", "--find-links", "--no-build-isolation", "--served-model-name",
               "--enforce-eager", "--model", "--signal", "--requeue", "--question-file", "--flags", "--nproc_per_node",
               "--model_args", "--tasks", "--include_path", "--output_path", "--log_samples", "--num_processes"}


# The entry points whose --help must answer without torch, transformers or peft (training/help.py, common/lazy.py)
LIGHT = [["train.py"], ["test.py"], ["eval.py"], ["webui.py"], ["process_image.py"], ["-m", "model.export"]]
HEAVY = ("torch", "transformers", "peft", "bitsandbytes")

# Runs each Python entry point's `--help` as `python FILE --help` or `python -m MODULE --help` would, one after the
# other in one fresh interpreter, so that torch and transformers are imported once instead of once per entry point.
# The LIGHT ones run first, with torch blocked from import by a meta path hook; after each, the heavy libraries
# imported so far are recorded.
HELP_DRIVER = """
import contextlib, io, json, runpy, sys, traceback
LIGHT, HEAVY = json.loads(sys.argv[2]), json.loads(sys.argv[3])

class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError(f"{name} is blocked: --help must answer without torch")

results = {}
entries = json.loads(sys.argv[1])
for entry in sorted(entries, key=lambda e: e not in LIGHT):
    out, err, code = io.StringIO(), io.StringIO(), 0
    sys.argv = [entry[-1], "--help"]
    blocker = BlockTorch() if entry in LIGHT else None
    if blocker:
        sys.meta_path.insert(0, blocker)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            if entry[0] == "-m":
                runpy.run_module(entry[1], run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(entry[0], run_name="__main__")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            code, _ = 1, traceback.print_exc()
    if blocker:
        sys.meta_path.remove(blocker)
    imported = sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in HEAVY and sys.modules[m]})
    results[" ".join(entry)] = [code, out.getvalue(), err.getvalue(), imported]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def helps() -> dict[str, subprocess.CompletedProcess]:
    """`--help` of every entry point: the Python ones in one fresh interpreter (HELP_DRIVER), the shell scripts as
    they are."""
    entries = sorted({tuple(e) for e in ENTRY_POINTS.values()})
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
    python = [list(e) for e in entries if e[0] != "sh"]
    driver = subprocess.run([sys.executable, "-c", HELP_DRIVER, json.dumps(python), json.dumps(LIGHT),
                             json.dumps(HEAVY)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert driver.returncode == 0, driver.stderr[-3000:]
    found = {}
    for name, (code, out, err, imported) in json.loads(driver.stdout.strip().splitlines()[-1]).items():
        found[name] = subprocess.CompletedProcess(name, code, out, err)
        found[name].imported = imported
    for entry in entries:
        if entry[0] == "sh":
            found[" ".join(entry)] = subprocess.run([*entry, "--help"], cwd=ROOT, env=env, capture_output=True,
                                                    text=True, timeout=180)
    return found


def flags_in(text: str, found: dict[str, set[str]]) -> dict[str, set[str]]:
    """entry point -> the flags the code blocks of `text` give it (a line's flags up to its next command or `|`)."""
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0]
            matches = list(INVOCATION.finditer(line))
            for k, m in enumerate(matches):
                name = (m.group(1) or m.group(2)).strip()
                if name not in ENTRY_POINTS:
                    continue
                end = matches[k + 1].start() if k + 1 < len(matches) else len(line)
                segment = re.split(r"\||&&|;", line[m.end():end])[0]
                found.setdefault(" ".join(ENTRY_POINTS[name]), set()).update(FLAG.findall(segment))
    return found


def documented_flags() -> dict[str, set[str]]:
    found = {}
    for page in [ROOT / "README.md", ROOT / "README_zh.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        flags_in(page.read_text(encoding="utf-8"), found)
    return found


def test_every_entry_point_answers_help(helps):
    for name, result in helps.items():
        assert result.returncode == 0, f"{name} --help exited {result.returncode}:\n{result.stderr[-2000:]}"
        assert "usage" in result.stdout.lower() or "sh scripts/" in result.stdout, f"{name} --help printed no usage"


def test_help_answers_without_torch_transformers_or_peft(helps):
    """With torch blocked from import, each of these still answers, and none of the heavy libraries was loaded."""
    for entry in LIGHT:
        result = helps[" ".join(entry)]
        assert result.returncode == 0 and "usage" in result.stdout, (entry, result.stderr[-2000:])
        assert result.imported == [], f"{' '.join(entry)} --help imported {result.imported}"
    assert "--per_device_train_batch_size" in helps["train.py"].stdout  # transformers' TrainingArguments, read


def test_train_help_is_hf_argument_parsers_flag_by_flag():
    """training/help.py reads the dataclasses from source; HfArgumentParser builds the real parser from the imported
    classes. Same option strings, help, choices, nargs and defaults (where the source states one), same order."""
    from transformers import HfArgumentParser

    from training.arguments import DataArguments, ModelArguments, VLMTrainingArguments
    from training.help import train_help

    light = train_help("")._actions
    real = HfArgumentParser((ModelArguments, DataArguments, VLMTrainingArguments))._actions
    assert len(light) > 150 and [a.option_strings for a in light] == [a.option_strings for a in real]
    unknown_defaults, unknown_choices = [], []
    for ours, theirs in zip(light, real, strict=True):
        name = ours.option_strings[0]
        assert (ours.dest, ours.help, ours.nargs, ours.const, ours.required) == (
            theirs.dest, theirs.help, theirs.nargs, theirs.const, theirs.required), name
        if ours.choices is None and theirs.choices is not None:
            unknown_choices.append(name)
        else:
            assert ours.choices == theirs.choices or list(ours.choices) == list(theirs.choices), name
        if ours.default is argparse.SUPPRESS and name != "-h":
            unknown_defaults.append(name)
        elif name != "-h":
            assert ours.default == theirs.default, name
    # what the source computes at import time is not shown: the optimizer by torch's version, the log levels' names
    assert unknown_defaults == ["--optim"] and unknown_choices == ["--log_level", "--log_level_replica"]


def test_every_documented_flag_is_in_its_help(helps):
    flags = documented_flags()
    assert {"train.py", "test.py", "eval.py", "-m model.export", "-m demo.run"} <= set(flags)
    missing = [f"{flag} ({name})" for name, wanted in sorted(flags.items()) for flag in sorted(wanted)
               if flag not in set(FLAG.findall(helps[name].stdout))]
    assert not missing, "documented but not in --help: " + ", ".join(missing)


def test_no_page_mentions_a_flag_that_no_command_has(helps):
    """Prose too: a renamed or removed flag may not live on in the docs."""
    every_help = set(FLAG.findall("\n".join(r.stdout for r in helps.values())))
    stale = {}
    for page in [ROOT / "README.md", ROOT / "README_zh.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for flag in set(FLAG.findall(page.read_text(encoding="utf-8"))) - OTHER_TOOLS:
            if flag not in every_help:
                stale.setdefault(flag, []).append(str(page.relative_to(ROOT)))
    assert not stale, f"flags in the docs that no command takes: {stale}"


def test_the_flag_finder_reads_command_lines():
    """The extraction itself: a check that found nothing would pass on nothing."""
    block = ("```sh\nSTAGE=2 sh train.sh --num_train_epochs 1 | tee log --not_a_flag\n"
             "$ python eval.py --benchmark pope && python -m model.export a b --format llava  # --comment\n"
             "python test.py --model_weights w \\\n    --interactive\n```")
    assert flags_in(block, {}) == {"train.py": {"--num_train_epochs"}, "eval.py": {"--benchmark"},
                                   "-m model.export": {"--format"}, "test.py": {"--model_weights", "--interactive"}}
    flags = documented_flags()
    assert {"--benchmark", "--answer_rule", "--ocr_tokens"} <= flags["eval.py"]
    assert "--format" in flags["-m model.export"] and "--dry-run" in flags["sh scripts/gpu_check.sh"]
